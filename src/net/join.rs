//! Enrolment by one-time code (PROTOCOL.md, "Enrolment"): the code's form,
//! the `JOIN` line exchange, its transcript and key confirmation, and the
//! agent's side of it. The Boss's side is `boss::enroll`.
//!
//! ```text
//! agent: JOIN <agent-id> <SPAKE2 message A, hex>
//! Boss:  JOIN <SPAKE2 message B> <Boss X25519> <Boss Ed25519> <Boss confirmation>
//! agent: JOIN2 <agent X25519> <agent Ed25519> <possession signature> <agent confirmation>
//! Boss:  JOINED <Boss final confirmation>
//! ```
//!
//! SPAKE2 (Ed25519 group, the RustCrypto `spake2` crate; the agent is side A
//! with identity `spyctl/v2/agent/<AgentId>`, the Boss side B with
//! `spyctl/v2/boss`) runs over the password `SHA-256("spyctl/v2/join-code\n" ||
//! code)`. From its output K, HKDF-SHA256 (no salt) makes three keys, labelled
//! `spyctl/v2/join/boss-confirm`, `.../agent-confirm` and `.../boss-done`.
//! Each confirmation is an HMAC-SHA256 over a transcript hash that covers both
//! SPAKE2 messages and every public key sent, so a wrong code fails on both
//! sides and nobody in the middle can swap a key. An online attacker gets one
//! guess per code: the Boss deletes the code at the first `JOIN`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::protocol::{self, ErrorCode, ProtocolError, Reply};
use crate::crypto::{IdentityKeys, PublicIdentity};

/// The fixed word list (256 words: one byte each).
pub const WORDS: &str = include_str!("words.txt");
/// Words in a code after the agent id: 24 bits, one online guess per code.
pub const CODE_WORDS: usize = 3;
/// How long a code lives unless `agent enroll --ttl` says otherwise.
pub const DEFAULT_CODE_TTL_SECS: u64 = 600;

const CONFIRM_BOSS: &str = "spyctl/v2/join/boss-confirm";
const CONFIRM_AGENT: &str = "spyctl/v2/join/agent-confirm";
const CONFIRM_DONE: &str = "spyctl/v2/join/boss-done";

fn words() -> impl Iterator<Item = &'static str> {
    WORDS.lines().map(str::trim).filter(|w| !w.is_empty())
}

fn word(index: u8) -> &'static str {
    words().nth(usize::from(index)).unwrap_or("?")
}

/// A one-time code: `N-word-word-word`. A secret: no `Debug`, wiped on drop.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct JoinCode {
    pub agent_id: i64,
    words: [u8; CODE_WORDS],
}

/// Text that is not `N-word-word-word` with words from the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCode(pub String);

impl std::fmt::Display for BadCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed code: {}", self.0)
    }
}

impl std::error::Error for BadCode {}

impl JoinCode {
    pub fn generate(agent_id: i64) -> Result<JoinCode, getrandom::Error> {
        let mut words = [0u8; CODE_WORDS];
        getrandom::fill(&mut words)?;
        Ok(JoinCode { agent_id, words })
    }

    /// Parses a code as typed: case and surrounding space do not matter.
    pub fn parse(text: &str) -> Result<JoinCode, BadCode> {
        let text = text.trim().to_ascii_lowercase();
        let parts: Vec<&str> = text.split('-').collect();
        if parts.len() != CODE_WORDS + 1 {
            return Err(BadCode(format!("expected AGENT_ID-word-word-word ({} words)", CODE_WORDS)));
        }
        let agent_id = protocol::parse_agent_id(parts[0].as_bytes())
            .ok_or_else(|| BadCode("it must start with the AgentId".into()))?;
        let mut out = [0u8; CODE_WORDS];
        for (slot, part) in out.iter_mut().zip(&parts[1..]) {
            let index =
                words().position(|w| w == *part).ok_or_else(|| BadCode(format!("{part:?} is not a code word")))?;
            *slot = index as u8;
        }
        Ok(JoinCode { agent_id, words: out })
    }

    /// The SPAKE2 password: `SHA-256("spyctl/v2/join-code\n" || code)`. It is
    /// also what the Boss stores (sealed), never the code.
    pub fn password(&self) -> Zeroizing<[u8; 32]> {
        let text = Zeroizing::new(self.to_string());
        let mut hash = Sha256::new();
        hash.update(b"spyctl/v2/join-code\n");
        hash.update(text.as_bytes());
        Zeroizing::new(hash.finalize().into())
    }
}

impl std::fmt::Display for JoinCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.agent_id)?;
        for index in self.words {
            write!(f, "-{}", word(index))?;
        }
        Ok(())
    }
}

/// The SPAKE2 identities of the two sides.
pub fn spake_identities(agent_id: i64) -> (spake2::Identity, spake2::Identity) {
    (spake2::Identity::new(format!("spyctl/v2/agent/{agent_id}").as_bytes()), spake2::Identity::new(b"spyctl/v2/boss"))
}

/// The three keys made from the SPAKE2 output.
pub struct JoinKeys {
    pub boss_confirm: Zeroizing<[u8; 32]>,
    pub agent_confirm: Zeroizing<[u8; 32]>,
    pub done: Zeroizing<[u8; 32]>,
}

impl JoinKeys {
    pub fn derive(spake_key: &[u8]) -> JoinKeys {
        let hkdf = hkdf::Hkdf::<Sha256>::new(None, spake_key);
        let expand = |label: &str| {
            let mut okm = Zeroizing::new([0u8; 32]);
            hkdf.expand(label.as_bytes(), okm.as_mut()).expect("32 bytes is a valid HKDF-SHA256 length");
            okm
        };
        JoinKeys {
            boss_confirm: expand(CONFIRM_BOSS),
            agent_confirm: expand(CONFIRM_AGENT),
            done: expand(CONFIRM_DONE),
        }
    }
}

/// `T1 = SHA-256("spyctl/v2/join\n" || AgentId "\n" || msgA || msgB || Boss X25519 || Boss Ed25519)`.
pub fn transcript1(agent_id: i64, msg_a: &[u8], msg_b: &[u8], boss: &PublicIdentity) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(format!("spyctl/v2/join\n{agent_id}\n").as_bytes());
    hash.update(msg_a);
    hash.update(msg_b);
    hash.update(boss.x25519);
    hash.update(boss.ed25519);
    hash.finalize().into()
}

/// `T2 = SHA-256(T1 || agent X25519 || agent Ed25519)`.
pub fn transcript2(t1: &[u8; 32], agent: &PublicIdentity) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(t1);
    hash.update(agent.x25519);
    hash.update(agent.ed25519);
    hash.finalize().into()
}

/// What the agent signs to prove it holds its Ed25519 key.
pub fn possession_statement(t2: &[u8; 32]) -> Vec<u8> {
    let mut out = b"spyctl/v2/join/possession\n".to_vec();
    out.extend_from_slice(t2);
    out
}

pub fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a tag from [`mac`].
pub fn mac_ok(key: &[u8; 32], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(tag).is_ok()
}

fn bad(why: &str) -> ProtocolError {
    ProtocolError(why.to_string())
}

/// Splits a line into its verb and fields (printable ASCII, single spaces).
pub fn fields(line: &[u8]) -> Result<Vec<&str>, ProtocolError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| bad("lines are printable ASCII only"))?;
    if !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(bad("lines are printable ASCII only"));
    }
    Ok(text.split(' ').collect())
}

/// A hex field of exactly `N` bytes.
pub fn hex_field<const N: usize>(text: &str) -> Result<[u8; N], ProtocolError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(|_| bad("a field is not hex of the right length"))?;
    Ok(out)
}

/// A public identity from two hex fields.
pub fn identity_fields(x25519: &str, ed25519: &str) -> Result<PublicIdentity, ProtocolError> {
    let public = PublicIdentity { x25519: hex_field(x25519)?, ed25519: hex_field(ed25519)? };
    if !public.is_valid() {
        return Err(bad("not a usable public key"));
    }
    Ok(public)
}

/// Why `spyctl join` (or the pinned-Boss check before `send`) failed.
#[derive(Debug)]
pub enum JoinError {
    /// No connection, or it broke.
    Io {
        addr: String,
        source: io::Error,
    },
    /// The Boss answered `ERR`.
    Refused {
        code: ErrorCode,
        text: String,
    },
    /// The Boss's confirmation does not match: the code is wrong, expired or
    /// used (the three look the same, on purpose).
    WrongCode,
    /// The Boss presents keys other than the ones pinned in this home.
    PinMismatch {
        addr: String,
        pinned: String,
        presented: String,
    },
    /// The Boss's final confirmation does not match.
    NotConfirmed,
    Malformed(ProtocolError),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Io { addr, .. } => write!(f, "cannot talk to the Boss at {addr}"),
            JoinError::Refused { code, text } => write!(f, "the Boss refused ({code}): {text}"),
            JoinError::WrongCode => f.write_str(
                "the code is wrong, expired or already used; nothing was enrolled, and the code is now dead",
            ),
            JoinError::PinMismatch { addr, pinned, presented } => write!(
                f,
                "the Boss at {addr} presents identity {presented}, but this home pinned {pinned}: \
                 it may be another machine or an impostor; nothing was sent"
            ),
            JoinError::NotConfirmed => {
                f.write_str("the Boss did not confirm the enrolment; it may not have recorded it")
            }
            JoinError::Malformed(_) => f.write_str("the Boss's answer does not follow the protocol"),
        }
    }
}

impl std::error::Error for JoinError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JoinError::Io { source, .. } => Some(source),
            JoinError::Malformed(e) => Some(e),
            _ => None,
        }
    }
}

/// A line connection to the Boss.
struct Line {
    addr: String,
    reader: BufReader<TcpStream>,
}

impl Line {
    fn connect(addr: &str, timeout: Duration) -> Result<Line, JoinError> {
        let io = |source| JoinError::Io { addr: addr.to_string(), source };
        let stream = super::try_each_address(addr, |a| {
            let s = TcpStream::connect_timeout(&a, timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            Ok(s)
        })
        .map_err(io)?;
        Ok(Line { addr: addr.to_string(), reader: BufReader::new(stream) })
    }

    /// Writes `line` and reads the answer; an `ERR` becomes [`JoinError::Refused`].
    fn ask(&mut self, line: &str) -> Result<Vec<u8>, JoinError> {
        let io = |source| JoinError::Io { addr: self.addr.clone(), source };
        self.reader.get_mut().write_all(line.as_bytes()).map_err(io)?;
        let mut reply = Vec::new();
        let n = self
            .reader
            .by_ref()
            .take(protocol::MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut reply)
            .map_err(|source| JoinError::Io { addr: self.addr.clone(), source })?;
        if n == 0 || reply.last() != Some(&b'\n') {
            return Err(JoinError::Io {
                addr: self.addr.clone(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "the Boss closed the connection"),
            });
        }
        if reply.starts_with(b"ERR ")
            && let Ok(Reply::Err { code, text }) = protocol::parse_reply(&reply)
        {
            return Err(JoinError::Refused { code, text });
        }
        Ok(reply)
    }
}

/// Refuses a Boss whose keys differ from the pinned ones, naming both.
fn check_pin(addr: &str, pinned: Option<&PublicIdentity>, presented: &PublicIdentity) -> Result<(), JoinError> {
    match pinned {
        Some(pinned) if pinned != presented => Err(JoinError::PinMismatch {
            addr: addr.to_string(),
            pinned: pinned.fingerprint(),
            presented: presented.fingerprint(),
        }),
        _ => Ok(()),
    }
}

/// The agent's side of enrolment. Returns the Boss's public identity once
/// both sides have confirmed; nothing is sent past the first line unless the
/// Boss proved it knows the code (and, if `pinned`, has the pinned keys).
pub fn join(
    addr: &str,
    timeout: Duration,
    code: &JoinCode,
    me: &IdentityKeys,
    pinned: Option<&PublicIdentity>,
) -> Result<PublicIdentity, JoinError> {
    let (id_a, id_b) = spake_identities(code.agent_id);
    let password = code.password();
    let (spake, msg_a) =
        spake2::Spake2::<spake2::Ed25519Group>::start_a(&spake2::Password::new(password.as_ref()), &id_a, &id_b);
    let mut line = Line::connect(addr, timeout)?;
    let reply = line.ask(&format!("JOIN {} {}\n", code.agent_id, hex::encode(&msg_a)))?;
    let f = fields(&reply).map_err(JoinError::Malformed)?;
    let [verb, msg_b, boss_x, boss_ed, confirm] = f[..] else {
        return Err(JoinError::Malformed(bad("expected JOIN <msg> <x25519> <ed25519> <confirm>")));
    };
    if verb != "JOIN" {
        return Err(JoinError::Malformed(bad("expected a JOIN answer")));
    }
    let msg_b = hex::decode(msg_b).map_err(|_| JoinError::Malformed(bad("bad SPAKE2 message")))?;
    let boss = identity_fields(boss_x, boss_ed).map_err(JoinError::Malformed)?;
    let confirm: [u8; 32] = hex_field(confirm).map_err(JoinError::Malformed)?;
    // A message that is not a group element fails exactly like a wrong code.
    let key = Zeroizing::new(spake.finish(&msg_b).map_err(|_| JoinError::WrongCode)?);
    let keys = JoinKeys::derive(&key);
    let t1 = transcript1(code.agent_id, &msg_a, &msg_b, &boss);
    if !mac_ok(&keys.boss_confirm, &[&t1], &confirm) {
        return Err(JoinError::WrongCode);
    }
    check_pin(addr, pinned, &boss)?;
    let mine = me.public();
    let t2 = transcript2(&t1, &mine);
    let signature = me.sign(&possession_statement(&t2));
    let agent_confirm = mac(&keys.agent_confirm, &[&t2, &signature]);
    let reply = line.ask(&format!(
        "JOIN2 {} {} {} {}\n",
        hex::encode(mine.x25519),
        hex::encode(mine.ed25519),
        hex::encode(signature),
        hex::encode(agent_confirm)
    ))?;
    let f = fields(&reply).map_err(JoinError::Malformed)?;
    match f[..] {
        ["JOINED", done] if mac_ok(&keys.done, &[&t2], &hex_field::<32>(done).map_err(JoinError::Malformed)?) => {
            Ok(boss)
        }
        ["JOINED", _] => Err(JoinError::NotConfirmed),
        _ => Err(JoinError::Malformed(bad("expected JOINED <confirm>"))),
    }
}

/// Asks the Boss for its public identity (`WHOIS` -> `BOSS <x25519> <ed25519>`)
/// and refuses one that differs from `pinned`, before anything is sent.
pub fn check_boss(addr: &str, timeout: Duration, pinned: &PublicIdentity) -> Result<(), JoinError> {
    let mut line = Line::connect(addr, timeout)?;
    let reply = line.ask("WHOIS\n")?;
    let f = fields(&reply).map_err(JoinError::Malformed)?;
    let ["BOSS", x, ed] = f[..] else {
        return Err(JoinError::Malformed(bad("expected BOSS <x25519> <ed25519>")));
    };
    let presented = identity_fields(x, ed).map_err(JoinError::Malformed)?;
    check_pin(addr, Some(pinned), &presented)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_list_has_256_distinct_words() {
        let all: Vec<&str> = words().collect();
        assert_eq!(all.len(), 256);
        let distinct: std::collections::BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert!(all.iter().all(|w| w.bytes().all(|b| b.is_ascii_lowercase())));
    }

    #[test]
    fn codes_round_trip_and_malformed_ones_are_refused() {
        let code = JoinCode::generate(6).expect("rng");
        let text = code.to_string();
        assert!(text.starts_with("6-"));
        // No Debug on a code (it is a secret): compare the text forms.
        assert!(JoinCode::parse(&format!("  {}\n", text.to_uppercase())).expect("parses") == code);
        for bad in
            ["", "6", "6-acid-acid", "6-acid-acid-acid-acid", "0-acid-acid-acid", "x-acid-acid-acid", "6-acid-acid-qqq"]
        {
            assert!(JoinCode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spake2_with_the_same_code_agrees_and_with_another_does_not() {
        let code = JoinCode::parse("6-acid-acorn-actor").expect("code");
        let other = JoinCode::parse("6-acid-acorn-adobe").expect("code");
        let (a, b) = spake_identities(6);
        let run = |pa: &JoinCode, pb: &JoinCode| {
            let (sa, ma) =
                spake2::Spake2::<spake2::Ed25519Group>::start_a(&spake2::Password::new(pa.password().as_ref()), &a, &b);
            let (sb, mb) =
                spake2::Spake2::<spake2::Ed25519Group>::start_b(&spake2::Password::new(pb.password().as_ref()), &a, &b);
            (sa.finish(&mb).expect("a"), sb.finish(&ma).expect("b"))
        };
        let (ka, kb) = run(&code, &code);
        assert_eq!(ka, kb);
        let (ka, kb) = run(&code, &other);
        assert_ne!(ka, kb);
    }
}
