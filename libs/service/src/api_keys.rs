//! API keys: `Authorization: Bearer <key>` (or `X-Api-Key: <key>`), compared
//! in constant time against every configured key. Keys are never logged;
//! the key's name is what appears in logs and metrics.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;
use tally_config::Secret;

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<(String, Vec<u8>)>,
}

/// The outcome of authenticating a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No keys are configured: the API is open.
    Anonymous,
    /// A configured key, by name.
    Key(String),
}

impl ApiKeys {
    /// Keys from configuration: `(name, key)` pairs.
    pub fn new<'a>(config: impl IntoIterator<Item = (&'a str, &'a Secret)>) -> Self {
        Self {
            keys: config.into_iter().map(|(name, key)| (name.to_owned(), key.expose().as_bytes().to_vec())).collect(),
        }
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Identifies the caller; `None` when keys are configured and the request
    /// carries none of them.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<Caller> {
        if self.keys.is_empty() {
            return Some(Caller::Anonymous);
        }
        let presented = presented_key(headers)?;
        let mut found = None;
        // Check every key, so the time taken does not depend on which one matched.
        for (name, key) in &self.keys {
            if bool::from(key.as_slice().ct_eq(presented)) {
                found = Some(name);
            }
        }
        found.map(|name| Caller::Key(name.clone()))
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.as_bytes();
        let prefix = b"Bearer ";
        if value.len() > prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix) {
            return Some(&value[prefix.len()..]);
        }
        return None;
    }
    headers.get("x-api-key").map(|v| v.as_bytes())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn keys() -> ApiKeys {
        let key = Secret::new("s3cret");
        ApiKeys::new([("mobile", &key)])
    }

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn bearer_and_x_api_key_identify_the_key_by_name() {
        let expected = Some(Caller::Key("mobile".into()));
        assert_eq!(keys().authenticate(&headers("authorization", "Bearer s3cret")), expected);
        assert_eq!(keys().authenticate(&headers("authorization", "bearer s3cret")), expected);
        assert_eq!(keys().authenticate(&headers("x-api-key", "s3cret")), expected);
    }

    #[test]
    fn missing_or_wrong_keys_are_refused_and_no_keys_means_open() {
        assert_eq!(keys().authenticate(&HeaderMap::new()), None);
        assert_eq!(keys().authenticate(&headers("authorization", "Bearer s3cre")), None);
        assert_eq!(keys().authenticate(&headers("authorization", "Basic s3cret")), None);
        assert_eq!(ApiKeys::default().authenticate(&HeaderMap::new()), Some(Caller::Anonymous));
    }
}
