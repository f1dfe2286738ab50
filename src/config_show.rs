//! `tally config`: the effective configuration as TOML that `tally --config`
//! reads back, every secret redacted.
//!
//! What is redacted, and why each rule exists:
//! - [`tally_config::Secret`] values (API keys, the Scylla password, object
//!   store options) serialize as `***` themselves, wherever they are;
//! - `kafka.properties` and `kafka.consumer-properties` are free-form
//!   librdkafka settings: values whose key names a credential
//!   ([`is_sensitive_key`]: `sasl.password`, `ssl.key.password`,
//!   `sasl.oauthbearer.client.secret`, `sasl.jaas.config`, ...) become `***`;
//! - `cache.redis-url` and `traces.otlp-endpoint`: the password of their
//!   user-info part becomes `***`.
//!
//! A redacted file still parses (`***` is a string), so it can be diffed and
//! shared; it cannot stand in for the original.
//!
//! The counter's section is serialized here ([`serialize_counter`]) rather
//! than by a derive in its crate; destructuring every field keeps it
//! complete: a new field fails to compile until it is printed.

use serde::ser::{SerializeStruct, Serializer};
use tally_counter::CounterConfig;

use crate::config::TallyConfig;

/// What a redacted value reads.
pub const REDACTED: &str = "***";

/// Why the configuration could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    /// The configuration does not map onto TOML (a bug: every section is TOML).
    #[error("cannot render the configuration as TOML: {0}")]
    Toml(#[from] toml::ser::Error),
}

/// The configuration as TOML, secrets redacted.
pub fn redacted_toml(config: &TallyConfig) -> Result<String, ShowError> {
    let mut value = toml::Table::try_from(config)?;
    if let Some(kafka) = value.get_mut("kafka").and_then(toml::Value::as_table_mut) {
        for map in ["properties", "consumer-properties"] {
            if let Some(properties) = kafka.get_mut(map).and_then(toml::Value::as_table_mut) {
                for (key, value) in properties.iter_mut() {
                    if is_sensitive_key(key) {
                        *value = toml::Value::String(REDACTED.into());
                    }
                }
            }
        }
    }
    for (section, key) in [("cache", "redis-url"), ("traces", "otlp-endpoint")] {
        if let Some(url) = value.get_mut(section).and_then(|c| c.get_mut(key)) {
            if let Some(text) = url.as_str() {
                *url = toml::Value::String(redact_url_password(text));
            }
        }
    }
    Ok(toml::to_string_pretty(&value)?)
}

/// Whether a librdkafka property holds a credential. Errs on the side of
/// hiding: a redacted harmless value costs less than a printed password.
pub fn is_sensitive_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "token", "credential", "key.pem", "private"].iter().any(|word| key.contains(word))
}

/// `scheme://user:password@host/...` with the password replaced by
/// [`REDACTED`]; anything else unchanged.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    if user.len() == userinfo.len() && !userinfo.is_empty() {
        // `redis://secret@host`: Redis reads a lone user-info as the password.
        return format!("{scheme}://{REDACTED}{}", &rest[at..]);
    }
    format!("{scheme}://{user}:{REDACTED}{}", &rest[at..])
}

/// Serializes the `[counter]` section (its crate derives no `Serialize`).
pub fn serialize_counter<S: Serializer>(config: &CounterConfig, serializer: S) -> Result<S::Ok, S::Error> {
    use humantime_serde::Serde as Human;
    // No `..`: a field added to CounterConfig must be added here.
    let CounterConfig {
        admin_listen,
        group_id,
        group_instance_id,
        flush_interval,
        max_rows_per_flush,
        max_buffered_rows,
        chunk_rows,
        dedup_window,
        dedup_max_entries,
        max_clock_skew,
        allowed_lateness,
        dlq_max_ratio,
        dlq_min_records,
        dlq_max_consecutive,
        delivery_timeout,
        lag_interval,
        uniques_lg_k,
        chunk_sketch_bytes,
        trending_lg_max_map_size,
    } = config;
    let mut s = serializer.serialize_struct("CounterConfig", 19)?;
    s.serialize_field("admin-listen", admin_listen)?;
    s.serialize_field("group-id", group_id)?;
    s.serialize_field("group-instance-id", group_instance_id)?;
    s.serialize_field("flush-interval", &Human::from(*flush_interval))?;
    s.serialize_field("max-rows-per-flush", max_rows_per_flush)?;
    s.serialize_field("max-buffered-rows", max_buffered_rows)?;
    s.serialize_field("chunk-rows", chunk_rows)?;
    s.serialize_field("dedup-window", &Human::from(*dedup_window))?;
    s.serialize_field("dedup-max-entries", dedup_max_entries)?;
    s.serialize_field("max-clock-skew", &Human::from(*max_clock_skew))?;
    s.serialize_field("allowed-lateness", &Human::from(*allowed_lateness))?;
    s.serialize_field("dlq-max-ratio", dlq_max_ratio)?;
    s.serialize_field("dlq-min-records", dlq_min_records)?;
    s.serialize_field("dlq-max-consecutive", dlq_max_consecutive)?;
    s.serialize_field("delivery-timeout", &Human::from(*delivery_timeout))?;
    s.serialize_field("lag-interval", &Human::from(*lag_interval))?;
    s.serialize_field("uniques-lg-k", uniques_lg_k)?;
    s.serialize_field("chunk-sketch-bytes", chunk_sketch_bytes)?;
    s.serialize_field("trending-lg-max-map-size", trending_lg_max_map_size)?;
    s.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted_and_the_rest_kept() {
        assert_eq!(redact_url_password("redis://app:hunter2@redis:6379/0"), "redis://app:***@redis:6379/0");
        assert_eq!(redact_url_password("redis://:hunter2@redis:6379/"), "redis://:***@redis:6379/");
        assert_eq!(redact_url_password("rediss://hunter2@redis/"), "rediss://***@redis/");
        assert_eq!(redact_url_password("redis://redis:6379/"), "redis://redis:6379/");
        assert_eq!(redact_url_password(""), "");
    }

    #[test]
    fn credential_properties_are_sensitive_and_plain_ones_not() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "sasl.jaas.config",
            "ssl.key.pem",
            "SASL.PASSWORD",
        ] {
            assert!(is_sensitive_key(key), "{key}");
        }
        for key in ["security.protocol", "sasl.username", "sasl.mechanism", "session.timeout.ms", "ssl.ca.location"] {
            assert!(!is_sensitive_key(key), "{key}");
        }
    }
}
