//! `tally config`: the effective configuration, from a file, environment
//! variables and `--set` flags, printed as TOML that loads back, with every
//! secret redacted wherever it came from.

use std::process::{Command, Stdio};

use tally::config::TallyConfig;

/// Every secret the configuration can hold, in every place it can come from.
const SECRETS: &[&str] = &[
    "sasl-pw-from-file",
    "key-pw-from-file",
    "redis-pw-from-file",
    "otlp-pw-from-file",
    "ingest-key-from-file",
    "admin-key-from-file",
    "scylla-pw-from-file",
    "s3-secret-from-file",
    "oauth-secret-from-env",
    "sasl-pw-from-env",
];

const FILE: &str = r#"
[kafka]
brokers = "b1:9092,b2:9092"
properties = { "security.protocol" = "sasl_ssl", "sasl.mechanism" = "PLAIN", "sasl.username" = "tally", "sasl.password" = "sasl-pw-from-file" }
consumer-properties = { "ssl.key.password" = "key-pw-from-file", "session.timeout.ms" = "6000" }

[cache]
redis-url = "redis://app:redis-pw-from-file@redis:6379/0"

[traces]
otlp-endpoint = "https://tally:otlp-pw-from-file@collector:4318/v1/traces"

[ingest]
api-keys = [{ name = "web", key = "ingest-key-from-file", events-per-sec = 100.0, burst = 200.0 }]

[admin]
api-keys = [{ name = "ops", key = "admin-key-from-file" }]

[store.scylla]
username = "tally"
password = "scylla-pw-from-file"

[archiver]
object-store-options = { aws_secret_access_key = "s3-secret-from-file", aws_region = "eu-west-1" }
"#;

#[test]
fn tally_config_prints_loadable_toml_with_every_secret_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.toml");
    std::fs::write(&path, FILE).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--config")
        .arg(&path)
        .args(["--set", "counter.flush-interval=2s", "config"])
        // Dotted librdkafka keys from the environment (the literal-key maps).
        .env("TALLY_KAFKA__PROPERTIES__SASL_OAUTHBEARER_CLIENT_SECRET", "oauth-secret-from-env")
        .env("TALLY_KAFKA__CONSUMER_PROPERTIES__SASL_PASSWORD", "sasl-pw-from-env")
        .env("TALLY_WRITER__BATCH_MAX_RECORDS", "77")
        .stdin(Stdio::null())
        .output()
        .expect("run tally config");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "tally config failed: {}", String::from_utf8_lossy(&output.stderr));
    for secret in SECRETS {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    assert!(!printed.contains("TallyConfig {"), "Rust Debug, not TOML:\n{printed}");

    // It loads back, every layer's setting is there, and what was secret reads ***.
    let reloaded_path = dir.path().join("printed.toml");
    std::fs::write(&reloaded_path, &printed).unwrap();
    let reloaded = TallyConfig::load(Some(&reloaded_path), &[])
        .unwrap_or_else(|e| panic!("the printed configuration does not load: {e}\n{printed}"));
    assert_eq!(reloaded.kafka.brokers, "b1:9092,b2:9092");
    let properties = &reloaded.kafka.properties;
    assert_eq!(properties["sasl.username"], "tally");
    assert_eq!(properties["sasl.password"], "***");
    assert_eq!(properties["sasl.oauthbearer.client.secret"], "***", "set from the environment");
    assert_eq!(reloaded.kafka.consumer_properties["ssl.key.password"], "***");
    assert_eq!(reloaded.kafka.consumer_properties["sasl.password"], "***", "set from the environment");
    assert_eq!(reloaded.kafka.consumer_properties["session.timeout.ms"], "6000");
    assert_eq!(reloaded.cache.redis_url, "redis://app:***@redis:6379/0");
    assert_eq!(reloaded.ingest.api_keys[0].key.expose(), "***");
    assert_eq!(reloaded.store.scylla.username, "tally");
    assert_eq!(reloaded.store.scylla.password.expose(), "***");
    assert_eq!(reloaded.archiver.object_store_options["aws_secret_access_key"].expose(), "***");
    assert_eq!(reloaded.archiver.object_store_options["aws_region"].expose(), "***", "every option is a Secret");
    assert_eq!(reloaded.counter.flush_interval, std::time::Duration::from_secs(2), "from --set");
    assert_eq!(reloaded.writer.batch_max_records, 77, "from the environment");
}

#[test]
fn the_configuration_round_trips_through_tally_config_unchanged_without_secrets() {
    // Every default, printed and loaded back, is the same configuration: no
    // field is lost or renamed on the way (the counter's section is
    // serialized by hand).
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["--set", "counter.dedup-window=7m", "--set", "counter.group-instance-id=counter-3", "config"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .expect("run tally config");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("printed.toml");
    std::fs::write(&path, &output.stdout).unwrap();
    let reloaded = TallyConfig::load(Some(&path), &[]).unwrap();
    let mut expected = TallyConfig::default();
    expected.counter.dedup_window = std::time::Duration::from_secs(420);
    expected.counter.group_instance_id = Some("counter-3".into());
    assert_eq!(reloaded, expected);
}
