//! `tally-naive-counter`: the naive baseline of the peer comparison. Reads
//! the views topic from the start and sends one Redis `INCR` per record
//! (key: the record key and the minute of its timestamp), waiting for each
//! answer: no pre-aggregation, no batching, no dedup. Stops when `--expect`
//! records were counted (or at `--timeout`) and prints JSON.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::Message as _;

/// One Redis INCR per event.
#[derive(Debug, Parser)]
struct Args {
    /// Kafka-protocol broker (loopback only).
    #[arg(long)]
    broker: String,
    /// Topic to count.
    #[arg(long, default_value = "tally.views")]
    topic: String,
    /// Redis URL (loopback only).
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    redis: String,
    /// Records to count before stopping.
    #[arg(long)]
    expect: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tally_loadgen::loopback(&args.broker)?;
    let redis_host = args.redis.trim_start_matches("redis://").split('/').next().unwrap_or_default();
    tally_loadgen::loopback(redis_host)?;
    let mut redis = redis::Client::open(args.redis.as_str())?.get_connection().context("Redis")?;
    let group = format!("tally-naive-{}", std::process::id());
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &args.broker)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()?;
    consumer.subscribe(&[&args.topic])?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout);
    let mut first: Option<Instant> = None;
    let mut counted = 0u64;
    while counted < args.expect {
        if Instant::now() > deadline {
            bail!("timed out after {counted} of {} records", args.expect);
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message?;
        first.get_or_insert_with(Instant::now);
        let minute = message.timestamp().to_millis().unwrap_or(0).div_euclid(60_000);
        let key = String::from_utf8_lossy(message.key().unwrap_or_default());
        let _: i64 = redis::cmd("INCR").arg(format!("naive:{key}:{minute}")).query(&mut redis)?;
        counted += 1;
    }
    let first = first.unwrap_or(started);
    let seconds = first.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "counter": "naive: one Redis INCR per event",
            "records": counted,
            "seconds_from_first_record": seconds,
            "seconds_with_group_join": started.elapsed().as_secs_f64(),
            "events_per_s": counted as f64 / seconds,
        })
    );
    Ok(())
}
