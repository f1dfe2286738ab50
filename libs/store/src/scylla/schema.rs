//! `infra/scylla/schema.cql`, the one schema: applied by cqlsh in compose and
//! by the store itself when `create-schema` is set.

/// The schema file, as committed.
pub const SCHEMA_CQL: &str = include_str!("../../../../infra/scylla/schema.cql");

/// The replication the file gives the keyspace.
const FILE_REPLICATION: &str = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}";

/// The schema's statements for `keyspace` with `replication`, in order,
/// comments removed.
pub fn statements(keyspace: &str, replication: &str) -> Vec<String> {
    let without_comments: String = SCHEMA_CQL
        .lines()
        .map(|line| line.split_once("--").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.replace("KEYSPACE IF NOT EXISTS tally ", &format!("KEYSPACE IF NOT EXISTS {keyspace} "))
                .replace(" tally.", &format!(" {keyspace}."))
                .replace(FILE_REPLICATION, replication)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_file_yields_a_keyspace_and_eleven_tables_for_any_keyspace() {
        let statements = statements("tally_test_1", "{'class': 'NetworkTopologyStrategy', 'dc1': 3}");
        assert_eq!(statements.len(), 12, "{statements:#?}");
        assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS tally_test_1 WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 3}"));
        for table in [
            "view_counts",
            "video_uniques",
            "trending_minutes",
            "videos_by_hour",
            "progress",
            "source_owners",
            "batch_minutes",
            "batch_by_video",
            "batch_periods",
            "batch_uniques",
            "batch_uniques_counted",
        ] {
            let wanted = format!("CREATE TABLE IF NOT EXISTS tally_test_1.{table} (");
            assert!(statements.iter().any(|s| s.starts_with(&wanted)), "{table} missing");
        }
        assert!(statements.iter().all(|s| !s.contains("tally.")), "every table moved to the keyspace");
    }
}
