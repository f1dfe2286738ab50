//! The testable parts of `tally-loadgen`: id distributions, latency recording
//! per second of a run, the closed-loop driver, the retry policy and the
//! retrying sender, the exactness check, partition imbalance and the SVG plot
//! of a run. `main.rs` wires them to HTTP and the broker.
//!
//! # Layout
//!
//! - [`retry`]: when to send a refused request again (`Retry-After`, capped
//!   exponential backoff with full jitter, bounds), as pure functions.
//! - [`deliver`]: one request sent until accepted under that policy, every
//!   attempt kept.
//! - [`exactness`]: lost and duplicated views against what was acknowledged.
//! - [`ingest`]: batches of events, posting one batch, the tally of answers.
//! - [`closed`]: the closed-loop driver.
//! - [`record`]: latency histograms per second of a run.
//! - [`plot`]: the SVG of a run.
//! - Here: loopback guard, zipf sampler, PRNG, partition imbalance, metric scraping.

pub mod closed;
pub mod deliver;
pub mod exactness;
pub mod ingest;
pub mod plot;
pub mod record;
pub mod retry;

use anyhow::bail;

/// Refuses any target outside the loopback range.
pub fn loopback(address: &str) -> anyhow::Result<()> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h).trim_matches(['[', ']']);
    let ok = host == "localhost" || host == "::1" || host.starts_with("127.");
    if !ok {
        bail!("{address}: load may only target loopback addresses (127.0.0.0/8, ::1)");
    }
    Ok(())
}

/// Zipf-like sampler over `n` items by inverse CDF on precomputed weights.
#[derive(Debug, Clone)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// Items `0..n`, item `k` with weight `1 / (k + 1)^exponent`.
    pub fn new(n: u64, exponent: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n.max(1))
            .map(|k| {
                total += 1.0 / (k as f64).powf(exponent);
                total
            })
            .collect::<Vec<_>>();
        Self { cumulative: cumulative.into_iter().map(|c| c / total).collect() }
    }

    /// The item for a uniform draw in `[0, 1)`.
    pub fn sample(&self, uniform: f64) -> usize {
        self.cumulative.partition_point(|c| *c < uniform).min(self.cumulative.len() - 1)
    }
}

/// xorshift64*: fast, deterministic, good enough for load.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform draw in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// How unevenly records spread over partitions.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Imbalance {
    /// Records per partition, in partition order.
    pub per_partition: Vec<i64>,
    /// The fullest partition.
    pub max: i64,
    /// Mean over all partitions (empty ones included: they are idle capacity).
    pub mean: f64,
    /// `max / mean`: 1.0 is perfectly even; the number of partitions means
    /// everything landed on one.
    pub max_over_mean: f64,
}

/// Imbalance of the records added between two watermark readings.
pub fn imbalance(before: &[i64], after: &[i64]) -> Imbalance {
    let per_partition: Vec<i64> =
        after.iter().enumerate().map(|(i, a)| a - before.get(i).copied().unwrap_or(0)).collect();
    let max = per_partition.iter().copied().max().unwrap_or(0);
    let mean = if per_partition.is_empty() {
        0.0
    } else {
        per_partition.iter().sum::<i64>() as f64 / per_partition.len() as f64
    };
    let max_over_mean = if mean > 0.0 { max as f64 / mean } else { 0.0 };
    Imbalance { per_partition, max, mean, max_over_mean }
}

/// The value of an unlabelled counter or gauge in a Prometheus text exposition.
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_allowed() {
        for ok in ["127.0.0.1:8080", "127.3.4.5:1", "localhost:80", "[::1]:8080"] {
            loopback(ok).unwrap();
        }
        for bad in ["10.0.0.1:8080", "example.com:80", "[2001:db8::1]:80", "128.0.0.1:1"] {
            assert!(loopback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zipf_makes_the_first_items_hot() {
        let zipf = Zipf::new(1_000, 1.2);
        let mut rng = Rng(7);
        let mut counts = vec![0u32; 1_000];
        for _ in 0..100_000 {
            counts[zipf.sample(rng.uniform())] += 1;
        }
        // Weight of item 0: 1 / H(1000, 1.2) ≈ 0.23; item 1 has 2^-1.2 of it.
        let top = f64::from(counts[0]) / 100_000.0;
        assert!((0.20..0.26).contains(&top), "{top}");
        let ratio = f64::from(counts[1]) / f64::from(counts[0]);
        assert!((0.38..0.49).contains(&ratio), "{ratio}");
        assert_eq!(zipf.sample(1.0), 999, "a draw of 1.0 stays in range");
    }

    #[test]
    fn imbalance_is_max_over_mean_of_the_records_added() {
        let i = imbalance(&[10, 10, 10, 10], &[30, 20, 10, 20]);
        assert_eq!(i.per_partition, vec![20, 10, 0, 10]);
        assert_eq!(i.max, 20);
        assert!((i.mean - 10.0).abs() < 1e-9);
        assert!((i.max_over_mean - 2.0).abs() < 1e-9);
        assert_eq!(imbalance(&[5, 5], &[5, 5]).max_over_mean, 0.0, "no records: no ratio");
    }

    #[test]
    fn prometheus_values_are_found_by_exact_name() {
        let text = "# HELP a_total x\na_total_other 9\na_total 42\nb 1.5\n";
        assert_eq!(prometheus_value(text, "a_total"), Some(42.0));
        assert_eq!(prometheus_value(text, "b"), Some(1.5));
        assert_eq!(prometheus_value(text, "c"), None);
    }
}
