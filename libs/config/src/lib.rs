//! Layered configuration: embedded defaults, then a TOML file, then `TALLY_`
//! environment variables, then `--set key=value` flags. Later layers win.
//!
//! Keys are kebab-case (`ack-timeout = "5s"`); durations are human-readable
//! (`"250ms"`, `"10s"`, `"7d"`). Every configuration struct denies unknown
//! fields, so a typo fails start-up with the key and where it came from,
//! instead of silently running on a default.
//!
//! Environment variables name a path with `__` between sections and `_` for
//! the dashes inside a key: `TALLY_INGEST__ACK_TIMEOUT=2s` sets
//! `ingest.ack-timeout`. Only variables with a `__` are configuration; the
//! others (`TALLY_SCYLLA_URI` for tests, say) are left alone. Free-form maps
//! declared [`LiteralKeys`] take their keys literally, with `_` standing for
//! the map's own separator: `TALLY_KAFKA__PROPERTIES__SASL_PASSWORD` sets
//! `kafka.properties."sasl.password"` ([`env`]).
//!
//! # Layout
//!
//! - this file: [`load`], [`load_with`] and their [`ConfigError`];
//! - [`env`]: the `TALLY_` environment layer and its literal-key maps;
//! - [`secret`]: [`Secret`], a string that never shows in logs, `Debug` or
//!   a serialized configuration.

pub mod env;
pub mod secret;

pub use env::{LiteralKeys, TallyEnv};
pub use secret::Secret;

use std::path::Path;

use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use figment::Figment;
use serde::de::DeserializeOwned;

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--set` flag is not `key=value`.
    #[error("flag --set {0:?} is not of the form key=value")]
    BadOverride(String),
    /// A file that was asked for does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(String),
    /// A layer holds an unknown key, a wrong type or a bad value.
    #[error("invalid configuration: {0}")]
    Invalid(Box<figment::Error>),
}

/// The environment-variable prefix of every setting.
pub const ENV_PREFIX: &str = "TALLY_";

/// Loads `T` from its defaults (`T`'s `#[serde(default)]`), the optional
/// `file`, the process environment and the `overrides` (`key.path=value`).
pub fn load<T: DeserializeOwned>(file: Option<&Path>, overrides: &[String]) -> Result<T, ConfigError> {
    load_with(file, overrides, &[])
}

/// [`load`], with the maps in `literal` taking their keys literally from
/// environment variables.
pub fn load_with<T: DeserializeOwned>(
    file: Option<&Path>,
    overrides: &[String],
    literal: &'static [LiteralKeys],
) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.display().to_string()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(TallyEnv::new(ENV_PREFIX, literal));
    for item in overrides {
        let (key, raw) = item.split_once('=').ok_or_else(|| ConfigError::BadOverride(item.clone()))?;
        let value: Value = raw.parse().unwrap_or_else(|never| match never {});
        figment = figment.merge(Serialized::default(key.trim(), value));
    }
    figment.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API returns figment::Error
mod tests {
    use std::time::Duration;

    use figment::Jail;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
    struct Section {
        #[serde(with = "humantime_serde")]
        ack_timeout: Duration,
        max_events: u64,
    }

    impl Default for Section {
        fn default() -> Self {
            Self { ack_timeout: Duration::from_secs(5), max_events: 10 }
        }
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
    struct Root {
        ingest: Section,
    }

    #[test]
    fn defaults_apply_when_no_layer_sets_anything() {
        Jail::expect_with(|_| {
            let root: Root = load(None, &[]).map_err(|e| e.to_string())?;
            assert_eq!(root, Root::default());
            Ok(())
        });
    }

    #[test]
    fn file_then_env_then_flags_override_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file("tally.toml", "[ingest]\nack-timeout = \"250ms\"\nmax-events = 1\n")?;
            jail.set_env("TALLY_INGEST__MAX_EVENTS", "2");
            jail.set_env("TALLY_SCYLLA_URI", "not configuration");
            let root: Root = load(Some(Path::new("tally.toml")), &[]).map_err(|e| e.to_string())?;
            assert_eq!(root.ingest, Section { ack_timeout: Duration::from_millis(250), max_events: 2 });
            let flagged: Root =
                load(Some(Path::new("tally.toml")), &["ingest.max-events=3".into()]).map_err(|e| e.to_string())?;
            assert_eq!(flagged.ingest.max_events, 3);
            Ok(())
        });
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
    struct WithMap {
        kafka: KafkaLike,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
    struct KafkaLike {
        properties: std::collections::BTreeMap<String, String>,
    }

    #[test]
    fn environment_variables_set_dotted_keys_of_literal_maps_beside_the_file() {
        const MAPS: &[LiteralKeys] = &[LiteralKeys { path: "kafka.properties", underscore: '.' }];
        Jail::expect_with(|jail| {
            jail.create_file("tally.toml", "[kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n")?;
            jail.set_env("TALLY_KAFKA__PROPERTIES__SASL_PASSWORD", "007");
            let loaded: WithMap = load_with(Some(Path::new("tally.toml")), &[], MAPS).map_err(|e| e.to_string())?;
            assert_eq!(loaded.kafka.properties.get("sasl.password").map(String::as_str), Some("007"));
            assert_eq!(loaded.kafka.properties.get("security.protocol").map(String::as_str), Some("sasl_ssl"));
            // Without the declaration the old spelling applies: a key that
            // librdkafka would not know.
            jail.set_env("TALLY_KAFKA__PROPERTIES__SASL_PASSWORD", "s3cret");
            let plain: WithMap = load(Some(Path::new("tally.toml")), &[]).map_err(|e| e.to_string())?;
            assert!(!plain.kafka.properties.contains_key("sasl.password"), "{plain:?}");
            assert_eq!(plain.kafka.properties.get("sasl-password").map(String::as_str), Some("s3cret"));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_origin() {
        Jail::expect_with(|jail| {
            jail.create_file("tally.toml", "[ingest]\nack-timeuot = \"1s\"\n")?;
            let err = load::<Root>(Some(Path::new("tally.toml")), &[]).unwrap_err().to_string();
            assert!(err.contains("ack-timeuot"), "{err}");
            jail.clear_env();
            jail.create_file("empty.toml", "")?;
            jail.set_env("TALLY_INGEST__COLOUR", "red");
            let err = load::<Root>(Some(Path::new("empty.toml")), &[]).unwrap_err().to_string();
            assert!(err.contains("colour"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_and_missing_files_are_errors() {
        Jail::expect_with(|_| {
            let err = load::<Root>(None, &["ingest.ack-timeout=soon".into()]).unwrap_err().to_string();
            assert!(err.contains("ack-timeout"), "{err}");
            assert!(matches!(load::<Root>(None, &["novalue".into()]), Err(ConfigError::BadOverride(_))));
            assert!(matches!(load::<Root>(Some(Path::new("nope.toml")), &[]), Err(ConfigError::MissingFile(_))));
            Ok(())
        });
    }
}
