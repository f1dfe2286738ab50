//! The retention relation: `tally.counts` must keep its records at least as
//! long as `tally.views`.
//!
//! Why: a counter taking a partition over re-emits the ranges a previous
//! owner emitted with the same boundaries (the same versions), which it
//! learns from the flush headers in `tally.counts`. A views record still in
//! the log is covered by a flush appended after it; with the counts topic
//! kept at least as long, that flush is still there. With it kept shorter,
//! a counter that lost its group's offsets (or whose partition was idle
//! longer than the counts retention) recounts views records whose flushes
//! are gone, in new ranges with new versions, and the writer adds them again.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

use super::TopologyError;
use crate::clients::base_config;
use crate::KafkaConfig;

/// A topic's retention as the broker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `retention.ms`; `None`: kept for ever (-1).
    pub ms: Option<i64>,
    /// `retention.bytes` per partition; `None`: unbounded (-1).
    pub bytes: Option<i64>,
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ms {
            None => write!(f, "retention.ms=-1 (for ever)")?,
            Some(ms) => write!(f, "retention.ms={ms} ({})", human(ms))?,
        }
        if let Some(bytes) = self.bytes {
            write!(f, ", retention.bytes={bytes}")?;
        }
        Ok(())
    }
}

fn human(ms: i64) -> String {
    let hours = ms as f64 / 3_600_000.0;
    if hours >= 48.0 {
        format!("{:.1} days", hours / 24.0)
    } else {
        format!("{hours:.1} h")
    }
}

/// Whether `counts` keeps records at least as long as `views` does.
pub fn counts_outlive_views(views: Retention, counts: Retention) -> bool {
    match (views.ms, counts.ms) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(views), Some(counts)) => counts >= views,
    }
}

/// Reads the retention of the views and counts topics with DescribeConfigs
/// and refuses when the counts topic keeps its records for less time.
/// A size bound on the counts topic cannot be compared with anything: it is
/// logged as a warning.
pub async fn check(kafka: &KafkaConfig) -> Result<(), TopologyError> {
    let topics = &kafka.topics;
    let views = describe_settled(kafka, &topics.views).await?;
    let counts = describe_settled(kafka, &topics.counts).await?;
    if counts.bytes.is_some() {
        tracing::warn!(
            topic = %topics.counts,
            %counts,
            "the counts topic has a size bound: if it deletes flushes of views still in the views topic, a recount after lost group offsets counts them again"
        );
    }
    if counts_outlive_views(views, counts) {
        return Ok(());
    }
    Err(TopologyError::RetentionTooShort {
        views_topic: topics.views.clone(),
        views,
        counts_topic: topics.counts.clone(),
        counts,
    })
}

/// [`describe`], asked again for a while: a topic created a moment ago may
/// not be known to the broker that answers yet.
async fn describe_settled(kafka: &KafkaConfig, topic: &str) -> Result<Retention, TopologyError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match describe(kafka, topic).await {
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(topic, error = %e, "topic configuration not readable yet; asking again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcome => return outcome,
        }
    }
}

async fn describe(kafka: &KafkaConfig, topic: &str) -> Result<Retention, TopologyError> {
    let admin: AdminClient<DefaultClientContext> = base_config(kafka, "tally-topology")
        .create()
        .map_err(|source| TopologyError::Kafka { topic: topic.to_owned(), source })?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .map_err(|source| TopologyError::Kafka { topic: topic.to_owned(), source })?;
    let resource = described
        .into_iter()
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| TopologyError::Configs { topic: topic.to_owned() })?;
    let value = |name: &str| -> Result<Option<i64>, TopologyError> {
        let raw = resource.get(name).and_then(|entry| entry.value.as_deref());
        let parsed =
            raw.map(str::parse::<i64>).transpose().map_err(|_| TopologyError::Configs { topic: topic.to_owned() })?;
        Ok(parsed.filter(|v| *v >= 0))
    };
    Ok(Retention { ms: value("retention.ms")?, bytes: value("retention.bytes")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: Option<i64>) -> Retention {
        Retention { ms, bytes: None }
    }

    #[test]
    fn counts_must_be_kept_at_least_as_long_as_views() {
        let day = Some(86_400_000);
        let week = Some(7 * 86_400_000);
        assert!(counts_outlive_views(ms(week), ms(week)));
        assert!(counts_outlive_views(ms(day), ms(week)));
        assert!(!counts_outlive_views(ms(week), ms(day)));
        assert!(counts_outlive_views(ms(week), ms(None)), "counts kept for ever");
        assert!(!counts_outlive_views(ms(None), ms(week)), "views kept for ever, counts not");
        assert_eq!(ms(day).to_string(), "retention.ms=86400000 (24.0 h)");
    }
}
