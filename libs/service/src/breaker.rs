//! A circuit breaker with half-open probes.
//!
//! Closed: calls go through; `failure_threshold` failures in a row open it.
//! Open: calls are refused (the caller degrades) until `cool_down` passes.
//! Half-open: one probe call is let through; success closes, failure re-opens.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker state, as exported in metrics (`0` closed, `1` half-open, `2` open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed = 0,
    /// One probe is allowed.
    HalfOpen = 1,
    /// Calls are refused.
    Open = 2,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
    probing: bool,
}

/// A thread-safe breaker.
#[derive(Debug)]
pub struct Breaker {
    failure_threshold: u32,
    cool_down: Duration,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(failure_threshold: u32, cool_down: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            cool_down,
            inner: Mutex::new(Inner { state: BreakerState::Closed, failures: 0, opened_at: None, probing: false }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call may go through now (in half-open, only the one probe).
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                if inner.opened_at.is_some_and(|at| now.duration_since(at) >= self.cool_down) {
                    inner.state = BreakerState::HalfOpen;
                    inner.probing = true;
                    true
                } else {
                    false
                }
            }
            BreakerState::HalfOpen => {
                if inner.probing {
                    false
                } else {
                    inner.probing = true;
                    true
                }
            }
        }
    }

    /// Records a successful call.
    pub fn success(&self) {
        let mut inner = self.lock();
        inner.state = BreakerState::Closed;
        inner.failures = 0;
        inner.probing = false;
        inner.opened_at = None;
    }

    /// Records a failed call.
    pub fn failure(&self) {
        self.failure_at(Instant::now());
    }

    fn failure_at(&self, now: Instant) {
        let mut inner = self.lock();
        inner.failures += 1;
        if inner.state == BreakerState::HalfOpen || inner.failures >= self.failure_threshold {
            inner.state = BreakerState::Open;
            inner.opened_at = Some(now);
            inner.probing = false;
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_then_probes_once_and_closes() {
        let breaker = Breaker::new(3, Duration::from_secs(5));
        let t0 = Instant::now();
        breaker.failure_at(t0);
        breaker.failure_at(t0);
        assert!(breaker.allow_at(t0));
        breaker.failure_at(t0);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow_at(t0 + Duration::from_secs(1)));
        assert!(breaker.allow_at(t0 + Duration::from_secs(6)), "one probe after the cool-down");
        assert!(!breaker.allow_at(t0 + Duration::from_secs(6)), "only one");
        breaker.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow_at(t0 + Duration::from_secs(6)));
    }

    #[test]
    fn a_failed_probe_reopens() {
        let breaker = Breaker::new(1, Duration::from_secs(5));
        let t0 = Instant::now();
        breaker.failure_at(t0);
        assert!(breaker.allow_at(t0 + Duration::from_secs(5)));
        breaker.failure_at(t0 + Duration::from_secs(5));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow_at(t0 + Duration::from_secs(9)));
    }
}
