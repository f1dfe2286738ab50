//! How Tally's consumers take part in their groups: the group protocol, the
//! partition assignment strategy, static membership, and the start-up check
//! that refuses combinations librdkafka would reject later (or silently
//! ignore).
//!
//! - `classic` protocol (every Kafka-protocol broker): the members join and a
//!   member computes the assignment. With `cooperative-sticky` (Tally's
//!   default) a rebalance revokes only the partitions that move; with the
//!   eager strategies (`range`, `roundrobin`) every member stops every
//!   partition until the group has settled again.
//! - `consumer` protocol (KIP-848, Apache Kafka 4.0 and later): the broker
//!   assigns partitions and tells members through their heartbeats; always
//!   incremental. Session timeout and heartbeat interval are the broker's
//!   (`group.consumer.session.timeout.ms`,
//!   `group.consumer.heartbeat.interval.ms`), not the client's: librdkafka
//!   refuses to create a consumer that sets them.
//! - Static membership (`group.instance.id`, per service): a member that
//!   restarts within the session timeout gets its partitions back without a
//!   rebalance; a static member that stops does not leave its group, so its
//!   partitions move only once its session expires.

use serde::{Deserialize, Serialize};

use crate::KafkaConfig;

/// The consumer group protocol (`group.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupProtocol {
    /// JoinGroup/SyncGroup, understood by every Kafka-protocol broker.
    #[default]
    Classic,
    /// KIP-848: the broker assigns partitions, rebalances are incremental.
    /// Needs Apache Kafka 4.0 or later.
    Consumer,
}

impl GroupProtocol {
    /// librdkafka's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Consumer => "consumer",
        }
    }
}

/// How a `classic` group assigns partitions (`partition.assignment.strategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignmentStrategy {
    /// Incremental: a rebalance revokes only the partitions that move; the
    /// others are counted throughout.
    #[default]
    CooperativeSticky,
    /// Eager, partitions in ranges: every rebalance stops every partition of
    /// every member until the group has settled again.
    Range,
    /// Eager, partitions dealt round-robin; stops the world like `range`.
    Roundrobin,
}

impl AssignmentStrategy {
    /// librdkafka's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::CooperativeSticky => "cooperative-sticky",
            Self::Range => "range",
            Self::Roundrobin => "roundrobin",
        }
    }
}

/// Who a consumer is in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupMember<'a> {
    /// The group (`group.id`).
    pub group_id: &'a str,
    /// Its static identity (`group.instance.id`), if it has one.
    pub instance_id: Option<&'a str>,
}

/// A configuration librdkafka or the broker would refuse, or that would not
/// do what it says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// A librdkafka property that a first-class setting governs.
    #[error("kafka.{map}.\"{key}\" is not allowed: set {instead} instead")]
    Governed {
        /// `properties` or `consumer-properties`.
        map: &'static str,
        /// The property.
        key: String,
        /// The setting to use.
        instead: &'static str,
    },
    /// A client-side property that the `consumer` protocol moves to the broker.
    #[error(
        "kafka.{map}.\"{key}\" cannot be used with kafka.group-protocol = \"consumer\" \
         (librdkafka refuses it): {instead}"
    )]
    NotWithConsumerProtocol {
        /// `properties` or `consumer-properties`.
        map: &'static str,
        /// The property.
        key: String,
        /// Where the setting lives under the `consumer` protocol.
        instead: &'static str,
    },
    /// An assignment strategy with the `consumer` protocol, where the broker assigns.
    #[error(
        "kafka.assignment-strategy applies to kafka.group-protocol = \"classic\" only; with \"consumer\" \
         the broker assigns partitions (choose its assignor with kafka.consumer-properties.\"group.remote.assignor\")"
    )]
    StrategyWithConsumerProtocol,
    /// A server-side assignor with the `classic` protocol, where it means nothing.
    #[error(
        "kafka.{map}.\"group.remote.assignor\" applies to kafka.group-protocol = \"consumer\" only; \
         with \"classic\" set kafka.assignment-strategy"
    )]
    RemoteAssignorWithClassicProtocol {
        /// `properties` or `consumer-properties`.
        map: &'static str,
    },
    /// A `group-instance-id` the broker would refuse.
    #[error(
        "{setting} = {id:?} is not a valid group instance id: 1 to 249 characters of \
         ASCII letters, digits, '.', '_' and '-'"
    )]
    InstanceId {
        /// The setting, e.g. `counter.group-instance-id`.
        setting: String,
        /// The value.
        id: String,
    },
}

/// Properties that first-class settings govern, and the setting for each.
const GOVERNED: [(&str, &str); 4] = [
    ("group.protocol", "kafka.group-protocol"),
    ("partition.assignment.strategy", "kafka.assignment-strategy"),
    ("group.instance.id", "the group-instance-id of the service ([counter], [writer], [archiver])"),
    ("group.id", "the group-id of the service ([counter], [writer], [archiver])"),
];

/// Client-side group properties the `consumer` protocol moves to the broker.
const CLASSIC_ONLY: [(&str, &str); 3] = [
    ("session.timeout.ms", "the broker's group.consumer.session.timeout.ms governs it"),
    ("heartbeat.interval.ms", "the broker's group.consumer.heartbeat.interval.ms governs it"),
    ("group.protocol.type", "the consumer protocol has no protocol type"),
];

impl KafkaConfig {
    /// Refuses group settings that conflict: properties that first-class
    /// settings govern, client-side session settings with the `consumer`
    /// protocol, an assignment strategy where the broker assigns. Called at
    /// start-up, so a conflict is a configuration error naming the setting,
    /// not a consumer that fails (or ignores it) later.
    pub fn validate_membership(&self) -> Result<(), MembershipError> {
        for (map, properties) in [("properties", &self.properties), ("consumer-properties", &self.consumer_properties)]
        {
            for key in properties.keys() {
                if let Some((_, instead)) = GOVERNED.iter().find(|(governed, _)| governed == key) {
                    return Err(MembershipError::Governed { map, key: key.clone(), instead });
                }
                match self.group_protocol {
                    GroupProtocol::Consumer => {
                        if let Some((_, instead)) = CLASSIC_ONLY.iter().find(|(classic, _)| classic == key) {
                            return Err(MembershipError::NotWithConsumerProtocol { map, key: key.clone(), instead });
                        }
                    }
                    GroupProtocol::Classic if key == "group.remote.assignor" => {
                        return Err(MembershipError::RemoteAssignorWithClassicProtocol { map });
                    }
                    GroupProtocol::Classic => {}
                }
            }
        }
        if self.group_protocol == GroupProtocol::Consumer && self.assignment_strategy.is_some() {
            return Err(MembershipError::StrategyWithConsumerProtocol);
        }
        Ok(())
    }

    /// [`Self::validate_membership`] and the `group-instance-id` of the
    /// configuration section `section` (`counter`, `writer`, `archiver`).
    pub fn validate_member(&self, section: &str, instance_id: Option<&str>) -> Result<(), MembershipError> {
        self.validate_membership()?;
        validate_instance_id(&format!("{section}.group-instance-id"), instance_id)
    }

    /// The assignment strategy of `classic` groups.
    pub fn classic_strategy(&self) -> AssignmentStrategy {
        self.assignment_strategy.unwrap_or_default()
    }
}

/// Checks a service's `group-instance-id` (named `setting` in errors) as the
/// broker would: 1 to 249 characters of `[a-zA-Z0-9._-]`.
pub fn validate_instance_id(setting: &str, id: Option<&str>) -> Result<(), MembershipError> {
    let Some(id) = id else { return Ok(()) };
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > 249 || !id.chars().all(legal) {
        return Err(MembershipError::InstanceId { setting: setting.to_owned(), id: id.to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(protocol: GroupProtocol, strategy: Option<AssignmentStrategy>, consumer: &[(&str, &str)]) -> KafkaConfig {
        KafkaConfig {
            group_protocol: protocol,
            assignment_strategy: strategy,
            consumer_properties: consumer.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..KafkaConfig::default()
        }
    }

    #[test]
    fn classic_groups_may_tune_their_session_on_the_client() {
        let config = with(
            GroupProtocol::Classic,
            Some(AssignmentStrategy::Range),
            &[("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "1000")],
        );
        assert_eq!(config.validate_membership(), Ok(()));
        assert_eq!(config.classic_strategy(), AssignmentStrategy::Range);
        assert_eq!(KafkaConfig::default().classic_strategy(), AssignmentStrategy::CooperativeSticky);
    }

    #[test]
    fn the_consumer_protocol_refuses_client_side_session_settings() {
        for key in ["session.timeout.ms", "heartbeat.interval.ms", "group.protocol.type"] {
            let config = with(GroupProtocol::Consumer, None, &[(key, "1")]);
            let error = config.validate_membership().unwrap_err();
            assert!(matches!(&error, MembershipError::NotWithConsumerProtocol { key: k, .. } if k == key), "{error}");
        }
        let mut in_all_clients = with(GroupProtocol::Consumer, None, &[]);
        in_all_clients.properties.insert("session.timeout.ms".into(), "6000".into());
        assert!(matches!(
            in_all_clients.validate_membership(),
            Err(MembershipError::NotWithConsumerProtocol { map: "properties", .. })
        ));
        assert_eq!(
            with(GroupProtocol::Consumer, None, &[("group.remote.assignor", "range")]).validate_membership(),
            Ok(())
        );
    }

    #[test]
    fn an_assignment_strategy_needs_the_classic_protocol() {
        let config = with(GroupProtocol::Consumer, Some(AssignmentStrategy::CooperativeSticky), &[]);
        assert_eq!(config.validate_membership(), Err(MembershipError::StrategyWithConsumerProtocol));
        let config = with(GroupProtocol::Classic, None, &[("group.remote.assignor", "uniform")]);
        assert!(matches!(config.validate_membership(), Err(MembershipError::RemoteAssignorWithClassicProtocol { .. })));
    }

    #[test]
    fn properties_governed_by_settings_are_refused_with_the_setting_to_use() {
        for (key, setting) in GOVERNED {
            let config = with(GroupProtocol::Classic, None, &[(key, "x")]);
            let message = config.validate_membership().unwrap_err().to_string();
            assert!(message.contains(key) && message.contains(setting), "{message}");
        }
    }

    #[test]
    fn instance_ids_follow_the_brokers_rules() {
        assert_eq!(validate_instance_id("counter.group-instance-id", None), Ok(()));
        assert_eq!(validate_instance_id("counter.group-instance-id", Some("tally-counter-0")), Ok(()));
        for bad in ["", "pod 1", "pod/1", &"x".repeat(250)] {
            let error = validate_instance_id("counter.group-instance-id", Some(bad)).unwrap_err();
            assert!(error.to_string().starts_with("counter.group-instance-id = "), "{error}");
        }
    }
}
