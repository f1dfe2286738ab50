//! Client construction. Every client gets the bootstrap servers and the
//! operator's extra properties; producers are idempotent with `acks=all`,
//! because the gateway promises "acknowledged means durable".

use std::time::Duration;

use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientContext;

use crate::{GroupMember, GroupProtocol, KafkaConfig, KafkaSetupError};

/// The base configuration of any client.
pub fn base_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    client.set("client.id", client_id);
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
}

/// A consumer of `member`'s group that commits by hand (only once its output
/// is durable) and starts from the earliest offset when the group has none,
/// with the configured group protocol, assignment strategy (`classic` only:
/// librdkafka refuses one with the `consumer` protocol) and static identity.
/// Fetching keeps librdkafka's defaults, which suit Apache Kafka: the broker
/// answers a fetch as soon as one byte is there (`fetch.min.bytes=1`) or
/// after `fetch.wait.max.ms` (500 ms) on an idle partition. The operator's
/// consumer properties come last (those that conflict are refused by
/// [`KafkaConfig::validate_membership`] at start-up).
pub fn group_consumer_config(config: &KafkaConfig, client_id: &str, member: &GroupMember<'_>) -> ClientConfig {
    let mut client = base_config(config, client_id);
    client
        .set("group.id", member.group_id)
        .set("group.protocol", config.group_protocol.name())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    if config.group_protocol == GroupProtocol::Classic {
        client.set("partition.assignment.strategy", config.classic_strategy().name());
    }
    if let Some(instance_id) = member.instance_id {
        client.set("group.instance.id", instance_id);
    }
    for (key, value) in &config.consumer_properties {
        client.set(key, value);
    }
    client
}

/// Producer settings that make "acknowledged" mean "durable".
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// How long librdkafka keeps retrying one record before failing it.
    pub delivery_timeout: Duration,
    /// How long records wait to be batched.
    pub linger: Duration,
    /// Most records librdkafka may hold; callers admit fewer than this.
    pub queue_capacity: usize,
}

/// An idempotent producer with `acks=all` (a retried batch is written once
/// and in order), using the Java client's murmur2 partitioner, so keys land
/// on the same partitions as with Kafka Streams or any JVM producer.
/// An idempotent producer can fail fatally (the broker fenced its producer
/// id, an unrecoverable sequence gap): callers check
/// [`fatal_error`] on delivery failures and stop, so that their supervisor
/// restarts them with a fresh producer.
pub fn idempotent_producer(
    config: &KafkaConfig,
    client_id: &str,
    settings: &ProducerSettings,
) -> Result<FutureProducer, KafkaSetupError> {
    idempotent_producer_with_context(config, client_id, settings, DefaultClientContext)
}

/// [`idempotent_producer`] as any producer type (a `ThreadedProducer` with
/// its own delivery callback, a `FutureProducer` with statistics or logging)
/// and its context.
pub fn idempotent_producer_with_context<P, C>(
    config: &KafkaConfig,
    client_id: &str,
    settings: &ProducerSettings,
    context: C,
) -> Result<P, KafkaSetupError>
where
    P: FromClientConfigAndContext<C>,
    C: ClientContext,
{
    let mut client = base_config(config, client_id);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", millis(settings.delivery_timeout))
        .set("linger.ms", millis(settings.linger))
        .set("queue.buffering.max.messages", settings.queue_capacity.to_string());
    // The operator's properties win over the defaults above.
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client.create_with_context(context).map_err(|source| KafkaSetupError::Client { what: "producer", source })
}

/// Milliseconds as librdkafka wants them (at least 1).
pub fn millis(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}

/// Whether a consumer error is passing (broker down, a fetch failed): the
/// consumer keeps going and librdkafka reconnects. Fatal errors end it.
pub fn is_transient(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::KafkaError;
    matches!(error, KafkaError::MessageConsumption(_) | KafkaError::PartitionEOF(_) | KafkaError::Global(_))
}

/// Why [`run_within`] has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfinished {
    /// The thread could not be started.
    NotStarted,
    /// The budget ran out; the work goes on unobserved.
    TimedOut,
}

/// Runs `work` on a thread named `name` and waits at most `budget` for its
/// result. Blocking librdkafka calls (a synchronous commit, closing a group
/// consumer) can wait out a group session when the coordinator is gone; a
/// service shutting down bounds them this way and leaves the rest to the
/// broker, which expires the member as after a crash.
pub fn run_within<T: Send + 'static>(
    name: &str,
    budget: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Unfinished> {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = done_tx.send(work());
        })
        .map_err(|_| Unfinished::NotStarted)?;
    done_rx.recv_timeout(budget).map_err(|_| Unfinished::TimedOut)
}

/// Drops `client` (leaving its group, for a group consumer) within `budget`
/// ([`run_within`]); true when the drop finished. A client other handles
/// still share closes when the last one goes.
pub fn drop_within<T: Send + 'static>(client: T, budget: Duration) -> bool {
    run_within("tally-kafka-close", budget, move || drop(client)).is_ok()
}
