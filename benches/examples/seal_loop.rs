//! Seals 1 MiB N times (for perf stat).
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let key = spyctl::crypto::fernet::FernetKey::from_bytes(&[7u8; 32]);
    let p = vec![0xa5u8; 1 << 20];
    let mut total = 0usize;
    let t = std::time::Instant::now();
    for _ in 0..n {
        total += std::hint::black_box(key.seal(std::hint::black_box(&p))).len();
    }
    let s = t.elapsed().as_secs_f64();
    println!("{} seals, {:.1} MiB/s wall, {}", n, n as f64 / s, total);
}
