//! The video identifier: 1 to 128 characters of `[A-Za-z0-9_-]`.

use std::fmt;
use std::sync::Arc;

/// Longest accepted video id, in characters.
pub const MAX_VIDEO_ID_LEN: usize = 128;

/// Why a string is not a valid video id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VideoIdError {
    /// The id is the empty string.
    #[error("must not be empty")]
    Empty,
    /// The id is longer than [`MAX_VIDEO_ID_LEN`].
    #[error("must be at most {MAX_VIDEO_ID_LEN} characters, got {0}")]
    TooLong(usize),
    /// The id contains a character outside `[A-Za-z0-9_-]`.
    #[error("may contain only A-Z, a-z, 0-9, '_' and '-' (found {0:?} at position {1})")]
    BadChar(char, usize),
}

/// A validated video id. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VideoId(Arc<str>);

impl VideoId {
    /// Validates `raw` and wraps it.
    pub fn parse(raw: &str) -> Result<Self, VideoIdError> {
        validate(raw)?;
        Ok(Self(Arc::from(raw)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `raw` is a valid video id, checked on its bytes (valid ids are
/// ASCII): the decoder's hot path, which needs no reason.
#[inline]
pub fn valid_bytes(raw: &[u8]) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_VIDEO_ID_LEN
        && raw.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

/// Checks `raw` against the video-id rules without allocating.
pub fn validate(raw: &str) -> Result<(), VideoIdError> {
    if raw.is_empty() {
        return Err(VideoIdError::Empty);
    }
    if raw.len() > MAX_VIDEO_ID_LEN {
        return Err(VideoIdError::TooLong(raw.chars().count()));
    }
    // Fast path on bytes; the char walk below only runs to name the offending character.
    if valid_bytes(raw.as_bytes()) {
        return Ok(());
    }
    match raw.char_indices().find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
        Some((position, c)) => Err(VideoIdError::BadChar(c, position)),
        None => Ok(()),
    }
}

impl fmt::Display for VideoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for VideoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VideoId({:?})", &*self.0)
    }
}

impl AsRef<str> for VideoId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_full_alphabet_up_to_128_chars() {
        assert!(VideoId::parse("abc_XYZ-019").is_ok());
        assert!(VideoId::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(VideoId::parse(""), Err(VideoIdError::Empty));
        assert_eq!(VideoId::parse(&"a".repeat(129)), Err(VideoIdError::TooLong(129)));
        assert_eq!(VideoId::parse("ab c"), Err(VideoIdError::BadChar(' ', 2)));
        assert_eq!(VideoId::parse("a~1"), Err(VideoIdError::BadChar('~', 1)));
        assert!(matches!(VideoId::parse("vidé"), Err(VideoIdError::BadChar('é', 3))));
    }
}
