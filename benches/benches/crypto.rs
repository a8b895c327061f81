//! `cargo bench -p spyctl-benches --bench crypto`: criterion micro-benchmarks of the hot paths a
//! message takes: Fernet seal/open (throughput at 64 B, 1 KiB, 64 KiB, 1 MiB),
//! the blind index, one Argon2id password hash, and the protocol parsers.
//!
//! Measurement times are short on purpose (the whole run takes about a minute
//! on 2 cores); the figures are reports, never assertions. BENCHMARKS.md puts
//! them beside `openssl speed` from the same run (scripts/bench-compare.sh).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use spyctl::crypto::{BlindIndexKey, FernetKey, password};
use spyctl::net::protocol::{self, Header, Kind};

/// Plaintext sizes for Fernet: a tiny message up to a 1 MiB one.
const SIZES: [(usize, &str); 4] = [(64, "64B"), (1024, "1KiB"), (64 * 1024, "64KiB"), (1024 * 1024, "1MiB")];

fn key() -> FernetKey {
    FernetKey::from_bytes(&[0x42; 32])
}

fn fernet(c: &mut Criterion) {
    let key = key();
    let mut group = c.benchmark_group("fernet");
    group.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(20);
    for (size, label) in SIZES {
        let plaintext = vec![0xa5u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        // The real path: random IV from the OS and the current time, as `send` does.
        group.bench_with_input(BenchmarkId::new("seal", label), &plaintext, |b, p| b.iter(|| key.seal(black_box(p))));
        let token = key.seal(&plaintext);
        group.bench_with_input(BenchmarkId::new("open", label), &token, |b, t| {
            b.iter(|| key.open(black_box(t.as_bytes()), None).map(|o| o.plaintext.len()))
        });
    }
    group.finish();
}

fn blind_index(c: &mut Criterion) {
    let key = BlindIndexKey::from_bytes(&[0x17; 32]);
    let mut group = c.benchmark_group("blind_index");
    group.warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(800));
    group.bench_function("name", |b| b.iter(|| key.index(black_box("  Natasha Romanoff "))));
    group.finish();
}

fn password_hash(c: &mut Criterion) {
    // Argon2id at 19 MiB, 2 passes: tens of milliseconds per hash. Flat sampling
    // with criterion's minimum of 10 samples runs about a dozen hashes in all.
    let mut group = c.benchmark_group("password");
    group.sampling_mode(SamplingMode::Flat).sample_size(10).warm_up_time(Duration::from_millis(100));
    group.measurement_time(Duration::from_millis(500));
    group.bench_function("argon2id_hash", |b| b.iter(|| password::hash(black_box(b"mission-accepted-96"), &[7u8; 32])));
    group.finish();
}

fn protocol_parsers(c: &mut Criterion) {
    let key = key();
    let header = Header { id: spyctl::net::ids::random_id(), kind: Kind::Text };
    let plaintext = protocol::encode_message(&header, &[b'x'; 64]);
    let line = protocol::format_request(7, &key.seal(&plaintext));
    let ack = protocol::format_ack(&key.seal(&protocol::encode_ack(&header.id, protocol::AckStatus::Stored, "ok")));

    let mut group = c.benchmark_group("protocol");
    group.warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(800));
    group.bench_function("parse_request_64B", |b| {
        b.iter(|| protocol::parse_request(black_box(line.as_bytes())).map(|r| r.agent_id))
    });
    group.bench_function("decode_message_64B", |b| {
        b.iter(|| protocol::decode_message(black_box(&plaintext)).map(|(h, body)| (h.id.len(), body.len())))
    });
    group
        .bench_function("encode_message_64B", |b| b.iter(|| protocol::encode_message(black_box(&header), &[b'x'; 64])));
    group.bench_function("parse_reply_ack", |b| b.iter(|| protocol::parse_reply(black_box(ack.as_bytes())).is_ok()));
    group.finish();
}

/// Protocol v2: one whole Noise IK handshake, both sides in this thread (so
/// each side's CPU is about half), and one 64 B transport frame each way.
fn noise_handshake(c: &mut Criterion) {
    use spyctl::crypto::{IdentityKeys, noise};
    let boss = IdentityKeys::generate().expect("rng");
    let agent = IdentityKeys::generate().expect("rng");
    let boss_x = boss.public().x25519;
    let mut group = c.benchmark_group("noise");
    group.bench_function("ik_handshake_both_sides", |b| {
        b.iter(|| {
            let mut initiator = noise::initiator(&agent, &boss_x).expect("initiator");
            let mut responder = noise::responder(&boss).expect("responder");
            let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
            let n = initiator.write_message(b"{\"v\":2}", &mut m).expect("1");
            responder.read_message(&m[..n], &mut p).expect("1r");
            let n = responder.write_message(b"{}", &mut m).expect("2");
            initiator.read_message(&m[..n], &mut p).expect("2r");
            (initiator.into_transport_mode().expect("t"), responder.into_transport_mode().expect("t"))
        })
    });
    let mut initiator = noise::initiator(&agent, &boss_x).expect("initiator");
    let mut responder = noise::responder(&boss).expect("responder");
    let (mut m, mut p) = ([0u8; 256], [0u8; 256]);
    let n = initiator.write_message(b"{}", &mut m).expect("1");
    responder.read_message(&m[..n], &mut p).expect("1r");
    let n = responder.write_message(b"{}", &mut m).expect("2");
    initiator.read_message(&m[..n], &mut p).expect("2r");
    let (mut a, mut b) = (initiator.into_transport_mode().expect("t"), responder.into_transport_mode().expect("t"));
    group.bench_function("frame_64B_seal_and_open", |bench| {
        bench.iter(|| {
            let n = a.write_message(&[7u8; 64], &mut m).expect("seal");
            b.read_message(&m[..n], &mut p).expect("open")
        })
    });
    group.finish();
}

/// What a signed message costs each side beyond the v1 path (issue 13): the
/// agent's two signatures, the Boss's two verifications and its receipt.
fn identity(c: &mut Criterion) {
    use spyctl::crypto::IdentityKeys;
    use spyctl::crypto::identity::{Verifier, receipt, statement, verify_ed25519};
    use spyctl::crypto::minisign::{sign_statement, verify_statement};
    let boss = IdentityKeys::generate().expect("rng");
    let agent = IdentityKeys::generate().expect("rng");
    let st =
        statement(&boss.public().ed25519, 6, "0123456789abcdef0123456789abcdef", "text", &[b'x'; 64], 1_800_000_000);
    let sigs = sign_statement(&agent, &st);
    let rc = receipt(&boss.public().ed25519, 6, "0123456789abcdef0123456789abcdef", &"0".repeat(64), "stored", 1);
    let rc_sig = boss.sign(&rc);
    let mut group = c.benchmark_group("identity");
    group.warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(800));
    group.bench_function("agent_sign_statement_and_tsig", |b| b.iter(|| sign_statement(&agent, &st)));
    group.bench_function("boss_verify_statement_and_tsig", |b| {
        b.iter(|| verify_statement(&agent.public(), &st, &sigs.signature, Some(&sigs.trusted)))
    });
    group.bench_function("boss_sign_receipt", |b| b.iter(|| boss.sign(&rc)));
    group.bench_function("agent_verify_receipt", |b| b.iter(|| verify_ed25519(&boss.public().ed25519, &rc, &rc_sig)));
    group.bench_function("decode_ed25519_key", |b| b.iter(|| Verifier::new(black_box(&agent.public().ed25519))));
    let decoded = Verifier::new(&boss.public().ed25519).expect("a valid key");
    group.bench_function("agent_verify_receipt_decoded_key", |b| b.iter(|| decoded.verify(&rc, &rc_sig)));
    group.bench_function("channel_key_x25519_hkdf", |b| {
        b.iter(|| boss.channel_key(spyctl::crypto::identity::Side::Boss, &agent.public(), 6))
    });
    group.finish();
}

criterion_group!(benches, fernet, blind_index, password_hash, protocol_parsers, noise_handshake, identity);
criterion_main!(benches);
