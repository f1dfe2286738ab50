//! The record format of the `tally.views` topic, version 1.
//!
//! Binary, because the counter decodes millions of records a second and a
//! JSON parse would dominate its cost; versioned, because records outlive
//! releases. All integers are big-endian. Everything a consumer needs is in
//! the payload: record headers are deliberately unused on this hot topic.
//!
//! | bytes | field | notes |
//! |---|---|---|
//! | 1 | format version | `1` |
//! | 2 | salt | `u16`; `0` = not salted |
//! | 8 | `ts_ms` | `i64`, event time, epoch ms |
//! | 8 | `received_ms` | `i64`, gateway receive time, epoch ms |
//! | 1 + n | `video_id` | length `1..=128`, `[A-Za-z0-9_-]` |
//! | 1 + n | `event_id` | length `1..=64`, printable ASCII |
//! | 1 + n | `viewer_id` | length `0` = absent |
//! | 2 + n | `attributes` | `u16` length, `0` = absent; compact JSON object |
//!
//! A decoder rejects unknown versions, truncated records and trailing bytes:
//! such a record is dead-lettered, never guessed at.

use crate::event::ViewEvent;
use crate::salt::Salt;

/// The version this build writes.
pub const WIRE_VERSION: u8 = 1;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The record is empty.
    #[error("empty record")]
    Empty,
    /// Written by a format this build does not know.
    #[error("unsupported wire format version {0}")]
    UnsupportedVersion(u8),
    /// The record ends inside a field.
    #[error("record truncated in field {0}")]
    Truncated(&'static str),
    /// Bytes follow the last field.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// A field breaks the model's rules.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A decoded record, borrowing from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireView<'a> {
    /// The salt the gateway chose.
    pub salt: Salt,
    /// Event time, epoch ms.
    pub ts_ms: i64,
    /// Gateway receive time, epoch ms.
    pub received_ms: i64,
    /// Validated video id.
    pub video_id: &'a str,
    /// Idempotency key.
    pub event_id: &'a str,
    /// Viewer, when given.
    pub viewer_id: Option<&'a str>,
    /// Attributes as compact JSON, when given.
    pub attributes: Option<&'a str>,
}

/// Appends the record for `event` with `salt` to `out`.
pub fn encode(event: &ViewEvent, salt: Salt, out: &mut Vec<u8>) {
    let viewer = event.viewer_id.as_deref().unwrap_or("");
    let attributes = event.attributes.as_deref().unwrap_or("");
    out.reserve(24 + event.video_id.as_str().len() + event.event_id.as_str().len() + viewer.len() + attributes.len());
    out.push(WIRE_VERSION);
    out.extend_from_slice(&salt.0.to_be_bytes());
    out.extend_from_slice(&event.ts_ms.to_be_bytes());
    out.extend_from_slice(&event.received_ms.to_be_bytes());
    push_short(out, event.video_id.as_str());
    push_short(out, event.event_id.as_str());
    push_short(out, viewer);
    // The model bounds attributes far below u16::MAX; saturate rather than wrap.
    let len = u16::try_from(attributes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&attributes.as_bytes()[..usize::from(len)]);
}

fn push_short(out: &mut Vec<u8>, text: &str) {
    let len = u8::try_from(text.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(&text.as_bytes()[..usize::from(len)]);
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<WireView<'_>, WireError> {
    let mut cursor = Cursor { bytes, pos: 0 };
    let version = *bytes.first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    cursor.pos = 1;
    let salt = Salt(u16::from_be_bytes(cursor.array("salt")?));
    let ts_ms = i64::from_be_bytes(cursor.array("ts_ms")?);
    let received_ms = i64::from_be_bytes(cursor.array("received_ms")?);
    let video_id = cursor.video_id()?;
    let event_id = cursor.short_str("event_id")?;
    if event_id.is_empty() {
        return Err(WireError::InvalidField { field: "event_id", reason: "empty" });
    }
    let viewer_id = Some(cursor.short_str("viewer_id")?).filter(|v| !v.is_empty());
    let attributes_len = usize::from(u16::from_be_bytes(cursor.array("attributes")?));
    let attributes = Some(cursor.str_of(attributes_len, "attributes")?).filter(|a| !a.is_empty());
    if cursor.pos != bytes.len() {
        return Err(WireError::TrailingBytes(bytes.len() - cursor.pos));
    }
    Ok(WireView { salt, ts_ms, received_ms, video_id, event_id, viewer_id, attributes })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(len).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(WireError::Truncated(field))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let slice = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    #[inline]
    fn short_str(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let [len] = self.array::<1>(field)?;
        self.str_of(usize::from(len), field)
    }

    #[inline]
    fn str_of(&mut self, len: usize, field: &'static str) -> Result<&'a str, WireError> {
        let slice = self.take(len, field)?;
        // Absent optional fields are empty: no need to call the UTF-8 check.
        if slice.is_empty() {
            return Ok("");
        }
        std::str::from_utf8(slice).map_err(|_| WireError::InvalidField { field, reason: "not UTF-8" })
    }

    /// The video id, checked against the id rules on its bytes (valid ids
    /// are ASCII, hence UTF-8); a rejected one gets the same error as a
    /// UTF-8 check followed by the rules would give.
    #[inline]
    fn video_id(&mut self) -> Result<&'a str, WireError> {
        let [len] = self.array::<1>("video_id")?;
        let slice = self.take(usize::from(len), "video_id")?;
        let text = std::str::from_utf8(slice);
        match text {
            Ok(text) if crate::video_id::valid_bytes(slice) => Ok(text),
            Ok(_) => Err(WireError::InvalidField { field: "video_id", reason: "not a valid video id" }),
            Err(_) => Err(WireError::InvalidField { field: "video_id", reason: "not UTF-8" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;
    use crate::video_id::VideoId;
    use std::sync::Arc;

    fn sample() -> ViewEvent {
        ViewEvent {
            video_id: VideoId::parse("video-1").unwrap(),
            ts_ms: 1_795_341_600_123,
            event_id: EventId::parse("evt-42").unwrap(),
            viewer_id: Some(Arc::from("viewer-7")),
            attributes: Some(Arc::from(r#"{"country":"NL"}"#)),
            received_ms: 1_795_341_600_200,
        }
    }

    #[test]
    fn encode_then_decode_round_trips_every_field() {
        let mut buf = Vec::new();
        encode(&sample(), Salt(17), &mut buf);
        let view = decode(&buf).unwrap();
        assert_eq!(view.salt, Salt(17));
        assert_eq!(view.ts_ms, 1_795_341_600_123);
        assert_eq!(view.received_ms, 1_795_341_600_200);
        assert_eq!(view.video_id, "video-1");
        assert_eq!(view.event_id, "evt-42");
        assert_eq!(view.viewer_id, Some("viewer-7"));
        assert_eq!(view.attributes, Some(r#"{"country":"NL"}"#));
    }

    #[test]
    fn optional_fields_round_trip_as_absent() {
        let event = ViewEvent { viewer_id: None, attributes: None, ..sample() };
        let mut buf = Vec::new();
        encode(&event, Salt(0), &mut buf);
        let view = decode(&buf).unwrap();
        assert_eq!((view.viewer_id, view.attributes), (None, None));
    }

    #[test]
    fn damaged_records_are_rejected_not_guessed() {
        let mut buf = Vec::new();
        encode(&sample(), Salt(0), &mut buf);
        assert_eq!(decode(&[]), Err(WireError::Empty));
        assert_eq!(decode(&[9, 0, 0]), Err(WireError::UnsupportedVersion(9)));
        assert!(matches!(decode(&buf[..buf.len() - 1]), Err(WireError::Truncated("attributes"))));
        let mut trailing = buf.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(WireError::TrailingBytes(1)));
        let mut bad_id = buf.clone();
        bad_id[20] = b' ';
        assert!(matches!(decode(&bad_id), Err(WireError::InvalidField { field: "video_id", .. })));
        assert!(decode(b"{\"video_id\":\"v\"}").is_err(), "JSON is not a v1 record");
    }

    #[test]
    fn a_bad_video_id_is_named_for_what_is_wrong_with_it() {
        let mut buf = Vec::new();
        encode(&sample(), Salt(0), &mut buf);
        // "video-1" starts at byte 20 (after version, salt, two times and its length).
        let mut not_utf8 = buf.clone();
        not_utf8[20] = 0xff;
        assert_eq!(decode(&not_utf8), Err(WireError::InvalidField { field: "video_id", reason: "not UTF-8" }));
        let mut not_an_id = buf.clone();
        not_an_id[20..22].copy_from_slice("é".as_bytes());
        assert_eq!(
            decode(&not_an_id),
            Err(WireError::InvalidField { field: "video_id", reason: "not a valid video id" })
        );
        let mut empty_viewer = Vec::new();
        encode(&ViewEvent { viewer_id: Some(Arc::from("")), ..sample() }, Salt(0), &mut empty_viewer);
        assert_eq!(decode(&empty_viewer).map(|v| v.viewer_id), Ok(None), "an empty viewer is absent");
    }
}
