//! When to send a refused request again: the schedule of a well-behaved
//! client, as pure functions.
//!
//! A refused request (503, 429, any 5xx, 408, or no answer at all) is sent
//! again with the same event ids, so the gateway deduplicates what an earlier
//! attempt may have produced. The wait before retry `n` (0 for the first
//! retry) is
//!
//! - never shorter than the server's `Retry-After` (delta-seconds or an HTTP
//!   date), and
//! - spread with full jitter over a window that doubles with every retry:
//!   a uniform draw in `[0, min(cap, base * 2^n))` is added, so that clients
//!   refused at the same moment do not come back at the same moment, and a
//!   persistent overload sees ever fewer retries.
//!
//! Retrying is bounded in count (`max_attempts`, the first send included) and
//! in time (`give_up_after` from the first send: a wait that would end past
//! it is not started).

use std::time::{Duration, SystemTime};

/// How a client retries refused requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The backoff window before the first retry.
    pub base: Duration,
    /// The largest backoff window.
    pub cap: Duration,
    /// Sends of one request at most, the first one included.
    pub max_attempts: u32,
    /// No retry starts later than this after the first send.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_attempts: 30,
            give_up_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The backoff window before retry `retry` (0-based): `min(cap, base * 2^retry)`.
    pub fn window(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).map_or(self.cap, |w| w.min(self.cap))
    }

    /// The wait before retry `retry`: at least `retry_after` (the server's
    /// word), plus `uniform` (a draw in `[0, 1)`) of the backoff window.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, uniform: f64) -> Duration {
        let jitter = self.window(retry).mul_f64(uniform.clamp(0.0, 1.0));
        retry_after.unwrap_or(Duration::ZERO).saturating_add(jitter)
    }

    /// Whether another send may start `elapsed` after the first one, which
    /// was followed by `attempts` sends in all.
    pub fn may_retry(&self, attempts: u32, elapsed: Duration) -> bool {
        attempts < self.max_attempts && elapsed <= self.give_up_after
    }
}

/// What a refusal said about when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// No `Retry-After` header.
    Absent,
    /// A `Retry-After` header that is neither delta-seconds nor an HTTP date.
    Unparsable,
    /// Come back after this long (zero for a date already past).
    Wait(Duration),
}

impl RetryAfter {
    /// The header value as received, at `now` (for HTTP dates).
    pub fn parse(value: Option<&str>, now: SystemTime) -> Self {
        let Some(value) = value.map(str::trim) else { return Self::Absent };
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            // Delta-seconds: digits only; an absurd number waits "forever",
            // which the policy's time bound turns into giving up.
            return Self::Wait(value.parse().map_or(Duration::MAX, Duration::from_secs));
        }
        match httpdate::parse_http_date(value) {
            Ok(at) => Self::Wait(at.duration_since(now).unwrap_or(Duration::ZERO)),
            Err(_) => Self::Unparsable,
        }
    }

    /// The wait it asks for, if it asks for one.
    pub fn wait(self) -> Option<Duration> {
        match self {
            Self::Wait(wait) => Some(wait),
            Self::Absent | Self::Unparsable => None,
        }
    }
}

/// What to do after an answer with this HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: done.
    Accepted,
    /// Refused for now (408, 429, 5xx): send again later.
    Retry,
    /// Refused for good (any other status): sending again cannot help.
    Refused,
}

impl Verdict {
    /// The verdict for `status`.
    pub fn of(status: u16) -> Self {
        match status {
            200..=299 => Self::Accepted,
            408 | 429 | 500..=599 => Self::Retry,
            _ => Self::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_attempts: 5,
            give_up_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_backoff_window_doubles_from_the_base_up_to_the_cap() {
        let p = policy();
        let windows: Vec<u128> = (0..10).map(|n| p.window(n).as_millis()).collect();
        assert_eq!(windows, [100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000, 10_000]);
        assert_eq!(p.window(40), p.cap, "no overflow far along the schedule");
        assert_eq!(p.window(u32::MAX), p.cap);
    }

    #[test]
    fn full_jitter_spreads_the_wait_over_the_whole_window() {
        let p = policy();
        assert_eq!(p.delay(3, None, 0.0), Duration::ZERO);
        assert_eq!(p.delay(3, None, 0.5), Duration::from_millis(400));
        assert!(p.delay(3, None, 0.999_999) < p.window(3));
        assert_eq!(p.delay(20, None, 0.25), Duration::from_millis(2_500), "a quarter of the cap");
    }

    #[test]
    fn retry_after_is_a_floor_the_jitter_adds_to() {
        let p = policy();
        let server = Some(Duration::from_secs(1));
        assert_eq!(p.delay(0, server, 0.0), Duration::from_secs(1), "never earlier than Retry-After");
        assert_eq!(p.delay(0, server, 0.5), Duration::from_millis(1_050));
        assert_eq!(p.delay(4, server, 0.5), Duration::from_millis(1_800));
        assert_eq!(p.delay(0, Some(Duration::MAX), 0.5), Duration::MAX, "saturates, never wraps");
    }

    #[test]
    fn retrying_stops_after_max_attempts_or_give_up_after() {
        let p = policy();
        assert!(p.may_retry(1, Duration::ZERO));
        assert!(p.may_retry(4, Duration::from_secs(60)));
        assert!(!p.may_retry(5, Duration::ZERO), "five sends in all, the first included");
        assert!(!p.may_retry(1, Duration::from_millis(60_001)));
    }

    #[test]
    fn retry_after_parses_delta_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let parse = |v: &str| RetryAfter::parse(Some(v), now);
        assert_eq!(parse("1"), RetryAfter::Wait(Duration::from_secs(1)));
        assert_eq!(parse(" 120 "), RetryAfter::Wait(Duration::from_secs(120)));
        assert_eq!(parse("0"), RetryAfter::Wait(Duration::ZERO));
        assert_eq!(parse("99999999999999999999999"), RetryAfter::Wait(Duration::MAX));
        // The three date formats of RFC 9110 section 5.6.7.
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:40 GMT"), RetryAfter::Wait(Duration::from_secs(3)));
        assert_eq!(parse("Sunday, 06-Nov-94 08:50:37 GMT"), RetryAfter::Wait(Duration::from_secs(60)));
        assert_eq!(parse("Sun Nov  6 08:49:38 1994"), RetryAfter::Wait(Duration::from_secs(1)));
        assert_eq!(parse("Sun, 06 Nov 1994 08:00:00 GMT"), RetryAfter::Wait(Duration::ZERO), "a past date");
        for bad in ["", "-1", "1.5", "soon", "1s", "Sun, 06 Nov 1994"] {
            assert_eq!(parse(bad), RetryAfter::Unparsable, "{bad:?}");
        }
        assert_eq!(RetryAfter::parse(None, now), RetryAfter::Absent);
        assert_eq!(parse("soon").wait(), None);
        assert_eq!(parse("2").wait(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn only_temporary_refusals_are_retried() {
        assert_eq!(Verdict::of(202), Verdict::Accepted);
        for status in [408, 429, 500, 502, 503, 504] {
            assert_eq!(Verdict::of(status), Verdict::Retry, "{status}");
        }
        for status in [301, 400, 401, 404, 413, 415] {
            assert_eq!(Verdict::of(status), Verdict::Refused, "{status}");
        }
    }
}
