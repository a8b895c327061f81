//! Protocol v2's line and frame parsers on arbitrary bytes (PROTOCOL.md,
//! "Version 2"): never panic; an accepted line re-formats to itself, an
//! accepted frame re-encodes to the same bytes, and the JSON payloads of the
//! live and file frames (`J`, `C`, `P`, `R`, `G`, `N`) that parse re-encode to values that parse
//! the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spyctl::net::v2::{self, ChatLine, ChatStatus, ChatText, FileAsk, FileDone, Frame, JoinChat, Order};

fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(json: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(json) {
        let again = serde_json::to_vec(&value).expect("re-encodes");
        assert_eq!(serde_json::from_slice::<T>(&again).expect("re-parses"), value);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((kind, message)) = v2::parse_line(data) {
        let again = v2::format_line(kind, &message);
        let (kind2, message2) = v2::parse_line(again.trim_end().as_bytes()).expect("a formatted line parses");
        assert_eq!((kind2, message2), (kind, message));
    }
    if let Ok(frame) = Frame::decode(data) {
        assert_eq!(Frame::decode(&frame.encode()).expect("re-decodes"), frame);
        match frame {
            Frame::Join(json) => {
                round_trips::<JoinChat>(&json);
                round_trips::<ChatStatus>(&json);
            }
            Frame::Chat(json) => {
                round_trips::<ChatText>(&json);
                round_trips::<ChatLine>(&json);
            }
            Frame::Push(json) | Frame::Orders(json) => round_trips::<Vec<Order>>(&json),
            Frame::GetFile(json) => round_trips::<FileAsk>(&json),
            Frame::FileDone(json) => round_trips::<FileDone>(&json),
            _ => {}
        }
    }
});
