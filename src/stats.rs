//! The one percentile definition, shared by `boss bench` (BENCHMARKS.md) and
//! the hardening tests (SECURITY.md), so a "p99" means the same in both.

/// The nearest-rank percentile of `sorted` (ascending), `p` in 0..=100:
/// the smallest sample such that at least `p` percent of the samples are at
/// most it, i.e. `sorted[ceil(p / 100 * n) - 1]`, with the rank clamped to
/// 1..=n (so p0 is the minimum and p100 the maximum). No interpolation: the
/// answer is always a measured sample. An empty slice gives `T::default()`
/// (0, or `Duration::ZERO`).
pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::percentile;

    #[test]
    fn nearest_rank_on_integers() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), 50);
        assert_eq!(percentile(&samples, 99.0), 99);
        assert_eq!(percentile(&samples, 100.0), 100);
        assert_eq!(percentile(&samples, 0.0), 1);
        assert_eq!(percentile(&[7u64], 99.0), 7);
        assert_eq!(percentile::<u64>(&[], 50.0), 0);
        // Ten samples: p99 is the largest, p50 the fifth, p90 the ninth.
        let ten: Vec<u64> = (10..20).collect();
        assert_eq!(percentile(&ten, 99.0), 19);
        assert_eq!(percentile(&ten, 90.0), 18);
        assert_eq!(percentile(&ten, 50.0), 14);
    }

    #[test]
    fn nearest_rank_on_durations() {
        let ms: Vec<Duration> = (1..=4).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 50.0), Duration::from_millis(2));
        assert_eq!(percentile(&ms, 99.0), Duration::from_millis(4));
        assert_eq!(percentile(&ms, 100.0), Duration::from_millis(4));
        assert_eq!(percentile::<Duration>(&[], 99.0), Duration::ZERO);
    }
}
