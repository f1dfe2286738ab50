//! Where the JDK and the servers' jars are.
//!
//! `scripts/setup` copies each server's runtime jars from Maven Central into
//! `<tools>/kafka-<version>/lib` and `<tools>/cassandra-<version>/lib`; the
//! tools directory is `$TALLY_TOOLS_DIR`, by default `~/.cache/tally/tools`.

use std::path::{Path, PathBuf};

use crate::ServerError;

/// The Apache Kafka version `infra/jvm/kafka/pom.xml` installs.
pub const KAFKA_VERSION: &str = "4.4.0";
/// The Apache Cassandra version `infra/jvm/cassandra/pom.xml` installs.
pub const CASSANDRA_VERSION: &str = "5.0.8";

/// A JDK 17 and the installed servers.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The tools directory.
    pub dir: PathBuf,
    /// `bin/java` of a JDK 17.
    pub java: PathBuf,
}

impl Tools {
    /// Finds the tools directory and a JDK 17: `$TALLY_JAVA_HOME`, then
    /// `$JAVA_HOME`, then Debian's `/usr/lib/jvm/java-17-openjdk-amd64`, each
    /// taken only when its `release` file says Java 17.
    pub fn find() -> Result<Self, ServerError> {
        let dir = match std::env::var_os("TALLY_TOOLS_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/tally/tools"))
                .unwrap_or_else(|| PathBuf::from(".cache/tally/tools")),
        };
        let candidates: Vec<PathBuf> = ["TALLY_JAVA_HOME", "JAVA_HOME"]
            .iter()
            .filter_map(std::env::var_os)
            .map(PathBuf::from)
            .chain(std::iter::once(PathBuf::from("/usr/lib/jvm/java-17-openjdk-amd64")))
            .collect();
        let java =
            candidates.iter().find(|home| is_java_17(home)).map(|home| home.join("bin/java")).ok_or_else(|| {
                ServerError::NotInstalled {
                    what: "a JDK 17 (Kafka 4 needs Java 17+, Cassandra 5.0 runs on Java 11 or 17 only)".into(),
                    looked: candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", "),
                }
            })?;
        Ok(Self { dir, java })
    }

    /// The class path of Apache Kafka (`<dir>/kafka-<version>/lib/*`).
    pub fn kafka_classpath(&self) -> Result<String, ServerError> {
        self.classpath(&format!("kafka-{KAFKA_VERSION}"), "kafka_2.13-")
    }

    /// The class path of Apache Cassandra (`<dir>/cassandra-<version>/lib/*`).
    pub fn cassandra_classpath(&self) -> Result<String, ServerError> {
        self.classpath(&format!("cassandra-{CASSANDRA_VERSION}"), "cassandra-all-")
    }

    /// The jamm agent Cassandra must be started with.
    pub fn cassandra_jamm(&self) -> Result<PathBuf, ServerError> {
        let lib = self.dir.join(format!("cassandra-{CASSANDRA_VERSION}/lib"));
        jar_starting_with(&lib, "jamm-").ok_or_else(|| ServerError::NotInstalled {
            what: "the jamm agent of Apache Cassandra".into(),
            looked: lib.display().to_string(),
        })
    }

    fn classpath(&self, folder: &str, main_jar: &str) -> Result<String, ServerError> {
        let lib = self.dir.join(folder).join("lib");
        if jar_starting_with(&lib, main_jar).is_none() {
            return Err(ServerError::NotInstalled {
                what: format!("{main_jar}*.jar"),
                looked: lib.display().to_string(),
            });
        }
        Ok(format!("{}/*", lib.display()))
    }
}

fn jar_starting_with(dir: &Path, prefix: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".jar")))
}

fn is_java_17(home: &Path) -> bool {
    std::fs::read_to_string(home.join("release"))
        .is_ok_and(|release| release.lines().any(|l| l.starts_with("JAVA_VERSION=\"17")))
        && home.join("bin/java").is_file()
}
