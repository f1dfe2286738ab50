//! When a group member that holds no partition should rejoin its group
//! ([`crate::KafkaConfig::rejoin_when_unassigned`]): one clock, shared by
//! the counter and the writer.

use std::time::{Duration, Instant};

/// Tracks how long a consumer has held no partition.
#[derive(Debug, Clone)]
pub struct UnassignedWatch {
    after: Option<Duration>,
    since: Instant,
}

impl UnassignedWatch {
    /// A watch that asks for a rejoin after `after` without a partition;
    /// never when `after` is `None`.
    pub fn new(after: Option<Duration>) -> Self {
        Self { after, since: Instant::now() }
    }

    /// Whether the consumer should rejoin now, given whether it holds a
    /// partition. Asking restarts the clock, so a member that stays empty
    /// rejoins once per period, not on every check.
    pub fn should_rejoin(&mut self, assigned: bool) -> bool {
        self.should_rejoin_at(assigned, Instant::now())
    }

    fn should_rejoin_at(&mut self, assigned: bool, now: Instant) -> bool {
        let Some(after) = self.after else { return false };
        if assigned {
            self.since = now;
            return false;
        }
        if now.saturating_duration_since(self.since) < after {
            return false;
        }
        tracing::warn!(unassigned_for = ?now.saturating_duration_since(self.since), "no partition assigned for too long; rejoining the group");
        self.since = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(15);

    #[test]
    fn an_empty_member_rejoins_once_per_period() {
        let mut watch = UnassignedWatch::new(Some(AFTER));
        let start = watch.since;
        assert!(!watch.should_rejoin_at(false, start + AFTER - Duration::from_millis(1)));
        assert!(watch.should_rejoin_at(false, start + AFTER));
        assert!(!watch.should_rejoin_at(false, start + AFTER + Duration::from_secs(1)), "asked again right after");
        assert!(watch.should_rejoin_at(false, start + AFTER * 2));
    }

    #[test]
    fn holding_a_partition_restarts_the_clock() {
        let mut watch = UnassignedWatch::new(Some(AFTER));
        let start = watch.since;
        assert!(!watch.should_rejoin_at(true, start + AFTER));
        assert!(!watch.should_rejoin_at(false, start + AFTER + Duration::from_secs(14)));
        assert!(watch.should_rejoin_at(false, start + AFTER * 2));
    }

    #[test]
    fn without_a_limit_a_member_never_rejoins() {
        let mut watch = UnassignedWatch::new(None);
        assert!(!watch.should_rejoin_at(false, watch.since + Duration::from_secs(3600)));
    }
}
