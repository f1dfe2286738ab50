//! Event time: parsing, clocks and minute buckets.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds in one minute bucket.
pub const MINUTE_MS: i64 = 60_000;

/// Earliest event time accepted (2000-01-01T00:00:00Z): anything before is a
/// client bug (seconds sent as milliseconds, a zeroed clock), not a view.
pub const EARLIEST_TS_MS: i64 = 946_684_800_000;

/// Why a timestamp was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// Neither an RFC 3339 string nor an integer.
    #[error("must be an RFC 3339 string or integer epoch milliseconds")]
    WrongType,
    /// A string that is not RFC 3339.
    #[error("is not an RFC 3339 date-time: {0}")]
    NotRfc3339(String),
    /// Before [`EARLIEST_TS_MS`].
    #[error("is before 2000-01-01T00:00:00Z (epoch milliseconds expected, got {0})")]
    TooEarly(i64),
    /// Further in the future than the allowed clock skew.
    #[error("is {ahead_ms} ms in the future; at most {max_ms} ms of clock skew is allowed")]
    InFuture {
        /// How far ahead of the gateway clock.
        ahead_ms: i64,
        /// The configured bound.
        max_ms: i64,
    },
}

/// Parses an RFC 3339 date-time to epoch milliseconds.
pub fn parse_rfc3339_ms(raw: &str) -> Result<i64, TimestampError> {
    let parsed = OffsetDateTime::parse(raw, &Rfc3339).map_err(|e| TimestampError::NotRfc3339(e.to_string()))?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| TimestampError::NotRfc3339("out of range".into()))
}

/// Checks an event time against the accepted range around `now_ms`.
pub fn check_range(ts_ms: i64, now_ms: i64, max_future_skew_ms: i64) -> Result<i64, TimestampError> {
    if ts_ms < EARLIEST_TS_MS {
        return Err(TimestampError::TooEarly(ts_ms));
    }
    let ahead_ms = ts_ms.saturating_sub(now_ms);
    if ahead_ms > max_future_skew_ms {
        return Err(TimestampError::InFuture { ahead_ms, max_ms: max_future_skew_ms });
    }
    Ok(ts_ms)
}

/// Start of the minute bucket holding `ts_ms`.
pub fn minute_bucket(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MINUTE_MS) * MINUTE_MS
}

/// Wall-clock now, epoch milliseconds.
pub fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Formats epoch milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn format_rfc3339_ms(ts_ms: i64) -> String {
    let nanos = i128::from(ts_ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ts_ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_with_offsets_and_fractions() {
        assert_eq!(parse_rfc3339_ms("2026-11-22T10:00:00Z"), Ok(1_795_341_600_000));
        assert_eq!(parse_rfc3339_ms("2026-11-22T11:00:00.250+01:00"), Ok(1_795_341_600_250));
        assert!(matches!(parse_rfc3339_ms("2026-11-22 10:00"), Err(TimestampError::NotRfc3339(_))));
        assert!(matches!(parse_rfc3339_ms("yesterday"), Err(TimestampError::NotRfc3339(_))));
    }

    #[test]
    fn range_check_rejects_ancient_and_future_times() {
        let now = 1_795_341_600_000;
        assert_eq!(check_range(now + 1_000, now, 5_000), Ok(now + 1_000));
        assert_eq!(check_range(now - 86_400_000, now, 5_000), Ok(now - 86_400_000));
        assert_eq!(
            check_range(now + 6_000, now, 5_000),
            Err(TimestampError::InFuture { ahead_ms: 6_000, max_ms: 5_000 })
        );
        assert_eq!(check_range(1_795_341_600, now, 5_000), Err(TimestampError::TooEarly(1_795_341_600)));
    }

    #[test]
    fn minute_buckets_floor_to_the_minute() {
        assert_eq!(minute_bucket(1_795_341_659_999), 1_795_341_600_000);
        assert_eq!(minute_bucket(1_795_341_660_000), 1_795_341_660_000);
        assert_eq!(format_rfc3339_ms(1_795_341_600_250), "2026-11-22T10:00:00.25Z");
    }
}
