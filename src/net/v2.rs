//! Protocol v2 on the wire (PROTOCOL.md, "Version 2"): pure encoding, no I/O.
//!
//! v2 shares v1's port and its line discipline (one request per `\n`-ended
//! line, the same line cap, the same admission and idle rules), so the Boss
//! tells the two apart by a line's first bytes: `NOISE ` and `F ` are v2,
//! `MSG `, `JOIN`, `WHOIS` are v1. Each v2 line carries one Noise message in
//! URL-safe base64 with padding:
//!
//! - `NOISE <b64>`: a handshake message (IK: the agent's first, the Boss's
//!   answer). The agent's payload is [`Hello`] (its AgentId and clock); the
//!   Boss's is [`Welcome`] (its clock, so skew is reported, not just refused).
//! - `F <b64>`: a transport message. Its plaintext starts with one type byte:
//!   `M` a message (the same header + body as inside a v1 token), `A` an ACK
//!   (the same JSON as inside a v1 ACK token), `E` an error (`<code> <text>`);
//!   for orders, `O` (the agent asks for its pending orders), `R` + a JSON
//!   array of orders (the Boss's offer) and `K` + a JSON array of order ids
//!   (the agent has stored these durably; it also asks for the next offer).
//!   `listen` and `chat` keep a session open and let the Boss speak unasked:
//!   `L` (the agent listens for orders; the Boss pushes each batch as `P` +
//!   a JSON array of orders, the agent answers `K` once they are on its
//!   disk), `J` + JSON (join a chat; the Boss answers and later reports the
//!   other side with `J` + [`ChatStatus`]), `C` + JSON (a chat line:
//!   [`ChatText`] towards the Boss, [`ChatLine`] from it) and `H` (a
//!   heartbeat, answered `H`, that keeps a quiet session open).
//!   Every reply after the handshake, errors included, is an `F` line, so a
//!   forged or injected error fails its tag at the client.

use base64_simd::URL_SAFE;

use super::protocol::{ErrorCode, ProtocolError};

/// The prefix of a handshake line.
pub const HANDSHAKE: &str = "NOISE";
/// The prefix of a transport line.
pub const TRANSPORT: &str = "F";
/// The most file bytes one v2 chunk carries (PROTOCOL.md, "Files over v2").
/// A transport message holds at most 65,535 bytes: the 16-byte tag, the
/// type byte and the chunk's header line (1,126 bytes at worst for a last
/// chunk with its `sig` and `tsig` and a 255-byte name of `"`, which JSON
/// doubles; 2,146 with control characters, which the Boss refuses in names;
/// see the test below) leave room for 60 KiB of body: 63,603 bytes at most.
pub const FILE_CHUNK_BYTES: usize = 60 * 1024;
/// How far the two clocks may differ before the client says so.
pub const MAX_SKEW_SECS: u64 = 30;

/// The longest v2 line: `NOISE `, a full Noise message in base64, `\n`.
/// Within v1's line cap, so the Boss's limits apply to v2 unchanged.
pub const fn max_line_bytes() -> usize {
    HANDSHAKE.len() + 1 + crate::crypto::noise::MAX_MESSAGE.div_ceil(3) * 4 + 1
}

/// Whether `line` (without its `\n`) is a v2 line.
pub fn is_v2_line(line: &[u8]) -> bool {
    line.starts_with(b"NOISE ") || line.starts_with(b"F ")
}

/// Which kind of v2 line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Handshake,
    Transport,
}

/// A v2 line for `bytes`, `\n` included.
pub fn format_line(kind: LineKind, bytes: &[u8]) -> String {
    let prefix = match kind {
        LineKind::Handshake => HANDSHAKE,
        LineKind::Transport => TRANSPORT,
    };
    format!("{prefix} {}\n", URL_SAFE.encode_to_string(bytes))
}

fn bad(text: &str) -> ProtocolError {
    ProtocolError(text.to_string())
}

/// Splits a v2 line (without `\n`, a trailing `\r` tolerated) into its kind
/// and the Noise message it carries.
pub fn parse_line(line: &[u8]) -> Result<(LineKind, Vec<u8>), ProtocolError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (kind, rest) = if let Some(rest) = line.strip_prefix(b"NOISE ") {
        (LineKind::Handshake, rest)
    } else if let Some(rest) = line.strip_prefix(b"F ") {
        (LineKind::Transport, rest)
    } else {
        return Err(bad("expected NOISE <base64> or F <base64>"));
    };
    let bytes = URL_SAFE.decode_to_vec(rest).map_err(|_| bad("not URL-safe base64"))?;
    if bytes.is_empty() || bytes.len() > crate::crypto::noise::MAX_MESSAGE {
        return Err(bad("a Noise message is 1 to 65535 bytes"));
    }
    Ok((kind, bytes))
}

/// The agent's handshake payload. It travels in the first IK message, which
/// is encrypted to the Boss's static key but not forward-secret, so it holds
/// nothing secret: who the agent says it is, and its clock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub v: u8,
    pub agent: i64,
    pub time: u64,
}

/// The Boss's handshake payload: its clock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    pub time: u64,
}

/// An order as the agent receives it (in an `R` frame's JSON array).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub id: String,
    /// Unix seconds when the director queued it.
    pub at: i64,
    /// The director's AgentId.
    pub from: i64,
    pub text: String,
    /// The file the order carries (`order --file`), fetched with `G`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<OrderFile>,
}

/// The file an order carries: what the agent downloads and checks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderFile {
    pub id: String,
    /// The base name, sanitised by the Boss (no `/`, no control characters).
    pub name: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the whole file.
    pub sha256: String,
}

/// A `G` frame: send the chunks of an order's file from `offset` on (up
/// to [`FILE_WINDOW`](crate::net::v2_upload::FILE_WINDOW) of them, as `B`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAsk {
    pub file: String,
    pub offset: u64,
}

/// An `N` frame: the agent holds the whole file with this SHA-256; the
/// Boss answers with the same once it recorded the delivery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDone {
    pub file: String,
    pub sha256: String,
}

/// Longest chat line, in bytes of text.
pub const MAX_CHAT_BYTES: usize = 4096;

/// A `J` frame towards the Boss: join the chat of one agent. The agent's own
/// session sends `{}`; a director's (the Boss's own static key) names the
/// agent and, for the other side's display, the director's AgentId.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinChat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub director: Option<i64>,
}

/// A `C` frame towards the Boss: one line to relay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatText {
    pub text: String,
}

/// A `C` frame from the Boss: one line from the other side.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatLine {
    pub id: String,
    /// Unix seconds when the Boss stored it.
    pub at: i64,
    /// The sender's AgentId (the agent's, or the director's).
    pub from: i64,
    pub text: String,
}

/// A `J` frame from the Boss: the chat's state. Sent when joining, whenever
/// the other side joins or leaves, and after each line sent (with its id).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatStatus {
    /// The agent whose chat this is.
    pub agent: i64,
    /// Whether the other side has a chat session open now.
    pub online: bool,
    /// The id of the line just stored, in answer to a `C`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
}

/// One transport plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Header + body, as inside a v1 token.
    Message(Vec<u8>),
    /// An ACK's JSON, as inside a v1 ACK token.
    Ack(Vec<u8>),
    Error(ErrorCode, String),
    /// The agent asks for its pending orders.
    Fetch,
    /// The Boss's offer: a JSON array of orders (empty: none pending).
    Orders(Vec<u8>),
    /// The agent stored these orders (a JSON array of ids); send the next.
    Stored(Vec<u8>),
    /// An offset query: exactly the plaintext of a v1 `kind: "offset"`
    /// message (PROTOCOL.md, "Resuming a file").
    Query(Vec<u8>),
    /// Its answer: exactly the plaintext of the v1 offset ACK.
    Offset(Vec<u8>),
    /// The agent listens: push its orders as they arrive.
    Listen,
    /// Orders pushed unasked to a listening agent (a JSON array).
    Push(Vec<u8>),
    /// Keeps a quiet session open; answered with the same.
    Heartbeat,
    /// Join a chat ([`JoinChat`]) or, from the Boss, its state ([`ChatStatus`]).
    Join(Vec<u8>),
    /// A chat line: [`ChatText`] towards the Boss, [`ChatLine`] from it.
    Chat(Vec<u8>),
    /// Ask for an order's file from an offset ([`FileAsk`]).
    GetFile(Vec<u8>),
    /// One chunk of an order's file: where it starts, and its bytes.
    FileBytes {
        offset: u64,
        bytes: Vec<u8>,
    },
    /// The whole file is on the agent's disk ([`FileDone`]); echoed by the Boss.
    FileDone(Vec<u8>),
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Message(bytes) => [b"M".as_slice(), bytes].concat(),
            Frame::Ack(bytes) => [b"A".as_slice(), bytes].concat(),
            Frame::Error(code, text) => format!("E{} {text}", code.as_str()).into_bytes(),
            Frame::Fetch => b"O".to_vec(),
            Frame::Orders(json) => [b"R".as_slice(), json].concat(),
            Frame::Stored(json) => [b"K".as_slice(), json].concat(),
            Frame::Query(bytes) => [b"Q".as_slice(), bytes].concat(),
            Frame::Offset(bytes) => [b"U".as_slice(), bytes].concat(),
            Frame::Listen => b"L".to_vec(),
            Frame::Push(json) => [b"P".as_slice(), json].concat(),
            Frame::Heartbeat => b"H".to_vec(),
            Frame::Join(json) => [b"J".as_slice(), json].concat(),
            Frame::Chat(json) => [b"C".as_slice(), json].concat(),
            Frame::GetFile(json) => [b"G".as_slice(), json].concat(),
            Frame::FileBytes { offset, bytes } => [b"B".as_slice(), &offset.to_be_bytes(), bytes].concat(),
            Frame::FileDone(json) => [b"N".as_slice(), json].concat(),
        }
    }

    pub fn decode(plaintext: &[u8]) -> Result<Frame, ProtocolError> {
        match plaintext.split_first() {
            Some((b'M', rest)) => Ok(Frame::Message(rest.to_vec())),
            Some((b'A', rest)) => Ok(Frame::Ack(rest.to_vec())),
            Some((b'E', rest)) => {
                let text = std::str::from_utf8(rest).map_err(|_| bad("an error frame is UTF-8"))?;
                let (code, text) = text.split_once(' ').unwrap_or((text, ""));
                let code = ErrorCode::parse(code).ok_or_else(|| bad("unknown error code"))?;
                Ok(Frame::Error(code, text.to_string()))
            }
            Some((b'O', [])) => Ok(Frame::Fetch),
            Some((b'R', rest)) => Ok(Frame::Orders(rest.to_vec())),
            Some((b'K', rest)) => Ok(Frame::Stored(rest.to_vec())),
            Some((b'Q', rest)) => Ok(Frame::Query(rest.to_vec())),
            Some((b'U', rest)) => Ok(Frame::Offset(rest.to_vec())),
            Some((b'L', [])) => Ok(Frame::Listen),
            Some((b'P', rest)) => Ok(Frame::Push(rest.to_vec())),
            Some((b'H', [])) => Ok(Frame::Heartbeat),
            Some((b'J', rest)) => Ok(Frame::Join(rest.to_vec())),
            Some((b'C', rest)) => Ok(Frame::Chat(rest.to_vec())),
            Some((b'G', rest)) => Ok(Frame::GetFile(rest.to_vec())),
            Some((b'B', rest)) if rest.len() > 8 => {
                let (offset, bytes) = rest.split_at(8);
                let offset = u64::from_be_bytes(offset.try_into().expect("8 bytes"));
                Ok(Frame::FileBytes { offset, bytes: bytes.to_vec() })
            }
            Some((b'N', rest)) => Ok(Frame::FileDone(rest.to_vec())),
            _ => Err(bad("a frame starts with M, A, E, O, R, K, Q, U, L, P, H, J, C, G, B or N")),
        }
    }
}

/// How far `theirs` is from `ours`, in seconds, if more than [`MAX_SKEW_SECS`].
pub fn skew(ours: u64, theirs: u64) -> Option<i64> {
    let diff = theirs as i64 - ours as i64;
    (diff.unsigned_abs() > MAX_SKEW_SECS).then_some(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worst last chunk a client can build: the longest ids, offsets and
    /// sizes, a 255-byte name of the characters JSON writes longest (`"` as
    /// `\"`; control characters, which the Boss refuses in names anyway, as
    /// `\u0001`), and both signatures. Its header is at most 1,200 bytes
    /// (1,126 measured; 2,146 with control characters), and a frame of a
    /// full chunk fits a Noise message either way.
    #[test]
    fn a_full_v2_chunk_with_the_worst_header_fits_one_noise_message() {
        use crate::net::protocol::{self, FileChunk, Header, Kind, MessageSig};
        let sig = MessageSig { time: u64::MAX, signature: [0xff; 64], trusted: Some([0xff; 64]) };
        let id = "x".repeat(protocol::MAX_ID_CHARS);
        let header = |name: String| Header {
            id: id.clone(),
            kind: Kind::FileChunk(FileChunk {
                file_id: id.clone(),
                name,
                offset: u64::MAX,
                size: u64::MAX,
                sha256: Some("f".repeat(64)),
            }),
        };
        let body = vec![0u8; FILE_CHUNK_BYTES];
        let quotes = "\"".repeat(protocol::MAX_FILE_NAME_BYTES);
        let controls = "\u{1}".repeat(protocol::MAX_FILE_NAME_BYTES);
        for (name, header_cap) in [(quotes, 1200), (controls, 2200)] {
            let plaintext = protocol::encode_signed_message(&header(name), &body, &sig);
            let header_len = plaintext.len() - body.len();
            assert!(header_len <= header_cap, "{header_len}");
            let frame = Frame::Message(plaintext).encode();
            assert!(frame.len() + crate::crypto::noise::TAG <= crate::crypto::noise::MAX_MESSAGE, "{}", frame.len());
        }
    }

    #[test]
    fn lines_and_frames_round_trip_and_garbage_is_refused() {
        let line = format_line(LineKind::Transport, b"\x00\xffsealed");
        assert!(line.starts_with("F ") && line.ends_with('\n'));
        let trimmed = line.trim_end().as_bytes();
        assert!(is_v2_line(trimmed));
        assert_eq!(parse_line(trimmed).expect("parses"), (LineKind::Transport, b"\x00\xffsealed".to_vec()));
        assert!(!is_v2_line(b"MSG 1 gAAAA"));
        assert!(parse_line(b"NOISE !!!").is_err());
        assert!(parse_line(b"NOISE ").is_err());
        for frame in [
            Frame::Message(b"{}\nhi".to_vec()),
            Frame::Ack(b"{}".to_vec()),
            Frame::Error(ErrorCode::Auth, "no".into()),
            Frame::Fetch,
            Frame::Orders(b"[]".to_vec()),
            Frame::Stored(b"[\"a\"]".to_vec()),
            Frame::Listen,
            Frame::Push(b"[]".to_vec()),
            Frame::Heartbeat,
            Frame::Join(b"{}".to_vec()),
            Frame::Chat(b"{\"text\":\"hi\"}".to_vec()),
            Frame::Query(b"{}\n".to_vec()),
            Frame::Offset(b"{}\n".to_vec()),
            Frame::GetFile(b"{\"file\":\"f\",\"offset\":0}".to_vec()),
            Frame::FileBytes { offset: 61_440, bytes: b"chunk".to_vec() },
            Frame::FileDone(b"{}".to_vec()),
        ] {
            assert_eq!(Frame::decode(&frame.encode()).expect("decodes"), frame);
        }
        assert!(Frame::decode(b"").is_err());
        assert!(Frame::decode(b"Xwhat").is_err());
        assert!(Frame::decode(b"Lextra").is_err() && Frame::decode(b"Hextra").is_err());
        for reserved in [b'V', b'Z'] {
            assert!(Frame::decode(&[reserved]).is_err(), "{} is reserved", reserved as char);
        }
        assert!(Frame::decode(b"Ebogus text").is_err());
        // A chunk frame carries its 8-byte offset and at least one byte.
        assert!(Frame::decode(b"B").is_err() && Frame::decode(b"B1234567").is_err());
        assert!(Frame::decode(b"B12345678").is_err(), "a chunk without bytes");
        assert_eq!(skew(1000, 1031), Some(31));
        assert_eq!(skew(1000, 970), None);
    }

    fn json_round_trips<T>(json: &[u8])
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        if let Ok(value) = serde_json::from_slice::<T>(json) {
            let again = serde_json::to_vec(&value).expect("re-encodes");
            assert_eq!(serde_json::from_slice::<T>(&again).expect("re-parses"), value);
        }
    }

    /// The largest `B` frame (a full chunk) fits one Noise message.
    #[test]
    fn a_full_order_file_chunk_fits_one_noise_message() {
        let frame = Frame::FileBytes { offset: u64::MAX, bytes: vec![0u8; FILE_CHUNK_BYTES] }.encode();
        assert!(frame.len() + crate::crypto::noise::TAG <= crate::crypto::noise::MAX_MESSAGE, "{}", frame.len());
        assert!(serde_json::from_slice::<FileAsk>(b"{\"file\":\"f\",\"offset\":0,\"x\":1}").is_err());
        assert!(serde_json::from_slice::<FileAsk>(b"{\"file\":\"f\",\"offset\":-1}").is_err());
    }

    #[test]
    fn live_payloads_parse_strictly() {
        assert!(serde_json::from_slice::<JoinChat>(b"{}").is_ok());
        assert!(serde_json::from_slice::<JoinChat>(b"{\"agent\":6,\"director\":1}").is_ok());
        assert!(serde_json::from_slice::<JoinChat>(b"{\"agent\":6,\"root\":true}").is_err());
        assert!(serde_json::from_slice::<ChatText>(b"{\"text\":\"hi\"}").is_ok());
        assert!(serde_json::from_slice::<ChatText>(b"{}").is_err());
        let line = ChatLine { id: "a".into(), at: 1, from: 2, text: "x".into() };
        json_round_trips::<ChatLine>(&serde_json::to_vec(&line).expect("encodes"));
        let status = ChatStatus { agent: 6, online: false, stored: None };
        assert_eq!(serde_json::to_string(&status).expect("encodes"), "{\"agent\":6,\"online\":false}");
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic_and_what_they_accept_round_trips(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)
        ) {
            if let Ok((kind, message)) = parse_line(&bytes) {
                let again = format_line(kind, &message);
                proptest::prop_assert_eq!(parse_line(again.trim_end().as_bytes()).expect("parses"), (kind, message));
            }
            if let Ok(frame) = Frame::decode(&bytes) {
                proptest::prop_assert_eq!(Frame::decode(&frame.encode()).expect("decodes"), frame.clone());
                // The live frames' JSON payloads (the fuzz target does the same).
                match frame {
                    Frame::Join(json) => {
                        json_round_trips::<JoinChat>(&json);
                        json_round_trips::<ChatStatus>(&json);
                    }
                    Frame::Chat(json) => {
                        json_round_trips::<ChatText>(&json);
                        json_round_trips::<ChatLine>(&json);
                    }
                    Frame::Push(json) | Frame::Orders(json) => json_round_trips::<Vec<Order>>(&json),
                    Frame::GetFile(json) => json_round_trips::<FileAsk>(&json),
                    Frame::FileDone(json) => json_round_trips::<FileDone>(&json),
                    _ => {}
                }
            }
        }

        #[test]
        fn mutated_valid_lines_never_panic(
            message in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..256),
            at in 0usize..400,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let mut line = format_line(LineKind::Transport, &message).trim_end().as_bytes().to_vec();
            let at = at % line.len();
            line[at] = byte;
            let _ = parse_line(&line);
        }
    }
}
