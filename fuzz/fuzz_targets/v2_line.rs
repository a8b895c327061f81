//! Protocol v2's line and frame parsers on arbitrary bytes (PROTOCOL.md,
//! "Version 2"): never panic; an accepted line re-formats to itself, an
//! accepted frame re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spyctl::net::v2::{self, Frame};

fuzz_target!(|data: &[u8]| {
    if let Ok((kind, message)) = v2::parse_line(data) {
        let again = v2::format_line(kind, &message);
        let (kind2, message2) = v2::parse_line(again.trim_end().as_bytes()).expect("a formatted line parses");
        assert_eq!((kind2, message2), (kind, message));
    }
    if let Ok(frame) = Frame::decode(data) {
        assert_eq!(Frame::decode(&frame.encode()).expect("re-decodes"), frame);
    }
});
