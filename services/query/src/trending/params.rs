//! The parameters of `GET /v1/trending`, checked.

use serde::Deserialize;
use tally_service::Problem;

use crate::api::bad_request;

/// Most videos one answer lists.
pub const MAX_LIMIT: usize = 1_000;

/// Videos listed when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 10;

/// The trailing period velocity compares a window against, ms.
pub const BASELINE_MS: i64 = 24 * 3_600_000;

/// Query string of a trending request, as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrendingQuery {
    /// `1h` or `24h`.
    pub window: String,
    /// How many videos, 1 to [`MAX_LIMIT`] ([`DEFAULT_LIMIT`] when absent).
    pub limit: Option<usize>,
    /// `views` (the default) or `velocity`.
    pub order: Option<String>,
}

/// How far back a trending answer looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last hour (60 minutes, the current one included).
    Hour,
    /// The last 24 hours (1,440 minutes, the current one included).
    Day,
}

impl Window {
    /// The window's length, ms.
    pub fn millis(self) -> i64 {
        match self {
            Self::Hour => 3_600_000,
            Self::Day => BASELINE_MS,
        }
    }

    /// Its name in requests and answers.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hour => "1h",
            Self::Day => "24h",
        }
    }
}

/// How the listed videos are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Most views in the window first.
    Views,
    /// The top videos by views, ranked by views in the window over their
    /// average views per window length in the 24 hours before it.
    Velocity,
}

impl Order {
    /// Its name in requests and answers.
    pub fn name(self) -> &'static str {
        match self {
            Self::Views => "views",
            Self::Velocity => "velocity",
        }
    }
}

/// A checked trending request: what an answer is cached under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrendingRequest {
    /// The window.
    pub window: Window,
    /// Videos to list.
    pub limit: usize,
    /// Ranking.
    pub order: Order,
}

impl TrendingRequest {
    /// Checks `query`: a 400 problem names what is wrong.
    pub fn parse(query: &TrendingQuery) -> Result<Self, Problem> {
        let window = match query.window.as_str() {
            "1h" => Window::Hour,
            "24h" => Window::Day,
            other => return Err(bad_request("invalid-trending", format!("`window` must be 1h or 24h, not {other:?}"))),
        };
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(bad_request("invalid-trending", format!("`limit` must be 1 to {MAX_LIMIT}, not {limit}")));
        }
        let order = match query.order.as_deref() {
            None | Some("views") => Order::Views,
            Some("velocity") => Order::Velocity,
            Some(other) => {
                return Err(bad_request(
                    "invalid-trending",
                    format!("`order` must be views or velocity, not {other:?}"),
                ))
            }
        };
        Ok(Self { window, limit, order })
    }

    /// The cache key of its answers.
    pub fn cache_key(&self) -> String {
        format!("trending:{}:{}:{}", self.window.name(), self.limit, self.order.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(window: &str, limit: Option<usize>, order: Option<&str>) -> Result<TrendingRequest, Problem> {
        TrendingRequest::parse(&TrendingQuery { window: window.into(), limit, order: order.map(Into::into) })
    }

    #[test]
    fn defaults_and_bounds_of_trending_parameters() {
        let request = parse("1h", None, None).unwrap();
        assert_eq!(request, TrendingRequest { window: Window::Hour, limit: DEFAULT_LIMIT, order: Order::Views });
        assert_eq!(parse("24h", Some(1_000), Some("velocity")).unwrap().cache_key(), "trending:24h:1000:velocity");
        for bad in [parse("2h", None, None), parse("1h", Some(0), None), parse("1h", Some(1_001), None)] {
            assert!(bad.is_err());
        }
        assert!(parse("1h", None, Some("random")).is_err());
    }
}
