//! Latency and throughput of one workload, overall and per second of the run.
//!
//! Every completed request is recorded at the second it completed, with its
//! latency (from its intended send time in open loop, from its actual send in
//! closed loop) and the events it carried. A second's throughput is what
//! completed in it; its percentiles are over the requests that completed in it.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency recorded, in microseconds (longer ones are clamped).
pub const MAX_LATENCY_US: u64 = 120_000_000;

fn histogram() -> Histogram<u64> {
    // Bounds are constants that `new_with_bounds` accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap_or_else(|_| unreachable!())
}

/// One second of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Second {
    /// Seconds since the start of the run (this second is `[t, t + 1)`).
    pub t: u64,
    /// Requests completed in it.
    pub requests: u64,
    /// Events those requests carried.
    pub events: u64,
    /// Latency percentiles of those requests, in milliseconds (0 when none).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// Summary percentiles, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    /// Requests recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// Summarizes `h` (microseconds) in milliseconds.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
    Percentiles {
        count: h.len(),
        p50: ms(0.5),
        p90: ms(0.9),
        p99: ms(0.99),
        p999: ms(0.999),
        max: if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
    }
}

/// What one workload recorded.
#[derive(Debug, Clone)]
pub struct Recorder {
    overall: Histogram<u64>,
    seconds: Vec<(u64, u64, Histogram<u64>)>,
    events: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// Nothing recorded.
    pub fn new() -> Self {
        Self { overall: histogram(), seconds: Vec::new(), events: 0 }
    }

    /// A request carrying `events` completed `at_s` seconds into the run after `latency_us`.
    pub fn record(&mut self, at_s: f64, latency_us: u64, events: u64) {
        let latency = latency_us.clamp(1, MAX_LATENCY_US);
        let second = at_s.max(0.0) as usize;
        while self.seconds.len() <= second {
            self.seconds.push((0, 0, histogram()));
        }
        let (requests, carried, h) = &mut self.seconds[second];
        *requests += 1;
        *carried += events;
        // In range by the clamp above.
        let _ = h.record(latency);
        let _ = self.overall.record(latency);
        self.events += events;
    }

    /// Requests recorded.
    pub fn requests(&self) -> u64 {
        self.overall.len()
    }

    /// Events recorded.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Percentiles over the whole run.
    pub fn overall(&self) -> Percentiles {
        percentiles(&self.overall)
    }

    /// Percentiles over the requests completed in the seconds `[from, to)`
    /// (the steady part of a run, without warm-up and drain).
    pub fn window(&self, from: u64, to: u64) -> (Percentiles, u64, u64) {
        let mut h = histogram();
        let (mut requests, mut events) = (0, 0);
        for (t, (r, e, s)) in self.seconds.iter().enumerate() {
            if (from..to).contains(&(t as u64)) {
                let _ = h.add(s);
                requests += r;
                events += e;
            }
        }
        (percentiles(&h), requests, events)
    }

    /// Every second from the start to the last completion, empty ones included.
    pub fn timeline(&self) -> Vec<Second> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(t, (requests, events, h))| {
                let p = percentiles(h);
                Second {
                    t: t as u64,
                    requests: *requests,
                    events: *events,
                    p50_ms: p.p50,
                    p99_ms: p.p99,
                    max_ms: p.max,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_second_has_its_own_throughput_and_percentiles() {
        let mut r = Recorder::new();
        // Second 0: 100 requests of 10 events at 1..=100 ms.
        for i in 1..=100u64 {
            r.record(0.5, i * 1000, 10);
        }
        // Second 2: 10 slow requests of 1 event at 2 s; second 1 stays empty.
        for _ in 0..10 {
            r.record(2.9, 2_000_000, 1);
        }
        let t = r.timeline();
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].requests, t[0].events), (100, 1_000));
        assert!((t[0].p50_ms - 50.0).abs() < 0.1, "{}", t[0].p50_ms);
        assert!((t[0].p99_ms - 99.0).abs() < 0.1, "{}", t[0].p99_ms);
        assert!((t[0].max_ms - 100.0).abs() < 0.1);
        assert_eq!((t[1].requests, t[1].p99_ms), (0, 0.0), "an idle second is kept, at zero");
        assert_eq!((t[2].requests, t[2].events), (10, 10));
        assert!((t[2].p50_ms - 2000.0).abs() < 2.0, "{}", t[2].p50_ms);
        assert_eq!((r.requests(), r.events()), (110, 1_010));
        let all = r.overall();
        assert!((all.max - 2000.0).abs() < 2.0);
        assert!(all.p90 < 100.1 && all.p99 > 1999.0, "{all:?}");
        let (steady, requests, events) = r.window(0, 1);
        assert_eq!((requests, events), (100, 1_000));
        assert!((steady.max - 100.0).abs() < 0.1, "the window leaves the slow second out");
    }

    #[test]
    fn latencies_out_of_range_are_clamped_not_lost() {
        let mut r = Recorder::new();
        r.record(0.0, 0, 1);
        r.record(0.0, u64::MAX, 1);
        assert_eq!(r.requests(), 2);
        assert!(r.overall().max >= MAX_LATENCY_US as f64 / 1000.0 * 0.99);
    }
}
