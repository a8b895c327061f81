//! Property tests of the line and header parsers in `protocol.rs`: what the
//! fuzz targets (`fuzz/`) check, run by `cargo test`. Random bytes and
//! mutated valid lines never panic, whatever is accepted obeys the rules, and
//! every formatted request, reply and message parses back to itself.
//!
//! 256 cases each by default; `PROPTEST_CASES` raises it for long runs
//! (`scripts/hardening-long.sh`).

use proptest::prelude::*;

use super::*;

fn id_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}"
}

fn file_name_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9 ._()-]{1,60}".prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn text_header(id: &str) -> Header {
    Header { id: id.to_string(), kind: Kind::Text }
}

proptest! {
    #[test]
    fn parse_request_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(req) = parse_request(&bytes) {
            // Whatever it accepts is a canonical request line.
            prop_assert!(req.agent_id > 0);
            prop_assert!(bytes.starts_with(b"MSG "));
            prop_assert!(req.token.iter().all(|b| (0x21..0x7f).contains(b)));
            let again = format_request(req.agent_id, std::str::from_utf8(req.token).unwrap());
            let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
            prop_assert_eq!(again.trim_end_matches('\n').as_bytes(), trimmed);
        }
    }

    #[test]
    fn parse_request_mutated_valid_lines(agent in 1i64..=i64::MAX, token in "[A-Za-z0-9_=-]{1,300}",
                                         pos in any::<usize>(), byte in any::<u8>()) {
        let mut line = format_request(agent, &token).into_bytes();
        let p = pos % line.len();
        line[p] = byte;
        let _ = parse_request(&line);
        line.truncate(p);
        let _ = parse_request(&line);
    }

    #[test]
    fn request_round_trips(agent in 1i64..=i64::MAX, token in "[A-Za-z0-9_=-]{1,300}", crlf in any::<bool>()) {
        let mut line = format_request(agent, &token);
        if crlf {
            line.insert(line.len() - 1, '\r');
        }
        let req = parse_request(line.as_bytes()).expect("a formatted request parses");
        prop_assert_eq!(req.agent_id, agent);
        prop_assert_eq!(req.token, token.as_bytes());
    }

    #[test]
    fn parse_reply_never_panics_and_err_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..1024),
                                                    text in ".{0,300}", code in 0usize..7) {
        let _ = parse_reply(&bytes);
        let code = ErrorCode::ALL[code];
        let line = format_err(code, &text);
        prop_assert!(line.len() <= 240);
        match parse_reply(line.as_bytes()) {
            Ok(Reply::Err { code: c, text: t }) => {
                prop_assert_eq!(c, code);
                prop_assert!(t.chars().all(|c| (' '..='~').contains(&c)));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn decode_message_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_message(&bytes);
        let _ = decode_ack(&bytes);
    }

    #[test]
    fn decode_message_mutated_headers(id in id_strategy(), name in file_name_strategy(), offset in 0u64..4096,
                                      extra in 0u64..4096, body in proptest::collection::vec(any::<u8>(), 0..64),
                                      pos in any::<usize>(), byte in any::<u8>()) {
        let size = offset + body.len() as u64 + extra;
        let sha = (extra == 0).then(|| "ab".repeat(32));
        let header = Header { id: id.clone(), kind: Kind::FileChunk(FileChunk {
            file_id: id, name, offset, size, sha256: sha }) };
        let mut plain = encode_message(&header, &body);
        let p = pos % plain.len();
        plain[p] = byte;
        if let Ok((h, b)) = decode_message(&plain) {
            // Anything accepted still obeys the header rules.
            prop_assert!(valid_id(&h.id));
            if let Kind::FileChunk(c) = h.kind {
                prop_assert!(c.offset + b.len() as u64 <= c.size);
                prop_assert!(valid_id(&c.file_id));
                prop_assert!(!c.name.contains('/') && c.name != ".." && c.name != ".");
            }
        }
    }

    #[test]
    fn message_round_trips(id in id_strategy(), text in ".{0,200}", name in file_name_strategy(),
                           offset in 0u64..1 << 40, extra in 0u64..1 << 20,
                           chunk in proptest::collection::vec(any::<u8>(), 1..256)) {
        let header = text_header(&id);
        let plain = encode_message(&header, text.as_bytes());
        let (h, b) = decode_message(&plain).expect("text decodes");
        prop_assert_eq!(h, header);
        prop_assert_eq!(b, text.as_bytes());

        let size = offset + chunk.len() as u64 + extra;
        let header = Header { id: id.clone(), kind: Kind::FileChunk(FileChunk {
            file_id: id, name, offset, size, sha256: (extra == 0).then(|| "0f".repeat(32)) }) };
        let plain = encode_message(&header, &chunk);
        let (h, b) = decode_message(&plain).expect("chunk decodes");
        prop_assert_eq!(h, header);
        prop_assert_eq!(b, &chunk[..]);
    }
}
