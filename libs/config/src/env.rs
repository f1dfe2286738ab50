//! The `TALLY_` environment variables as a configuration layer.
//!
//! A variable names a path: `__` between its parts, `_` for the dashes
//! inside a key, case-insensitive (`TALLY_INGEST__ACK_TIMEOUT=2s` sets
//! `ingest.ack-timeout`). Values are read like figment's own environment
//! provider (`2s`, `true`, `[1, 2]`, `{ a = 1 }`).
//!
//! That spelling cannot name a key with a dot or an underscore in it, which
//! the free-form maps need: librdkafka's `sasl.password` under
//! `kafka.properties`, object_store's `aws_secret_access_key` under
//! `archiver.object-store-options`. So a map is declared [`LiteralKeys`]:
//! the part of a variable right after the map's path is one key of the map,
//! taken whole, with each `_` read as the map's own separator, and its value
//! kept as a plain string (never parsed as a number or a boolean: `0123` stays
//! `0123`):
//!
//! | Variable | Sets |
//! |---|---|
//! | `TALLY_KAFKA__PROPERTIES__SASL_PASSWORD=s3cret` | `kafka.properties."sasl.password"` |
//! | `TALLY_KAFKA__CONSUMER_PROPERTIES__SESSION_TIMEOUT_MS=6000` | `kafka.consumer-properties."session.timeout.ms"` |
//! | `TALLY_ARCHIVER__OBJECT_STORE_OPTIONS__AWS_SECRET_ACCESS_KEY=…` | `archiver.object-store-options.aws_secret_access_key` |
//!
//! A key of a literal map is the last part of its variable; anything after it
//! is refused.

use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// A map whose keys environment variables spell literally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiteralKeys {
    /// Path of the map, kebab-case, dots between sections (`kafka.properties`).
    pub path: &'static str,
    /// What `_` in a variable stands for in the map's keys: `.` for
    /// librdkafka properties, `_` for object_store options.
    pub underscore: char,
}

/// The `TALLY_` environment variables.
#[derive(Debug, Clone)]
pub struct TallyEnv {
    prefix: &'static str,
    literal: &'static [LiteralKeys],
}

impl TallyEnv {
    /// Variables starting with `prefix` (case-insensitive) and containing a
    /// `__`; `literal` names the maps with literal keys.
    pub fn new(prefix: &'static str, literal: &'static [LiteralKeys]) -> Self {
        Self { prefix, literal }
    }

    /// The (path, value) each configuration variable sets, from `vars`; the
    /// error names the variable and what is wrong with it.
    fn settings(&self, vars: impl Iterator<Item = (String, String)>) -> Result<Vec<(Vec<String>, Value)>, String> {
        let mut out = Vec::new();
        for (name, raw) in vars {
            let Some(rest) = strip_prefix_ignore_case(name.trim(), self.prefix) else { continue };
            if !rest.contains("__") {
                continue; // not configuration (TALLY_SCYLLA_URI and the like)
            }
            let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if parts.iter().any(String::is_empty) {
                return Err(format!("environment variable {name}: an empty part between `__`"));
            }
            let mut path: Vec<String> = Vec::new();
            let mut value = None;
            for (i, part) in parts.iter().enumerate() {
                let here = path.join(".");
                if let Some(map) = self.literal.iter().find(|m| m.path == here) {
                    if i + 1 != parts.len() {
                        return Err(format!(
                            "environment variable {name}: `{part}` is one key of {here}, so it must end the name"
                        ));
                    }
                    path.push(part.replace('_', &map.underscore.to_string()));
                    value = Some(Value::from(raw.clone()));
                    break;
                }
                path.push(part.replace('_', "-"));
            }
            let value = value.unwrap_or_else(|| raw.parse().unwrap_or_else(|never| match never {}));
            out.push((path, value));
        }
        Ok(out)
    }
}

impl Provider for TallyEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("`{}` environment variable(s)", self.prefix))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let vars =
            std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()));
        let mut root = Dict::new();
        for (path, value) in self.settings(vars).map_err(Error::from)? {
            insert(&mut root, &path, value);
        }
        Ok(Profile::Default.collect(root))
    }
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &name[prefix.len()..])
}

/// Sets `path` in `dict`, creating the tables on the way (a later variable
/// wins over an earlier one for the same path).
fn insert(dict: &mut Dict, path: &[String], value: Value) {
    let (last, parents) = path.split_last().expect("a configuration path has at least one part");
    let mut here = dict;
    for part in parents {
        let entry = here.entry(part.clone()).or_insert_with(|| Value::from(Dict::new()));
        if entry.as_dict().is_none() {
            *entry = Value::from(Dict::new());
        }
        here = match entry {
            Value::Dict(_, inner) => inner,
            _ => unreachable!("just made a table"),
        };
    }
    here.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &[LiteralKeys] = &[
        LiteralKeys { path: "kafka.properties", underscore: '.' },
        LiteralKeys { path: "archiver.object-store-options", underscore: '_' },
    ];

    fn settings(vars: &[(&str, &str)]) -> Result<Vec<(String, Value)>, String> {
        let env = TallyEnv::new("TALLY_", MAPS);
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Ok(env.settings(vars)?.into_iter().map(|(path, value)| (path.join("|"), value)).collect())
    }

    #[test]
    fn sections_split_on_double_underscores_and_dashes_come_from_single_ones() {
        let got =
            settings(&[("TALLY_INGEST__ACK_TIMEOUT", "2s"), ("tally_store__scylla__nodes", "[\"a:1\"]")]).unwrap();
        assert_eq!(got[0].0, "ingest|ack-timeout");
        assert_eq!(got[0].1.as_str(), Some("2s"));
        assert_eq!(got[1].0, "store|scylla|nodes");
        assert!(got[1].1.as_array().is_some(), "{:?}", got[1].1);
    }

    #[test]
    fn literal_maps_keep_dots_and_underscores_and_string_values() {
        let got = settings(&[
            ("TALLY_KAFKA__PROPERTIES__SASL_PASSWORD", "0123"),
            ("TALLY_ARCHIVER__OBJECT_STORE_OPTIONS__AWS_SECRET_ACCESS_KEY", "k"),
        ])
        .unwrap();
        assert_eq!(got[0].0, "kafka|properties|sasl.password");
        assert_eq!(got[0].1.as_str(), Some("0123"), "a password is never read as a number");
        assert_eq!(got[1].0, "archiver|object-store-options|aws_secret_access_key");
    }

    #[test]
    fn other_variables_are_ignored_and_bad_names_refused() {
        assert!(settings(&[("TALLY_SCYLLA_URI", "x"), ("PATH", "/bin"), ("TALLYX__A", "1")]).unwrap().is_empty());
        let err = settings(&[("TALLY_KAFKA__PROPERTIES__SASL_PASSWORD__X", "1")]).unwrap_err();
        assert!(err.contains("must end the name"), "{err}");
        let err = settings(&[("TALLY_INGEST____ACK", "1")]).unwrap_err();
        assert!(err.contains("empty part"), "{err}");
    }
}
