//! The wire protocol (PROTOCOL.md) on byte buffers: request and reply lines,
//! error codes, and the JSON header inside each token's plaintext. No sockets,
//! no keys: parsing here is pure so it can be property-tested and fuzzed.
//!
//! ```text
//! request:  MSG <agent-id> <fernet-token>\n
//! reply:    ACK <fernet-token>\n   |   ERR <code> <text>\n
//! plaintext of a token: <one-line JSON header>\n<body bytes>
//! ```

use serde::{Deserialize, Serialize};

/// Longest line either side accepts, newline included. A 512 KiB chunk makes a
/// token of about 700 KB, so 1 MiB leaves room and bounds memory per connection.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// File bytes per chunk message.
pub const CHUNK_BYTES: usize = 512 * 1024;
/// Protocol version written in every header.
pub const VERSION: u32 = 1;
/// Longest message id a sender may choose.
pub const MAX_ID_CHARS: usize = 64;
/// Longest file name, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 255;

/// The fixed set of error codes in `ERR <code> <text>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The line or header does not follow the protocol.
    BadRequest,
    /// The line is longer than [`MAX_LINE_BYTES`] (or a file is too large).
    TooLong,
    /// Unknown agent or bad MAC: the same answer for both.
    Auth,
    /// Authentic but outside the freshness window.
    Expired,
    /// The server is at its connection limit.
    Busy,
    /// Authentic, but the Boss does not accept this (e.g. files are disabled).
    Forbidden,
    /// The Boss failed to store the message; retry later.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::BadRequest,
        ErrorCode::TooLong,
        ErrorCode::Auth,
        ErrorCode::Expired,
        ErrorCode::Busy,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLong => "too_long",
            ErrorCode::Auth => "auth",
            ErrorCode::Expired => "expired",
            ErrorCode::Busy => "busy",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Whether a client should try the same message again later.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Busy | ErrorCode::Internal)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The code of the Boss's refusal is the typed cause client errors keep, so
/// callers can match on it (and reach it through `source()`).
impl std::error::Error for ErrorCode {}

/// A line that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

fn bad(why: impl Into<String>) -> ProtocolError {
    ProtocolError(why.into())
}

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgRequest<'a> {
    pub agent_id: i64,
    pub token: &'a [u8],
}

/// Strips the line ending (`\n`, and a `\r` before it for telnet users).
fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_printable_ascii(bytes: &[u8]) -> bool {
    // Folded per 256 bytes without a per-byte early exit, so the compiler
    // vectorizes it: a file chunk's line is ~700 KB, and the per-byte
    // `all` cost the Boss ~8% of its CPU on a 64 MiB upload (perf).
    bytes.chunks(256).all(|piece| piece.iter().fold(0u8, |bad, b| bad | u8::from(!(0x20..0x7f).contains(b))) == 0)
}

/// Parses a positive decimal agent id without sign or leading zeros.
pub fn parse_agent_id(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > 19 || text[0] == b'0' || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse::<i64>().ok().filter(|id| *id > 0)
}

/// Parses `MSG <agent-id> <token>` (line ending optional).
pub fn parse_request(line: &[u8]) -> Result<MsgRequest<'_>, ProtocolError> {
    let line = trim_eol(line);
    if line.is_empty() {
        return Err(bad("empty line"));
    }
    if !is_printable_ascii(line) {
        return Err(bad("lines are printable ASCII only"));
    }
    let mut parts = line.splitn(3, |b| *b == b' ');
    let verb = parts.next().unwrap_or_default();
    if verb != b"MSG" {
        return Err(bad("unknown command; expected MSG <agent-id> <token>"));
    }
    let id = parts.next().ok_or_else(|| bad("missing agent id"))?;
    let agent_id = parse_agent_id(id).ok_or_else(|| bad("the agent id must be a positive decimal integer"))?;
    let token = parts.next().filter(|t| !t.is_empty()).ok_or_else(|| bad("missing token"))?;
    if token.contains(&b' ') {
        return Err(bad("the token must not contain spaces"));
    }
    Ok(MsgRequest { agent_id, token })
}

/// Formats a request line, newline included.
pub fn format_request(agent_id: i64, token: &str) -> String {
    format!("MSG {agent_id} {token}\n")
}

/// A parsed reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    Ack { token: &'a [u8] },
    Err { code: ErrorCode, text: String },
}

/// Parses `ACK <token>` or `ERR <code> <text>`.
pub fn parse_reply(line: &[u8]) -> Result<Reply<'_>, ProtocolError> {
    let line = trim_eol(line);
    if !is_printable_ascii(line) {
        return Err(bad("reply is not printable ASCII"));
    }
    if let Some(token) = line.strip_prefix(b"ACK ") {
        if token.is_empty() || token.contains(&b' ') {
            return Err(bad("malformed ACK"));
        }
        return Ok(Reply::Ack { token });
    }
    if let Some(rest) = line.strip_prefix(b"ERR ") {
        let mut parts = rest.splitn(2, |b| *b == b' ');
        let code = parts.next().unwrap_or_default();
        let code =
            std::str::from_utf8(code).ok().and_then(ErrorCode::parse).ok_or_else(|| bad("unknown error code"))?;
        let text = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        return Ok(Reply::Err { code, text });
    }
    Err(bad("expected ACK or ERR"))
}

/// Formats `ERR <code> <text>\n`; the text is forced to printable ASCII.
pub fn format_err(code: ErrorCode, text: &str) -> String {
    let clean: String = text.chars().map(|c| if (' '..='~').contains(&c) { c } else { '?' }).take(200).collect();
    format!("ERR {} {clean}\n", code.as_str())
}

pub fn format_ack(token: &str) -> String {
    format!("ACK {token}\n")
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A UTF-8 text message; the body is the text.
    Text,
    /// One chunk of a file; the body is the chunk's bytes.
    FileChunk(FileChunk),
    /// A question, not a message: how much of upload `file_id` the Boss
    /// durably holds for this agent (PROTOCOL.md, "Resuming a file"). The
    /// body is empty; the answer is an [`OffsetReply`].
    Offset { file_id: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChunk {
    /// Same for every chunk of one file.
    pub file_id: String,
    pub name: String,
    /// Where this chunk's bytes start in the file.
    pub offset: u64,
    /// The whole file's size.
    pub size: u64,
    /// Hex SHA-256 of the whole file; on the last chunk only.
    pub sha256: Option<String>,
}

/// A message header: who it is (id) and what it carries (kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub id: String,
    pub kind: Kind,
}

/// The header's JSON form, flat so any JSON library can write it.
#[derive(Default, Serialize, Deserialize)]
struct WireHeader {
    v: u32,
    id: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    /// Enrolled agents: the statement's time (unix seconds) and the Ed25519
    /// signature over it, 128 lowercase hex digits (PROTOCOL.md, "Signed messages").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sig: Option<String>,
    /// The global signature minisign checks, over `sig || trusted comment`
    /// (PROTOCOL.md, "Exports that stock minisign verifies"), 128 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tsig: Option<String>,
}

/// An enrolled agent's signature on a message, carried in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSig {
    /// The statement's `time` line.
    pub time: u64,
    pub signature: [u8; 64],
    /// `tsig`: the global signature over `signature || trusted comment`.
    pub trusted: Option<[u8; 64]>,
}

/// Ids are 1..=64 characters of `[A-Za-z0-9_-]`: hex, UUIDs and ULIDs all fit.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILE_NAME_BYTES
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

fn valid_sha256(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Builds a token plaintext: the header as one JSON line, `\n`, the body.
pub fn encode_message(header: &Header, body: &[u8]) -> Vec<u8> {
    encode_wire(wire_header(header), body)
}

/// [`encode_message`] with an enrolled agent's signature in the header.
pub fn encode_signed_message(header: &Header, body: &[u8], sig: &MessageSig) -> Vec<u8> {
    let mut wire = wire_header(header);
    wire.ts = Some(sig.time);
    wire.sig = Some(hex::encode(sig.signature));
    wire.tsig = sig.trusted.map(hex::encode);
    encode_wire(wire, body)
}

/// The signature a message's header carries, if any (the header is checked
/// by [`decode_message`]; this reads only `ts`, `sig` and `tsig`).
pub fn decode_signature(plaintext: &[u8]) -> Result<Option<MessageSig>, ProtocolError> {
    let newline = plaintext.iter().position(|b| *b == b'\n').ok_or_else(|| bad("the plaintext has no header line"))?;
    let wire: WireHeader =
        serde_json::from_slice(&plaintext[..newline]).map_err(|_| bad("bad header: not a valid header object"))?;
    match (wire.ts, wire.sig) {
        (None, None) if wire.tsig.is_some() => Err(bad("tsig comes with ts and sig")),
        (None, None) => Ok(None),
        (Some(time), Some(sig)) => {
            let mut signature = [0u8; 64];
            hex::decode_to_slice(&sig, &mut signature).map_err(|_| bad("sig must be 128 hex digits"))?;
            let trusted = match wire.tsig {
                Some(tsig) => {
                    let mut trusted = [0u8; 64];
                    hex::decode_to_slice(&tsig, &mut trusted).map_err(|_| bad("tsig must be 128 hex digits"))?;
                    Some(trusted)
                }
                None => None,
            };
            Ok(Some(MessageSig { time, signature, trusted }))
        }
        (None, Some(_)) | (Some(_), None) => Err(bad("ts and sig come together")),
    }
}

fn encode_wire(wire: WireHeader, body: &[u8]) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    let mut out = serde_json::to_vec(&wire).expect("header serialises");
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

fn wire_header(header: &Header) -> WireHeader {
    let base =
        |kind: &str| WireHeader { v: VERSION, id: header.id.clone(), kind: kind.into(), ..WireHeader::default() };
    match &header.kind {
        Kind::Text => base("text"),
        Kind::FileChunk(c) => WireHeader {
            file_id: Some(c.file_id.clone()),
            name: Some(c.name.clone()),
            offset: Some(c.offset),
            size: Some(c.size),
            sha256: c.sha256.clone(),
            ..base("file")
        },
        Kind::Offset { file_id } => WireHeader { file_id: Some(file_id.clone()), ..base("offset") },
    }
}

/// Splits and checks a token plaintext. The body is what follows the first `\n`.
pub fn decode_message(plaintext: &[u8]) -> Result<(Header, &[u8]), ProtocolError> {
    let newline = plaintext.iter().position(|b| *b == b'\n').ok_or_else(|| bad("the plaintext has no header line"))?;
    let (json, body) = (&plaintext[..newline], &plaintext[newline + 1..]);
    // The parser's own message would quote the offending value, which is
    // decrypted content: it must not go back on the wire or into the log.
    let wire: WireHeader = serde_json::from_slice(json).map_err(|_| bad("bad header: not a valid header object"))?;
    if wire.v != VERSION {
        return Err(bad(format!("unsupported header version {}", wire.v)));
    }
    if !valid_id(&wire.id) {
        return Err(bad("bad message id"));
    }
    let kind = match wire.kind.as_str() {
        "text" => {
            if std::str::from_utf8(body).is_err() {
                return Err(bad("a text message must be UTF-8"));
            }
            Kind::Text
        }
        "file" => {
            let (Some(file_id), Some(name), Some(offset), Some(size)) =
                (wire.file_id, wire.name, wire.offset, wire.size)
            else {
                return Err(bad("a file chunk needs file_id, name, offset and size"));
            };
            if !valid_id(&file_id) {
                return Err(bad("bad file id"));
            }
            if !valid_file_name(&name) {
                return Err(bad("bad file name"));
            }
            let end = offset
                .checked_add(body.len() as u64)
                .filter(|end| *end <= size)
                .ok_or_else(|| bad("the chunk runs past the file's size"))?;
            let last = end == size;
            match (&wire.sha256, last) {
                (Some(h), true) if valid_sha256(h) => {}
                (None, false) => {}
                (Some(_), true) => return Err(bad("sha256 must be 64 lowercase hex digits")),
                (None, true) => return Err(bad("the last chunk must carry the file's sha256")),
                (Some(_), false) => return Err(bad("only the last chunk carries sha256")),
            }
            if body.is_empty() && size != 0 {
                return Err(bad("an empty chunk is only allowed for an empty file"));
            }
            Kind::FileChunk(FileChunk { file_id, name, offset, size, sha256: wire.sha256 })
        }
        "offset" => {
            let Some(file_id) = wire.file_id.filter(|id| valid_id(id)) else {
                return Err(bad("an offset query needs a valid file_id"));
            };
            if !body.is_empty() {
                return Err(bad("an offset query has an empty body"));
            }
            Kind::Offset { file_id }
        }
        _ => return Err(bad("unknown kind; expected \"text\", \"file\" or \"offset\"")),
    };
    Ok((Header { id: wire.id, kind }, body))
}

/// How the Boss filed a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStatus {
    /// Newly committed.
    Stored,
    /// Already committed earlier (a retry or replay); nothing changed.
    Duplicate,
}

impl AckStatus {
    /// The word on the wire (and in a receipt statement).
    pub fn as_str(self) -> &'static str {
        match self {
            AckStatus::Stored => "stored",
            AckStatus::Duplicate => "duplicate",
        }
    }
}

/// The ACK token's header: which message, and how it was filed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckHeader {
    pub v: u32,
    pub id: String,
    pub status: AckStatus,
    /// To an enrolled agent: the receipt's time (unix seconds) and the
    /// Boss's Ed25519 signature over the receipt statement, 128 lowercase hex
    /// digits (PROTOCOL.md, "Signed receipts").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// ACK plaintext: the header line, `\n`, the Boss's reply text.
pub fn encode_ack(id: &str, status: AckStatus, reply: &str) -> Vec<u8> {
    encode_signed_ack(id, status, reply, None)
}

/// [`encode_ack`] with a signed receipt's time and signature in the header.
pub fn encode_signed_ack(id: &str, status: AckStatus, reply: &str, receipt: Option<(u64, &[u8; 64])>) -> Vec<u8> {
    let header = AckHeader {
        v: VERSION,
        id: id.to_string(),
        status,
        ts: receipt.map(|(time, _)| time),
        sig: receipt.map(|(_, sig)| hex::encode(sig)),
    };
    let mut out = serde_json::to_vec(&header).expect("ack header serialises");
    out.push(b'\n');
    out.extend_from_slice(reply.as_bytes());
    out
}

/// Where an upload stands on the Boss, as an offset query's answer tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Committed {
    /// Nothing held for this file id: start at offset 0.
    None,
    /// `offset` bytes durably held of an upload whose first chunk pinned
    /// `size` bytes. `offset == size` means every byte is held but the file
    /// is not yet recorded: send the last chunk again.
    Partial { offset: u64, size: u64 },
    /// Received and recorded: nothing to send.
    Complete { size: u64, sha256: String },
}

/// The plaintext of an offset query's ACK: `{"v":1,"id":...,"status":"offset",
/// "state":...}` (flat), `\n`, then a line for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetReply {
    pub v: u32,
    pub id: String,
    /// Always `"offset"`: an answer, not a receipt for stored work.
    pub status: String,
    #[serde(flatten)]
    pub committed: Committed,
}

/// Builds an offset query's ACK plaintext.
pub fn encode_offset_reply(id: &str, committed: &Committed) -> Vec<u8> {
    let reply = OffsetReply { v: VERSION, id: id.to_string(), status: "offset".into(), committed: committed.clone() };
    let text = match committed {
        Committed::None => "No upload of that file id.".to_string(),
        Committed::Partial { offset, size } => format!("{offset} of {size} bytes held."),
        Committed::Complete { size, .. } => format!("File already received: {size} bytes."),
    };
    let mut out = serde_json::to_vec(&reply).expect("offset reply serialises");
    out.push(b'\n');
    out.extend_from_slice(text.as_bytes());
    out
}

/// Reads an offset query's ACK plaintext (checked: status `offset`, a
/// well-formed state; a partial offset within its size, a hex SHA-256).
pub fn decode_offset_reply(plaintext: &[u8]) -> Result<OffsetReply, ProtocolError> {
    let newline = plaintext.iter().position(|b| *b == b'\n').ok_or_else(|| bad("the ACK has no header line"))?;
    let reply: OffsetReply = serde_json::from_slice(&plaintext[..newline])
        .map_err(|_| bad("bad offset reply: not a valid header object"))?;
    let sane = match &reply.committed {
        Committed::None => true,
        Committed::Partial { offset, size } => offset <= size,
        Committed::Complete { sha256, .. } => valid_sha256(sha256),
    };
    if reply.v != VERSION || reply.status != "offset" || !sane {
        return Err(bad("bad offset reply"));
    }
    Ok(reply)
}

pub fn decode_ack(plaintext: &[u8]) -> Result<(AckHeader, String), ProtocolError> {
    let newline = plaintext.iter().position(|b| *b == b'\n').ok_or_else(|| bad("the ACK has no header line"))?;
    let header: AckHeader =
        serde_json::from_slice(&plaintext[..newline]).map_err(|e| bad(format!("bad ACK header: {e}")))?;
    let reply = String::from_utf8_lossy(&plaintext[newline + 1..]).into_owned();
    Ok((header, reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_with_one_unprintable_byte_anywhere_is_refused() {
        let mut line = b"MSG 1 ".to_vec();
        line.resize(700_001, b'A');
        assert!(parse_request(&line).is_ok());
        for at in [6, 255, 256, 257, 4096, 699_999, 700_000] {
            for bad in [0x00, 0x1f, 0x7f, 0x80, 0xff] {
                let mut line = line.clone();
                line[at] = bad;
                assert!(parse_request(&line).is_err(), "byte {bad:#x} at {at}");
            }
        }
    }

    #[test]
    fn request_round_trip() {
        let line = format_request(42, "gAAAA_tok-en==");
        let req = parse_request(line.as_bytes()).expect("parses");
        assert_eq!(req.agent_id, 42);
        assert_eq!(req.token, b"gAAAA_tok-en==");
    }

    #[test]
    fn request_rejections() {
        for line in [
            &b""[..],
            b"\n",
            b"MSG",
            b"MSG 1",
            b"MSG 1 ",
            b"MSG 0 tok",
            b"MSG -1 tok",
            b"MSG 01 tok",
            b"MSG 99999999999999999999 tok",
            b"MSG 1 tok tok",
            b"msg 1 tok",
            b"MSG 1 t\xffk",
            b"MSG  1 tok",
        ] {
            assert!(parse_request(line).is_err(), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn reply_round_trip() {
        assert_eq!(parse_reply(format_ack("abc").as_bytes()), Ok(Reply::Ack { token: b"abc" }));
        for code in ErrorCode::ALL {
            let line = format_err(code, "some text\u{7}");
            match parse_reply(line.as_bytes()).expect("parses") {
                Reply::Err { code: c, text } => {
                    assert_eq!(c, code);
                    assert_eq!(text, "some text?");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(parse_reply(b"ERR nope x").is_err());
        assert!(parse_reply(b"HELLO").is_err());
    }

    #[test]
    fn header_round_trip_text_and_file() {
        let text = Header { id: "0190a1b2c3d4e5f60718293a4b5c6d7e".into(), kind: Kind::Text };
        let encoded = encode_message(&text, "hello\nworld".as_bytes());
        let (h, body) = decode_message(&encoded).expect("decodes");
        assert_eq!(h, text);
        assert_eq!(body, b"hello\nworld");

        let chunk = Header {
            id: "m-2".into(),
            kind: Kind::FileChunk(FileChunk {
                file_id: "f_1".into(),
                name: "report.pdf".into(),
                offset: 10,
                size: 13,
                sha256: Some("ab".repeat(32)),
            }),
        };
        let encoded = encode_message(&chunk, b"xyz");
        assert_eq!(decode_message(&encoded).expect("decodes").0, chunk);
    }

    #[test]
    fn header_rejections() {
        let cases: &[&[u8]] = &[
            b"no newline",
            b"{}\n",
            b"{\"v\":2,\"id\":\"a\",\"kind\":\"text\"}\n",
            b"{\"v\":1,\"id\":\"a b\",\"kind\":\"text\"}\n",
            b"{\"v\":1,\"id\":\"a\",\"kind\":\"poem\"}\n",
            b"{\"v\":1,\"id\":\"a\",\"kind\":\"text\"}\n\xff",
            b"{\"v\":1,\"id\":\"a\",\"kind\":\"file\",\"file_id\":\"f\",\"name\":\"../x\",\"offset\":0,\"size\":1}\nx",
            b"{\"v\":1,\"id\":\"a\",\"kind\":\"file\",\"file_id\":\"f\",\"name\":\"x\",\"offset\":0,\"size\":1}\nx",
            b"{\"v\":1,\"id\":\"a\",\"kind\":\"file\",\"file_id\":\"f\",\"name\":\"x\",\"offset\":0,\"size\":1}\nxy",
            b"{\"v\":1,\"id\":\"a\",\"kind\":\"file\",\"file_id\":\"f\",\"name\":\"x\",\"offset\":18446744073709551615,\"size\":1}\nx",
        ];
        for case in cases {
            assert!(decode_message(case).is_err(), "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn header_errors_never_quote_decrypted_content() {
        for case in [
            &b"{\"v\":1,\"id\":\"a\",\"kind\":\"text\",\"offset\":\"SECRET plan\"}\nx"[..],
            b"{\"v\":1,\"id\":\"a\",\"kind\":\"SECRET plan\"}\nx",
            b"{\"v\":1,\"id\":\"a\",\"kind\":\"text\",\"name\":[\"SECRET plan\"]}\nx",
        ] {
            let err = decode_message(case).expect_err("invalid header");
            assert!(!err.0.contains("SECRET"), "{}", err.0);
        }
    }

    #[test]
    fn offset_queries_and_replies_round_trip_and_bad_ones_are_refused() {
        let query = Header { id: "q1".into(), kind: Kind::Offset { file_id: "f_1".into() } };
        let encoded = encode_message(&query, b"");
        assert_eq!(
            String::from_utf8_lossy(&encoded),
            "{\"v\":1,\"id\":\"q1\",\"kind\":\"offset\",\"file_id\":\"f_1\"}\n"
        );
        assert_eq!(decode_message(&encoded).expect("decodes").0, query);
        assert!(decode_message(&encode_message(&query, b"x")).is_err(), "a body");
        for bad in [
            &b"{\"v\":1,\"id\":\"q\",\"kind\":\"offset\"}\n"[..],
            b"{\"v\":1,\"id\":\"q\",\"kind\":\"offset\",\"file_id\":\"../x\"}\n",
        ] {
            assert!(decode_message(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        for committed in [
            Committed::None,
            Committed::Partial { offset: 5, size: 9 },
            Committed::Complete { size: 9, sha256: "ab".repeat(32) },
        ] {
            let reply = decode_offset_reply(&encode_offset_reply("q1", &committed)).expect("decodes");
            assert_eq!((reply.id.as_str(), reply.committed), ("q1", committed));
        }
        let head =
            String::from_utf8(encode_offset_reply("q1", &Committed::Partial { offset: 5, size: 9 })).expect("utf-8");
        assert!(
            head.starts_with(
                "{\"v\":1,\"id\":\"q1\",\"status\":\"offset\",\"state\":\"partial\",\"offset\":5,\"size\":9}\n"
            ),
            "{head}"
        );
        for bad in [
            &b"{\"v\":1,\"id\":\"q\",\"status\":\"stored\",\"state\":\"none\"}\n"[..],
            b"{\"v\":1,\"id\":\"q\",\"status\":\"offset\",\"state\":\"partial\",\"offset\":10,\"size\":9}\n",
            b"{\"v\":1,\"id\":\"q\",\"status\":\"offset\",\"state\":\"complete\",\"size\":9,\"sha256\":\"zz\"}\n",
            b"{\"v\":1,\"id\":\"q\",\"status\":\"offset\",\"state\":\"maybe\"}\n",
        ] {
            assert!(decode_offset_reply(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn ack_round_trip() {
        let plain = encode_ack("m1", AckStatus::Duplicate, "seen it");
        let (h, reply) = decode_ack(&plain).expect("decodes");
        assert_eq!(h.id, "m1");
        assert_eq!(h.status, AckStatus::Duplicate);
        assert_eq!(reply, "seen it");
    }
}

#[cfg(test)]
#[path = "protocol_properties.rs"]
mod properties;
