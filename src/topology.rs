//! `tally topology show` and `tally topology reset`: the recorded topology
//! of the views and counts topics (`tally_kafka::topology`).

use tally_kafka::topology::{self, Topology, REFUSED_EXIT_CODE};
use tally_kafka::KafkaConfig;

/// Prints the recorded topology, the topics as the broker shows them now,
/// and what differs; exit code 6 when something does (a counter or writer
/// would refuse to start), 0 otherwise.
pub async fn show(kafka: &KafkaConfig) -> anyhow::Result<u8> {
    let now = topology::observe(kafka, "tally topology show").await?;
    let Some(recorded) = topology::recorded(kafka).await? else {
        println!(
            "tally topology: nothing recorded in {} yet (the first counter or writer records it)",
            kafka.topics.topology
        );
        print_topology("now", &now);
        return Ok(0);
    };
    print_topology("recorded", &recorded);
    print_topology("now", &now);
    let changes = recorded.changes_to(&now);
    if changes.is_empty() {
        println!("tally topology: unchanged");
        return Ok(0);
    }
    println!("tally topology: changed; counters and writers refuse to start:");
    for change in &changes {
        println!("  - {change}");
    }
    Ok(REFUSED_EXIT_CODE)
}

/// Records the topics as the broker shows them now (see [`topology::reset`]).
pub async fn reset(kafka: &KafkaConfig, new_views_epoch: bool) -> anyhow::Result<u8> {
    let reset = topology::reset(kafka, new_views_epoch).await?;
    if let Some(before) = &reset.before {
        print_topology("before", before);
    }
    print_topology("recorded", &reset.after);
    for change in &reset.changes {
        println!("tally topology: accepted: {change}");
    }
    let counts_replaced = reset.before.as_ref().is_some_and(|b| b.counts.id != reset.after.counts.id);
    if counts_replaced {
        println!(
            "tally topology: {} is a new topic: start the writers on a fresh store (its owners and versions belong to the old topic)",
            kafka.topics.counts
        );
    }
    Ok(0)
}

fn print_topology(label: &str, t: &Topology) {
    let id = |id: Option<topology::TopicId>| id.map_or_else(|| "unknown".to_owned(), |id| id.to_string());
    println!(
        "{label:>9}: {} ({} partitions, topic id {}), {} ({} partitions, topic id {}), views epoch {}, cluster {}; {} by {}",
        t.views.name,
        t.views.partitions,
        id(t.views.id),
        t.counts.name,
        t.counts.partitions,
        id(t.counts.id),
        t.views_epoch,
        t.cluster_id.as_deref().unwrap_or("unknown"),
        t.recorded_at,
        t.recorded_by,
    );
}
