//! The token plaintext parser (header line + body), the ACK parser and the
//! offset answer's parser on arbitrary bytes: never panics; whatever it accepts obeys PROTOCOL.md's
//! header rules and re-encodes to a message that decodes to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spyctl::net::protocol::{self, Kind};

fuzz_target!(|data: &[u8]| {
    if let Ok((header, body)) = protocol::decode_message(data) {
        assert!(protocol::valid_id(&header.id));
        match &header.kind {
            Kind::Text => assert!(std::str::from_utf8(body).is_ok()),
            Kind::FileChunk(c) => {
                assert!(protocol::valid_id(&c.file_id));
                assert!(!c.name.is_empty() && c.name.len() <= protocol::MAX_FILE_NAME_BYTES);
                assert!(!c.name.contains(['/', '\\', '\0']) && c.name != "." && c.name != "..");
                let end = c.offset + body.len() as u64;
                assert!(end <= c.size);
                assert_eq!(c.sha256.is_some(), end == c.size);
            }
            Kind::Offset { file_id } => {
                assert!(protocol::valid_id(file_id));
                assert!(body.is_empty());
            }
        }
        let again = protocol::encode_message(&header, body);
        let (h2, b2) = protocol::decode_message(&again).expect("a re-encoded message decodes");
        assert_eq!(h2, header);
        assert_eq!(b2, body);
    }
    let _ = protocol::decode_ack(data);
    if let Ok(reply) = protocol::decode_offset_reply(data) {
        let again = protocol::encode_offset_reply(&reply.id, &reply.committed);
        assert_eq!(protocol::decode_offset_reply(&again).expect("a re-encoded answer decodes"), reply);
    }
});
