//! Per-key token buckets.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` tokens a second;
//! one event costs one token. A request larger than the burst is let through
//! when the bucket is full and leaves it in debt, so big batches are possible
//! but the long-run rate still holds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second up to `burst`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        Self { rate, burst, tokens: burst, updated: now }
    }

    /// Takes `cost` tokens, or says how long until they would be there.
    pub fn try_take(&mut self, cost: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let needed = cost.min(self.burst);
        if self.tokens >= needed {
            self.tokens -= cost;
            return Ok(());
        }
        let missing = needed - self.tokens;
        Err(Duration::from_secs_f64(missing / self.rate))
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }
}

/// Buckets by key name; keys without a rate are not limited.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<String, Mutex<TokenBucket>>,
}

impl RateLimiter {
    /// Limits `name` to `rate` events/s with `burst` (a rate of 0 means unlimited).
    pub fn add(&mut self, name: &str, rate: f64, burst: f64) {
        if rate > 0.0 {
            let burst = if burst > 0.0 { burst } else { rate };
            self.buckets.insert(name.to_owned(), Mutex::new(TokenBucket::new(rate, burst, Instant::now())));
        }
    }

    /// Charges `events` to `name`; `Err` carries the wait before a retry can pass.
    pub fn check(&self, name: &str, events: usize) -> Result<(), Duration> {
        let Some(bucket) = self.buckets.get(name) else {
            return Ok(());
        };
        let mut bucket = bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        bucket.try_take(events as f64, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_the_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        for _ in 0..5 {
            assert!(bucket.try_take(1.0, t0).is_ok());
        }
        let wait = bucket.try_take(1.0, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        assert!(bucket.try_take(1.0, t0 + Duration::from_millis(100)).is_ok());
        assert!(bucket.try_take(1.0, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn tokens_never_accumulate_beyond_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 3.0, t0);
        let later = t0 + Duration::from_secs(60);
        assert!(bucket.try_take(3.0, later).is_ok());
        assert!(bucket.try_take(1.0, later).is_err());
    }

    #[test]
    fn a_batch_larger_than_the_burst_passes_once_and_leaves_debt() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0, t0);
        assert!(bucket.try_take(25.0, t0).is_ok(), "a full bucket admits an oversized batch");
        // 20 tokens of debt plus one token needed: 2.1 s at 10/s.
        let wait = bucket.try_take(1.0, t0).unwrap_err();
        assert_eq!(wait.as_millis(), 2100);
    }

    #[test]
    fn keys_without_a_rate_are_unlimited_and_keys_are_independent() {
        let mut limiter = RateLimiter::default();
        limiter.add("slow", 1.0, 2.0);
        limiter.add("free", 0.0, 0.0);
        assert!(limiter.check("slow", 2).is_ok());
        assert!(limiter.check("slow", 1).is_err());
        assert!((0..1000).all(|_| limiter.check("free", 100).is_ok()));
    }
}
