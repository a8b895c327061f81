//! The request line parser (and the reply parser, which shares its line rules)
//! on arbitrary bytes: never panics, and whatever it accepts formats back to a
//! line that parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spyctl::net::protocol;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = protocol::parse_request(data) {
        assert!(req.agent_id > 0);
        let token = std::str::from_utf8(req.token).expect("an accepted token is ASCII");
        let again = protocol::format_request(req.agent_id, token);
        let reparsed = protocol::parse_request(again.as_bytes()).expect("a formatted request parses");
        assert_eq!(reparsed, req);
    }
    if let Ok(protocol::Reply::Err { text, .. }) = protocol::parse_reply(data) {
        assert!(!text.contains('\n'));
    }
});
