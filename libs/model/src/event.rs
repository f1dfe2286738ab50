//! The validated view event and its identifier.

use std::fmt;
use std::sync::Arc;

use crate::video_id::VideoId;

/// Longest accepted client-supplied event id, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 64;
/// Longest accepted viewer id, in bytes.
pub const MAX_VIEWER_ID_LEN: usize = 128;

/// Why a string is not a valid event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventIdError {
    /// The id is the empty string.
    #[error("must not be empty")]
    Empty,
    /// The id is longer than [`MAX_EVENT_ID_LEN`] bytes.
    #[error("must be at most {MAX_EVENT_ID_LEN} bytes, got {0}")]
    TooLong(usize),
    /// The id contains whitespace, a control character or non-ASCII.
    #[error("may contain only printable ASCII without spaces")]
    BadChar,
}

/// The idempotency key of one view: supplied by the client, or a ULID the
/// gateway assigns (unique and sortable by time).
///
/// Two events with the same id inside the dedup window are one view.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Arc<str>);

impl EventId {
    /// Validates a client-supplied id.
    pub fn parse(raw: &str) -> Result<Self, EventIdError> {
        if raw.is_empty() {
            return Err(EventIdError::Empty);
        }
        if raw.len() > MAX_EVENT_ID_LEN {
            return Err(EventIdError::TooLong(raw.len()));
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(EventIdError::BadChar);
        }
        Ok(Self(Arc::from(raw)))
    }

    /// A fresh ULID whose time part is `now_ms`.
    pub fn generate(now_ms: i64) -> Self {
        let millis = u64::try_from(now_ms).unwrap_or(0);
        let ulid = ulid::Ulid::from_parts(millis, rand_bits());
        Self(Arc::from(ulid.to_string()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn rand_bits() -> u128 {
    // ulid's generator draws from a thread-local CSPRNG; reuse it for the random part.
    ulid::Ulid::new().random()
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({:?})", &*self.0)
    }
}

/// One validated view of one video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEvent {
    /// Which video was watched.
    pub video_id: VideoId,
    /// Event time, epoch milliseconds (UTC).
    pub ts_ms: i64,
    /// Idempotency key.
    pub event_id: EventId,
    /// Who watched, when the client says so.
    pub viewer_id: Option<Arc<str>>,
    /// Free attributes: a compact JSON object, bounded in size.
    pub attributes: Option<Arc<str>>,
    /// When the gateway received the event, epoch milliseconds.
    pub received_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_validated() {
        assert!(EventId::parse("0b7c1a9e-1f2d-4c3b-9a8e-7d6c5b4a3f21").is_ok());
        assert_eq!(EventId::parse(""), Err(EventIdError::Empty));
        assert_eq!(EventId::parse(&"x".repeat(65)), Err(EventIdError::TooLong(65)));
        assert_eq!(EventId::parse("has space"), Err(EventIdError::BadChar));
        assert_eq!(EventId::parse("tab\t"), Err(EventIdError::BadChar));
    }

    #[test]
    fn generated_ids_are_unique_and_sort_by_time() {
        let early = EventId::generate(1_700_000_000_000);
        let late = EventId::generate(1_700_000_000_001);
        let twin = EventId::generate(1_700_000_000_000);
        assert_ne!(early, twin);
        assert!(early < late && twin < late);
        assert_eq!(early.as_str().len(), 26);
    }
}
