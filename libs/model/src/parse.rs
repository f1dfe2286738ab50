//! Request bodies to validated events, all or nothing.
//!
//! A body is one JSON object, a JSON array of objects, or NDJSON (one object a
//! line). Every event is validated; if any is invalid the whole body is
//! rejected and every problem is reported with the index of its event, so a
//! client can fix its batch in one round trip.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{EventId, ViewEvent, MAX_VIEWER_ID_LEN};
use crate::timestamp::{check_range, parse_rfc3339_ms};
use crate::video_id::VideoId;

/// Most per-event errors kept in one report; the total is still counted.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// How the body encodes its events (from the request's content type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json`: one object or an array of objects.
    Json,
    /// `application/x-ndjson`: one object a line.
    Ndjson,
}

/// Bounds applied while parsing.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most events in one body.
    pub max_events: usize,
    /// How far an event time may lie ahead of the gateway clock, in milliseconds.
    pub max_future_skew_ms: i64,
    /// Largest `attributes` object, in bytes of compact JSON.
    pub max_attributes_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_events: 10_000, max_future_skew_ms: 300_000, max_attributes_bytes: 1024 }
    }
}

/// One problem with one event of a body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventError {
    /// Zero-based position of the event in the body.
    pub index: usize,
    /// The offending field, when the problem is a field's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    /// What is wrong, for a human.
    pub message: String,
}

/// Why a body was rejected as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseFailure {
    /// The body holds no event at all.
    #[error("the body holds no events")]
    Empty,
    /// The body is not JSON of the expected shape.
    #[error("the body is not valid JSON: {0}")]
    Malformed(String),
    /// More events than allowed in one request.
    #[error("the body holds {got} events; at most {max} are allowed per request")]
    TooManyEvents {
        /// Events found.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// At least one event is invalid; nothing was accepted.
    #[error("{total} of {events} events are invalid; nothing was accepted")]
    Invalid {
        /// The first [`MAX_REPORTED_ERRORS`] problems.
        errors: Vec<EventError>,
        /// All problems found.
        total: usize,
        /// Events in the body.
        events: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent<'a> {
    #[serde(borrow, default)]
    video_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    viewer_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    attributes: Option<&'a RawValue>,
}

/// Parses and validates a whole body. `now_ms` is the receive time: the
/// default event time, the reference for the future-skew check and the
/// time part of assigned event ids.
pub fn parse_events(
    body: &[u8],
    format: BodyFormat,
    limits: &Limits,
    now_ms: i64,
) -> Result<Vec<ViewEvent>, ParseFailure> {
    let items = split_items(body, format, limits)?;
    let mut events = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    let mut total = 0;
    let events_in_body = items.len();
    for (index, item) in items.into_iter().enumerate() {
        let outcome = item.and_then(|raw| validate(raw, limits, now_ms));
        match outcome {
            Ok(event) => events.push(event),
            Err(problem) => {
                total += 1;
                if errors.len() < MAX_REPORTED_ERRORS {
                    errors.push(EventError { index, field: problem.0, message: problem.1 });
                }
            }
        }
    }
    if total > 0 {
        return Err(ParseFailure::Invalid { errors, total, events: events_in_body });
    }
    Ok(events)
}

type Problem = (Option<&'static str>, String);

fn split_items<'a>(
    body: &'a [u8],
    format: BodyFormat,
    limits: &Limits,
) -> Result<Vec<Result<RawEvent<'a>, Problem>>, ParseFailure> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let Some(&first) = first else {
        return Err(ParseFailure::Empty);
    };
    match format {
        BodyFormat::Json if first == b'[' => {
            let items: Vec<&RawValue> =
                serde_json::from_slice(body).map_err(|e| ParseFailure::Malformed(e.to_string()))?;
            if items.is_empty() {
                return Err(ParseFailure::Empty);
            }
            check_count(items.len(), limits)?;
            Ok(items.into_iter().map(|raw| decode_object(raw.get().as_bytes())).collect())
        }
        BodyFormat::Json => {
            // A single object must be syntactically valid as a whole: there is no
            // second event to report beside it.
            serde_json::from_slice::<&RawValue>(body).map_err(|e| ParseFailure::Malformed(e.to_string()))?;
            Ok(vec![decode_object(body)])
        }
        BodyFormat::Ndjson => {
            let lines: Vec<&[u8]> =
                body.split(|&b| b == b'\n').filter(|line| line.iter().any(|b| !b.is_ascii_whitespace())).collect();
            check_count(lines.len(), limits)?;
            Ok(lines.into_iter().map(decode_object).collect())
        }
    }
}

fn check_count(got: usize, limits: &Limits) -> Result<(), ParseFailure> {
    if got > limits.max_events {
        return Err(ParseFailure::TooManyEvents { got, max: limits.max_events });
    }
    Ok(())
}

fn decode_object(bytes: &[u8]) -> Result<RawEvent<'_>, Problem> {
    serde_json::from_slice::<RawEvent<'_>>(bytes).map_err(|e| {
        let text = e.to_string();
        let message = if e.is_syntax() || e.is_eof() {
            format!("not valid JSON: {text}")
        } else if text.starts_with("invalid type") {
            "each event must be a JSON object".to_owned()
        } else {
            text
        };
        (None, message)
    })
}

fn validate(raw: RawEvent<'_>, limits: &Limits, now_ms: i64) -> Result<ViewEvent, Problem> {
    let video_id = match raw.video_id {
        None => return Err((Some("video_id"), "is required".into())),
        Some(v) => {
            let text = string_field(v, "video_id")?;
            VideoId::parse(&text).map_err(|e| (Some("video_id"), e.to_string()))?
        }
    };
    let ts_ms = match raw.ts {
        None => now_ms,
        Some(v) => parse_ts(v, limits, now_ms).map_err(|m| (Some("ts"), m))?,
    };
    let event_id = match raw.event_id {
        None => EventId::generate(now_ms),
        Some(v) => {
            let text = string_field(v, "event_id")?;
            EventId::parse(&text).map_err(|e| (Some("event_id"), e.to_string()))?
        }
    };
    let viewer_id = match raw.viewer_id {
        None => None,
        Some(v) => {
            let text = string_field(v, "viewer_id")?;
            if text.is_empty() || text.len() > MAX_VIEWER_ID_LEN {
                return Err((Some("viewer_id"), format!("must be 1 to {MAX_VIEWER_ID_LEN} bytes")));
            }
            if text.chars().any(char::is_control) {
                return Err((Some("viewer_id"), "must not contain control characters".into()));
            }
            Some(Arc::from(text.as_ref()))
        }
    };
    let attributes = match raw.attributes {
        None => None,
        Some(v) => Some(parse_attributes(v, limits).map_err(|m| (Some("attributes"), m))?),
    };
    Ok(ViewEvent { video_id, ts_ms, event_id, viewer_id, attributes, received_ms: now_ms })
}

fn string_field<'a>(raw: &'a RawValue, field: &'static str) -> Result<Cow<'a, str>, Problem> {
    serde_json::from_str::<Cow<'a, str>>(raw.get()).map_err(|_| (Some(field), "must be a string".into()))
}

fn parse_ts(raw: &RawValue, limits: &Limits, now_ms: i64) -> Result<i64, String> {
    let text = raw.get();
    let ts_ms = if text.starts_with('"') {
        let s: Cow<'_, str> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        parse_rfc3339_ms(&s).map_err(|e| e.to_string())?
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        serde_json::from_str::<i64>(text)
            .map_err(|_| "must be integer epoch milliseconds (no fraction, no exponent)".to_owned())?
    } else {
        return Err("must be an RFC 3339 string or integer epoch milliseconds".into());
    };
    check_range(ts_ms, now_ms, limits.max_future_skew_ms).map_err(|e| e.to_string())
}

fn parse_attributes(raw: &RawValue, limits: &Limits) -> Result<Arc<str>, String> {
    if !raw.get().starts_with('{') {
        return Err("must be a JSON object".into());
    }
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    let compact = serde_json::to_string(&object).map_err(|e| e.to_string())?;
    if compact.len() > limits.max_attributes_bytes {
        return Err(format!(
            "must be at most {} bytes of compact JSON, got {}",
            limits.max_attributes_bytes,
            compact.len()
        ));
    }
    Ok(Arc::from(compact))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_341_600_000;

    fn parse(body: &str, format: BodyFormat) -> Result<Vec<ViewEvent>, ParseFailure> {
        parse_events(body.as_bytes(), format, &Limits::default(), NOW)
    }

    fn errors(body: &str, format: BodyFormat) -> Vec<EventError> {
        match parse(body, format) {
            Err(ParseFailure::Invalid { errors, .. }) => errors,
            other => panic!("expected per-event errors, got {other:?}"),
        }
    }

    #[test]
    fn one_object_array_and_ndjson_parse_to_the_same_events() {
        let one = parse(r#"{"video_id":"v1","ts":1795341500000,"event_id":"e1"}"#, BodyFormat::Json).unwrap();
        let array =
            parse(r#"[{"video_id":"v1","ts":"2026-11-22T09:58:20Z","event_id":"e1"}]"#, BodyFormat::Json).unwrap();
        let ndjson =
            parse("\n{\"video_id\":\"v1\",\"ts\":1795341500000,\"event_id\":\"e1\"}\r\n\n", BodyFormat::Ndjson)
                .unwrap();
        assert_eq!(one, array);
        assert_eq!(one, ndjson);
        assert_eq!(one[0].ts_ms, 1_795_341_500_000);
        assert_eq!(one[0].received_ms, NOW);
    }

    #[test]
    fn missing_ts_and_event_id_get_defaults() {
        let events = parse(r#"[{"video_id":"v1"},{"video_id":"v1"}]"#, BodyFormat::Json).unwrap();
        assert_eq!(events[0].ts_ms, NOW);
        assert_ne!(events[0].event_id, events[1].event_id, "assigned ids are unique");
    }

    #[test]
    fn every_invalid_event_is_reported_with_its_index_and_field() {
        let body =
            r#"[{"video_id":"ok"},{"video_id":""},{"video_id":"v","ts":1.5},{"ts":1},{"video_id":"v","colour":"red"}]"#;
        let errors = errors(body, BodyFormat::Json);
        let found: Vec<(usize, Option<&str>)> = errors.iter().map(|e| (e.index, e.field)).collect();
        assert_eq!(found, vec![(1, Some("video_id")), (2, Some("ts")), (3, Some("video_id")), (4, None)]);
        assert!(errors[3].message.contains("unknown field `colour`"), "{}", errors[3].message);
    }

    #[test]
    fn attributes_must_be_a_small_object_and_are_stored_compact() {
        let events = parse(r#"{"video_id":"v","attributes": { "a" : 1 }}"#, BodyFormat::Json).unwrap();
        assert_eq!(events[0].attributes.as_deref(), Some(r#"{"a":1}"#));
        let big = format!(r#"{{"video_id":"v","attributes":{{"a":"{}"}}}}"#, "x".repeat(2000));
        assert_eq!(errors(&big, BodyFormat::Json)[0].field, Some("attributes"));
        assert_eq!(errors(r#"{"video_id":"v","attributes":[1]}"#, BodyFormat::Json)[0].field, Some("attributes"));
    }

    #[test]
    fn whole_body_failures_are_distinguished() {
        assert_eq!(parse("  ", BodyFormat::Json), Err(ParseFailure::Empty));
        assert_eq!(parse("[]", BodyFormat::Json), Err(ParseFailure::Empty));
        assert!(matches!(parse("[{]", BodyFormat::Json), Err(ParseFailure::Malformed(_))));
        assert!(matches!(parse(r#"{"video_id":"v"} trailing"#, BodyFormat::Json), Err(ParseFailure::Malformed(_))));
        let limits = Limits { max_events: 2, ..Limits::default() };
        let three = r#"[{"video_id":"a"},{"video_id":"b"},{"video_id":"c"}]"#;
        assert_eq!(
            parse_events(three.as_bytes(), BodyFormat::Json, &limits, NOW),
            Err(ParseFailure::TooManyEvents { got: 3, max: 2 })
        );
    }

    #[test]
    fn a_broken_ndjson_line_is_reported_by_index() {
        let errors = errors("{\"video_id\":\"a\"}\n{\"video_id\":\n{\"video_id\":\"c\"}\n", BodyFormat::Ndjson);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].index, 1);
        assert!(errors[0].message.starts_with("not valid JSON"), "{}", errors[0].message);
    }

    #[test]
    fn escaped_strings_are_decoded_before_validation() {
        let events = parse(r#"{"video_id":"v\u0031","event_id":"e\u002d1"}"#, BodyFormat::Json).unwrap();
        assert_eq!(events[0].video_id.as_str(), "v1");
        assert_eq!(events[0].event_id.as_str(), "e-1");
    }
}
