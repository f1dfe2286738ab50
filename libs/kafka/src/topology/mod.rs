//! The recorded topology: what counting exactly once assumes of the Kafka
//! topics, recorded at the first start and checked at every later one.
//!
//! The counter and the writer rely on invariants nothing in Kafka enforces:
//!
//! - `tally.counts` keeps its partition count and is never recreated. The
//!   flushes and claims of source partition `p` live in counts partition
//!   `p % n`; claims are ordered by their offsets in it (the zombie fence,
//!   `tally_model::counts::fence`), and the store keeps owners and versions
//!   that belong to one incarnation of the topic.
//! - `tally.views` is never recreated behind the counter's back: its offsets
//!   are the versions of the counts. A recreated topic starts its offsets
//!   again and would pass for ranges already counted. (Inferring recreation
//!   from offsets misses a new topic that has already passed the old end,
//!   and takes a truncated log for a new topic.) Its partition count keeps
//!   keys on their partitions: after an increase, a retry of an event sent
//!   before it lands on another partition and is not deduplicated.
//! - `tally.counts` is kept at least as long as `tally.views`
//!   ([`retention`]).
//!
//! So the first counter or writer to start records the partition counts and
//! the Kafka topic ids (KIP-516: a topic created again under the same name
//! gets a new id) of both topics, with the incarnation number of the views
//! topic (`views-epoch`, the epoch in every flush version), in a compacted
//! topic ([`record`], which says why there). Every later start compares and
//! refuses with [`TopologyError::Changed`] (exit code 6) when a partition
//! count or a topic id differs. A deliberate change is accepted with
//! `tally topology reset` ([`reset`]), which records what the broker shows
//! now and starts a new views epoch when the views topic is a new one.
//!
//! # Layout
//!
//! - this file: [`Topology`], [`check`], [`reset`], [`TopologyError`].
//! - [`metadata`]: topic ids, from a Metadata request of Tally's own
//!   (rdkafka's safe API does not expose them; the module says why and what
//!   it cannot do).
//! - [`record`]: the record in its compacted topic.
//! - [`retention`]: the retention relation of the two topics.

pub mod metadata;
pub mod record;
pub mod retention;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use metadata::TopicId;
use metadata::{Described, MetadataError};
pub use retention::Retention;

use crate::clients::base_config;
use crate::KafkaConfig;

/// How long one broker request of the check may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One topic as recorded or observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TopicIdentity {
    /// Its name.
    pub name: String,
    /// Its Kafka topic id; `None` where it could not be read
    /// ([`metadata`]'s limits): then recreation cannot be told.
    #[serde(serialize_with = "id_out", deserialize_with = "id_in")]
    pub id: Option<TopicId>,
    /// Its partition count.
    pub partitions: i32,
}

/// The topics counting depends on, as recorded (or observed now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Topology {
    /// The Kafka cluster's id (for operators: the comparison is by topic ids).
    pub cluster_id: Option<String>,
    /// The views topic.
    pub views: TopicIdentity,
    /// The counts topic.
    pub counts: TopicIdentity,
    /// Incarnation of the views topic: the epoch of every flush version.
    /// 0 at the first start; [`reset`] adds one when the views topic is a
    /// new one (its offsets start again).
    pub views_epoch: u32,
    /// When it was recorded (RFC 3339).
    pub recorded_at: String,
    /// Which service on which host recorded it.
    pub recorded_by: String,
}

/// One way the topics differ from the recorded topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The configuration names another topic than the one recorded.
    Renamed {
        /// `views` or `counts`.
        role: Role,
        /// The recorded name.
        recorded: String,
        /// The configured name.
        now: String,
    },
    /// The topic was deleted and created again under its name.
    Recreated {
        /// `views` or `counts`.
        role: Role,
        /// The topic.
        topic: String,
        /// The recorded id.
        recorded: TopicId,
        /// Its id now.
        now: TopicId,
    },
    /// Its partition count changed.
    Partitions {
        /// `views` or `counts`.
        role: Role,
        /// The topic.
        topic: String,
        /// The recorded count.
        recorded: i32,
        /// The count now.
        now: i32,
    },
}

/// Which of the two topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The raw events.
    Views,
    /// The counter's flushes and claims.
    Counts,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Renamed { role, recorded, now } => write!(
                f,
                "the {} topic is configured as {now}, but {recorded} was recorded",
                if *role == Role::Views { "views" } else { "counts" }
            ),
            Self::Recreated { role: Role::Counts, topic, recorded, now } => write!(
                f,
                "{topic} was deleted and created again (topic id {recorded} recorded, {now} now): claims are ordered by their offsets in it, and the store's owners and versions belong to the old topic"
            ),
            Self::Recreated { role: Role::Views, topic, recorded, now } => write!(
                f,
                "{topic} was deleted and created again (topic id {recorded} recorded, {now} now): its offsets started again and would pass for ranges already counted"
            ),
            Self::Partitions { role: Role::Counts, topic, recorded, now } => write!(
                f,
                "{topic} has {now} partitions, {recorded} were recorded: source partition p lives in counts partition p % n, so claims, flushes and recovery would be read from the wrong partitions"
            ),
            Self::Partitions { role: Role::Views, topic, recorded, now } => write!(
                f,
                "{topic} has {now} partitions, {recorded} were recorded: keys moved to other partitions, so a retry of an event sent before the change is not deduplicated"
            ),
        }
    }
}

/// Why the topology check failed or refused.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The topics differ from the recorded topology: starting would break
    /// exactly-once counting. A refusal (exit code 6).
    #[error(
        "the Kafka topics changed since the topology was recorded in {topic}:\n{}\nStarting would break exactly-once counting. If the change was deliberate, stop every counter and writer and run `tally topology reset` (README, \"Operating rules\")",
        changes.iter().map(|c| format!("  - {c}")).collect::<Vec<_>>().join("\n")
    )]
    Changed {
        /// The topology topic.
        topic: String,
        /// What changed.
        changes: Vec<Change>,
    },
    /// The counts topic is kept for less time than the views topic. A
    /// refusal (exit code 6).
    #[error(
        "{counts_topic} ({counts}) is kept for less time than {views_topic} ({views}): a counter that lost its group offsets would recount views whose flushes are gone, under new versions, and count them twice. Give {counts_topic} at least the retention of {views_topic}"
    )]
    RetentionTooShort {
        /// The views topic.
        views_topic: String,
        /// Its retention.
        views: Retention,
        /// The counts topic.
        counts_topic: String,
        /// Its retention.
        counts: Retention,
    },
    /// A topic the check needs does not exist.
    #[error("topic {topic} does not exist (Kafka error code {code}); create it, or set kafka.create-topics")]
    Missing {
        /// The topic.
        topic: String,
        /// Kafka's error code.
        code: i16,
    },
    /// The topology topic is missing or has more than one partition.
    #[error(
        "the topology topic {topic} has {partitions} partitions; it needs exactly 1, with cleanup.policy=compact (created so with kafka.create-topics)"
    )]
    TopologyTopic {
        /// The topic.
        topic: String,
        /// Its partition count (0: it does not exist).
        partitions: usize,
    },
    /// A broker request failed.
    #[error("{topic}: {source}")]
    Kafka {
        /// The topic asked about.
        topic: String,
        /// The error.
        source: rdkafka::error::KafkaError,
    },
    /// Reading topic ids failed.
    #[error(transparent)]
    Metadata(MetadataError),
    /// Reading the topology topic did not finish in time.
    #[error("reading {topic}[{from}..{to}) timed out")]
    ReadTimeout {
        /// The topic.
        topic: String,
        /// The next offset to read.
        from: i64,
        /// The end.
        to: i64,
    },
    /// The recorded topology could not be read.
    #[error("the topology record at offset {offset} of {topic} cannot be read: {reason}")]
    Undecodable {
        /// The topic.
        topic: String,
        /// The record's offset.
        offset: i64,
        /// Why.
        reason: String,
    },
    /// A topic's configuration could not be read.
    #[error("the configuration of topic {topic} could not be read")]
    Configs {
        /// The topic.
        topic: String,
    },
    /// A blocking step could not be joined.
    #[error("topology check: {0}")]
    Join(String),
}

impl TopologyError {
    /// Whether this is a refusal to start (the topics break an invariant),
    /// as opposed to a failure to check.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Changed { .. } | Self::RetentionTooShort { .. })
    }
}

/// The process exit code of a start refused by the topology check.
pub const REFUSED_EXIT_CODE: u8 = 6;

impl Topology {
    /// How `now` differs from this recorded topology.
    pub fn changes_to(&self, now: &Topology) -> Vec<Change> {
        let mut changes = Vec::new();
        for (role, recorded, now) in [(Role::Views, &self.views, &now.views), (Role::Counts, &self.counts, &now.counts)]
        {
            if recorded.name != now.name {
                changes.push(Change::Renamed { role, recorded: recorded.name.clone(), now: now.name.clone() });
                continue;
            }
            match (recorded.id, now.id) {
                (Some(before), Some(after)) if before != after => {
                    changes.push(Change::Recreated { role, topic: now.name.clone(), recorded: before, now: after })
                }
                (Some(_), None) => tracing::warn!(
                    topic = %now.name,
                    "the topic's id cannot be read now: whether it was recreated is not checked"
                ),
                _ => {}
            }
            if recorded.partitions != now.partitions {
                changes.push(Change::Partitions {
                    role,
                    topic: now.name.clone(),
                    recorded: recorded.partitions,
                    now: now.partitions,
                });
            }
        }
        changes
    }

    /// Whether the views topic of `now` is another incarnation than this one's.
    fn views_replaced_by(&self, now: &Topology) -> bool {
        self.views.name != now.views.name || matches!((self.views.id, now.views.id), (Some(a), Some(b)) if a != b)
    }
}

/// Reads the topology as the broker shows it now; `recorded_by` names the
/// caller. Topic ids are `None` where [`metadata`] cannot read them (a
/// warning says so).
pub async fn observe(kafka: &KafkaConfig, recorded_by: &str) -> Result<Topology, TopologyError> {
    let names = [kafka.topics.views.clone(), kafka.topics.counts.clone()];
    let config = kafka.clone();
    let described = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let described = match metadata::describe(&config, &[&names[0], &names[1]], REQUEST_TIMEOUT) {
                Err(MetadataError::Unsupported(why)) => {
                    tracing::warn!(%why, "Kafka topic ids cannot be read: a recreated topic cannot be told from the old one");
                    without_ids(&config, &names)
                }
                described => described.map_err(TopologyError::Metadata),
            }?;
            // A topic created a moment ago may not be known to every broker yet.
            let settled = described.topics.iter().all(|t| t.error_code == 0 && t.partitions > 0);
            if settled || std::time::Instant::now() >= deadline {
                return Ok::<_, TopologyError>(described);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .map_err(|e| TopologyError::Join(e.to_string()))??;
    let identity = |name: &str| -> Result<TopicIdentity, TopologyError> {
        let topic = described.topics.iter().find(|t| t.name == name);
        match topic {
            Some(t) if t.error_code == 0 => {
                Ok(TopicIdentity { name: name.to_owned(), id: t.id, partitions: t.partitions })
            }
            Some(t) => Err(TopologyError::Missing { topic: name.to_owned(), code: t.error_code }),
            None => Err(TopologyError::Missing { topic: name.to_owned(), code: 3 }),
        }
    };
    Ok(Topology {
        cluster_id: described.cluster_id.clone(),
        views: identity(&kafka.topics.views)?,
        counts: identity(&kafka.topics.counts)?,
        views_epoch: 0,
        recorded_at: tally_now(),
        recorded_by: recorded_by.to_owned(),
    })
}

/// Partition counts through librdkafka (any security protocol), without ids.
fn without_ids(kafka: &KafkaConfig, names: &[String; 2]) -> Result<Described, TopologyError> {
    let client: BaseConsumer = base_config(kafka, "tally-topology")
        .create()
        .map_err(|source| TopologyError::Kafka { topic: names[0].clone(), source })?;
    let mut topics = Vec::new();
    for name in names {
        let metadata = client
            .fetch_metadata(Some(name), REQUEST_TIMEOUT)
            .map_err(|source| TopologyError::Kafka { topic: name.clone(), source })?;
        let found = metadata.topics().first();
        topics.push(metadata::DescribedTopic {
            name: name.clone(),
            error_code: found.and_then(|t| t.error()).map_or(0, |code| code as i16),
            id: None,
            partitions: found.map_or(0, |t| i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)),
        });
    }
    Ok(Described { cluster_id: client.client().fetch_cluster_id(REQUEST_TIMEOUT), topics })
}

/// Checks the topics against the recorded topology at a start of `service`
/// (`counter`, `writer`): records them when nothing is recorded yet (the
/// first start), refuses when they changed. Returns the recorded topology.
pub async fn check(kafka: &KafkaConfig, service: &str) -> Result<Topology, TopologyError> {
    let now = observe(kafka, &who(service)).await?;
    let config = kafka.clone();
    let recorded = tokio::task::spawn_blocking(move || record::read(&config, REQUEST_TIMEOUT))
        .await
        .map_err(|e| TopologyError::Join(e.to_string()))??;
    let Some(recorded) = recorded else {
        record::write(kafka, &now).await?;
        tracing::info!(
            topic = %kafka.topics.topology,
            views = ?now.views,
            counts = ?now.counts,
            "first start: recorded the topology of the views and counts topics"
        );
        return Ok(now);
    };
    let changes = recorded.changes_to(&now);
    if changes.is_empty() {
        return Ok(recorded);
    }
    Err(TopologyError::Changed { topic: kafka.topics.topology.clone(), changes })
}

/// What [`reset`] did.
#[derive(Debug, Clone)]
pub struct Reset {
    /// The topology recorded before, if any.
    pub before: Option<Topology>,
    /// The topology recorded now.
    pub after: Topology,
    /// What differed.
    pub changes: Vec<Change>,
}

/// Records the topology the broker shows now, accepting whatever changed
/// (`tally topology reset`). The views epoch goes up by one when the views
/// topic is another one than recorded (or when `new_views_epoch` asks for
/// it), so that the versions of its flushes are newer than any before.
/// Every counter and writer must be stopped first: running ones keep
/// what they read at their start.
pub async fn reset(kafka: &KafkaConfig, new_views_epoch: bool) -> Result<Reset, TopologyError> {
    let mut now = observe(kafka, &who("tally topology reset")).await?;
    let config = kafka.clone();
    let before = tokio::task::spawn_blocking(move || record::read(&config, REQUEST_TIMEOUT))
        .await
        .map_err(|e| TopologyError::Join(e.to_string()))??;
    let changes = before.as_ref().map(|b| b.changes_to(&now)).unwrap_or_default();
    if let Some(before) = &before {
        let bump = new_views_epoch || before.views_replaced_by(&now);
        now.views_epoch = before.views_epoch + u32::from(bump);
    } else if new_views_epoch {
        now.views_epoch = 1;
    }
    record::write(kafka, &now).await?;
    Ok(Reset { before, after: now, changes })
}

/// Reads the recorded topology, if any (`tally topology show`).
pub async fn recorded(kafka: &KafkaConfig) -> Result<Option<Topology>, TopologyError> {
    let config = kafka.clone();
    tokio::task::spawn_blocking(move || record::read(&config, REQUEST_TIMEOUT))
        .await
        .map_err(|e| TopologyError::Join(e.to_string()))?
}

fn who(service: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "unknown-host".into());
    format!("{service} on {host}/{}", std::process::id())
}

fn tally_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| now.unix_timestamp().to_string())
}

fn id_out<S: Serializer>(id: &Option<TopicId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.serialize_some(&id.encode()),
        None => s.serialize_none(),
    }
}

fn id_in<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TopicId>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| TopicId::decode(&t).ok_or_else(|| serde::de::Error::custom(format!("not a topic id: {t}"))))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(views: (u8, i32), counts: (u8, i32)) -> Topology {
        let topic = |name: &str, (id, partitions): (u8, i32)| TopicIdentity {
            name: name.into(),
            id: Some(TopicId([id; 16])),
            partitions,
        };
        Topology {
            cluster_id: None,
            views: topic("v", views),
            counts: topic("c", counts),
            views_epoch: 0,
            recorded_at: String::new(),
            recorded_by: String::new(),
        }
    }

    #[test]
    fn a_new_id_or_another_partition_count_is_a_change_and_nothing_else_is() {
        let recorded = topology((1, 12), (2, 12));
        assert!(recorded.changes_to(&topology((1, 12), (2, 12))).is_empty());
        let changes = recorded.changes_to(&topology((1, 16), (3, 12)));
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(changes[0], Change::Partitions { role: Role::Views, recorded: 12, now: 16, .. }));
        assert!(matches!(changes[1], Change::Recreated { role: Role::Counts, .. }));
        assert!(changes[1].to_string().contains("deleted and created again"));
        let mut unknown = topology((1, 12), (2, 12));
        unknown.counts.id = None;
        assert!(recorded.changes_to(&unknown).is_empty(), "an id that cannot be read now is only warned about");
        assert!(recorded.views_replaced_by(&topology((9, 12), (2, 12))));
        assert!(!recorded.views_replaced_by(&topology((1, 24), (2, 12))));
    }
}
