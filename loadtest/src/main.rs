//! `tally-loadgen`: a load generator for Tally.
//!
//! Ingest load is open loop by default: requests are scheduled at a constant
//! arrival rate and each one's latency is measured from its *intended* send
//! time, so a slow server shows up as latency instead of silently lowering
//! the offered load (coordinated omission). `--mode closed` runs
//! `--connections` workers that each send as soon as the previous request
//! completed (the server's throughput at that concurrency). Video ids follow
//! a zipf-like distribution (hot keys), and a share of events resend an
//! earlier event id. A refused batch (408, 429, 5xx, no answer) is sent again
//! with the same ids as a well-behaved client does: never before the
//! gateway's `Retry-After`, with capped exponential backoff and full jitter,
//! up to `--retry-attempts` sends and `--retry-for` seconds (see
//! `tally_loadgen::retry`).
//!
//! At the same time, optionally: query load at a fixed rate (`--query-rate`;
//! one video's views each, or the trending list with `--query-trending`),
//! freshness probes (`--freshness-every-ms`: post one event of a new video,
//! poll until the query API shows it), and the partition spread of the views
//! topic (`--broker`: watermarks before and after). Afterwards, with
//! `--query`, the exactness check waits until the query API's counts equal
//! what was acknowledged and reports lost and duplicated views (views of
//! batches given up on may or may not be counted).
//!
//! Bounded in time (`--duration`) and count (`--max-requests`), and refuses
//! any target outside the loopback range.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use serde_json::{json, Value};
use tally_loadgen::deliver::{deliver, Request};
use tally_loadgen::exactness::{Discrepancy, Expected};
use tally_loadgen::ingest::{post_batch, BodyShape, Generator, IngestTally};
use tally_loadgen::record::Recorder;
use tally_loadgen::retry::RetryPolicy;
use tally_loadgen::{closed, imbalance, loopback, plot, prometheus_value, Rng, Zipf};

/// How ingest requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A constant arrival rate (`--rate`), latency from the intended send time.
    Open,
    /// `--connections` workers, each sending when its previous request completed.
    Closed,
}

/// Load against Tally's ingest and query APIs.
#[derive(Debug, Parser)]
#[command(name = "tally-loadgen")]
struct Args {
    /// Gateway address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ingest: String,
    /// Query API address (loopback only), for the exactness check, query load and freshness probes.
    #[arg(long)]
    query: Option<String>,
    /// Ingest pacing.
    #[arg(long, value_enum, default_value_t = Mode::Open)]
    mode: Mode,
    /// Ingest requests per second offered (open loop); 0 = no ingest load.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Workers in closed loop.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Events per request.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// How long to offer load, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds at the start left out of the "steady" percentiles.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Hard bound on ingest requests sent (retries included).
    #[arg(long, default_value_t = 1_000_000)]
    max_requests: u64,
    /// Distinct videos.
    #[arg(long, default_value_t = 1_000)]
    videos: u64,
    /// Zipf exponent of video popularity.
    #[arg(long, default_value_t = 1.2)]
    zipf: f64,
    /// Share of events that resend an earlier event id (0..1).
    #[arg(long, default_value_t = 0.05)]
    duplicates: f64,
    /// Distinct viewers: every event carries a `viewer_id` drawn from this
    /// many (the same for a resend); 0 = no viewer ids.
    #[arg(long, default_value_t = 0)]
    viewers: u64,
    /// Ingest requests allowed in flight at once (open loop).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Query requests per second offered (open loop, `GET /v1/videos/{id}/views`, zipf ids); 0 = none.
    #[arg(long, default_value_t = 0)]
    query_rate: u64,
    /// Query requests allowed in flight at once.
    #[arg(long, default_value_t = 512)]
    query_concurrency: usize,
    /// The query load asks `GET /v1/trending?window=1h&limit=100` instead of one video's views.
    #[arg(long)]
    query_trending: bool,
    /// Send a freshness probe this often, in milliseconds; 0 = none.
    #[arg(long, default_value_t = 0)]
    freshness_every_ms: u64,
    /// How often a probe polls the query API, in milliseconds.
    #[arg(long, default_value_t = 10)]
    freshness_poll_ms: u64,
    /// Kafka-protocol broker (loopback only): report how the run's records spread over the views topic's partitions.
    #[arg(long)]
    broker: Option<String>,
    /// The views topic.
    #[arg(long, default_value = "tally.views")]
    topic: String,
    /// The gateway's metrics address (loopback only): report events salted during the run.
    #[arg(long)]
    metrics: Option<String>,
    /// Skip the exactness check even with `--query`.
    #[arg(long)]
    no_exactness: bool,
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Write an SVG plot of the ingest (or, without ingest, query) throughput and latency here.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Backoff window before the first retry of a refused request, in ms (doubles per retry, full jitter).
    #[arg(long, default_value_t = 100)]
    retry_base_ms: u64,
    /// Largest backoff window, in ms.
    #[arg(long, default_value_t = 10_000)]
    retry_cap_ms: u64,
    /// Sends of one request at most, the first included.
    #[arg(long, default_value_t = 30)]
    retry_attempts: u32,
    /// Seconds after its first send when a refused request is given up.
    #[arg(long, default_value_t = 120)]
    retry_for: u64,
}

/// The most views the tally reserves room for up front (about 0.5 GB of
/// address space; pages are touched only as views arrive).
const MAX_RESERVED_EVENTS: usize = 16 << 20;

impl Args {
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(self.retry_base_ms),
            cap: Duration::from_millis(self.retry_cap_ms),
            max_attempts: self.retry_attempts.max(1),
            give_up_after: Duration::from_secs(self.retry_for),
        }
    }

    /// The events an open-loop run offers (its requests, bounded by
    /// `max_requests`, times `batch`), at most [`MAX_RESERVED_EVENTS`]; a
    /// closed-loop run's are not known in advance (0: the tally grows as it goes).
    fn expected_events(&self) -> usize {
        let requests = match self.mode {
            Mode::Open => self.rate.saturating_mul(self.duration).min(self.max_requests),
            Mode::Closed => 0,
        };
        usize::try_from(requests).map_or(MAX_RESERVED_EVENTS, |r| r.saturating_mul(self.batch).min(MAX_RESERVED_EVENTS))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Per-partition high watermarks of `topic`.
fn watermarks(broker: &str, topic: &str) -> anyhow::Result<Vec<i64>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "tally-loadgen-watermarks")
        .set("enable.auto.commit", "false")
        .create()
        .context("Kafka client")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).context("topic metadata")?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else { bail!("no topic {topic}") };
    let mut partitions: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        bail!("topic {topic} has no partitions (not created yet?)");
    }
    partitions.iter().map(|p| Ok(consumer.fetch_watermarks(topic, *p, timeout).context("watermarks")?.1)).collect()
}

async fn scrape(http: &reqwest::Client, address: &str, name: &str) -> Option<f64> {
    let text = http.get(format!("http://{address}/metrics")).send().await.ok()?.text().await.ok()?;
    prometheus_value(&text, name)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    for address in
        [Some(&args.ingest), args.query.as_ref(), args.broker.as_ref(), args.metrics.as_ref()].into_iter().flatten()
    {
        loopback(address)?;
    }
    if (args.query_rate > 0 || args.freshness_every_ms > 0) && args.query.is_none() {
        bail!("--query-rate and --freshness-every-ms need --query");
    }
    let ingesting = match args.mode {
        Mode::Open => args.rate > 0,
        Mode::Closed => args.connections > 0,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.concurrency.max(args.query_concurrency))
        .build()?;
    // Videos and event ids are unique to this run, so its checks are not
    // confused by counts of earlier runs against the same pipeline.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() % 1_000_000_000;
    let generator = Arc::new(Mutex::new(Generator::new(run, args.videos, args.zipf, args.duplicates)));
    let shape = BodyShape { run, viewers: args.viewers };
    let policy = args.retry_policy();
    let before_partitions = match &args.broker {
        Some(broker) => Some(watermarks(broker, &args.topic)?),
        None => None,
    };
    let salted_before = match &args.metrics {
        Some(m) => scrape(&http, m, "tally_ingest_events_salted_total").await,
        None => None,
    };
    let shared = Arc::new(Mutex::new(IngestTally::with_capacity(args.expected_events())));
    let ingest = Arc::new(Mutex::new(Recorder::new()));
    let queries = Arc::new(Mutex::new(Recorder::new()));
    let freshness = Arc::new(Mutex::new(Recorder::new()));
    let query_failures = Arc::new(AtomicU64::new(0));
    let probe_problems = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration);
    let mut workloads = tokio::task::JoinSet::new();

    let ingest_url = format!("http://{}/v1/events", args.ingest);
    let closed_outcome = Arc::new(Mutex::new(None));
    if ingesting {
        let (args, http, generator, shared, ingest, sent, url, outcome) = (
            args.clone(),
            http.clone(),
            generator.clone(),
            shared.clone(),
            ingest.clone(),
            sent.clone(),
            ingest_url.clone(),
            closed_outcome.clone(),
        );
        workloads.spawn(async move {
            match args.mode {
                Mode::Open => open_ingest(&args, http, generator, shared, ingest, sent, url, started, end).await,
                Mode::Closed => {
                    let max = args.max_requests;
                    let batch = args.batch;
                    let o = closed::run(args.connections, started, end, max, ingest, move |_| {
                        let (http, generator, shared, sent, url) =
                            (http.clone(), generator.clone(), shared.clone(), sent.clone(), url.clone());
                        async move {
                            let events = lock(&generator).batch(batch);
                            post_batch(&http, &url, shape, &events, &policy, (&sent, max), &shared)
                                .await
                                .then_some(events.len() as u64)
                        }
                    })
                    .await;
                    *lock(&outcome) = Some(o);
                }
            }
        });
    }
    if let (true, Some(query)) = (args.query_rate > 0, &args.query) {
        let (args, http, queries, failures, url) =
            (args.clone(), http.clone(), queries.clone(), query_failures.clone(), format!("http://{query}/v1/videos"));
        let base = format!("http://{query}");
        workloads.spawn(async move {
            let zipf = Zipf::new(args.videos, args.zipf);
            let mut rng = Rng(0x00dd_ba11_5eed ^ run as u64);
            let permits = Arc::new(tokio::sync::Semaphore::new(args.query_concurrency));
            let interval = Duration::from_secs_f64(1.0 / args.query_rate as f64);
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0u32.. {
                let intended = started + interval * n;
                if intended >= end {
                    break;
                }
                if intended > Instant::now() {
                    tokio::time::sleep_until(intended.into()).await;
                }
                let url = if args.query_trending {
                    format!("{base}/v1/trending?window=1h&limit=100")
                } else {
                    format!("{url}/r{run}-video-{}/views", zipf.sample(rng.uniform()))
                };
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let (http, queries, failures) = (http.clone(), queries.clone(), failures.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    let ok = matches!(http.get(&url).send().await, Ok(r) if r.status().is_success());
                    if ok {
                        let latency = micros_since(intended);
                        lock(&queries).record(started.elapsed().as_secs_f64(), latency, 1);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        });
    }
    if let (true, Some(query)) = (args.freshness_every_ms > 0, &args.query) {
        let (args, http, freshness, problems, query, ingest_url) =
            (args.clone(), http.clone(), freshness.clone(), probe_problems.clone(), query.clone(), ingest_url.clone());
        workloads.spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let every = Duration::from_millis(args.freshness_every_ms);
            for n in 0u32.. {
                let at = started + every * n;
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let (http, freshness, problems, query, ingest_url) =
                    (http.clone(), freshness.clone(), problems.clone(), query.clone(), ingest_url.clone());
                let poll = Duration::from_millis(args.freshness_poll_ms.max(1));
                tasks.spawn(async move {
                    let problem = |what: &str| *lock(&problems).entry(what.to_owned()).or_default() += 1;
                    let video = format!("r{run}-fresh-{n}");
                    let body = json!({"video_id": video, "event_id": format!("r{run}-fresh-{n}")});
                    let request =
                        Request { url: ingest_url, content_type: "application/json", body: body.to_string().into() };
                    let posted = Instant::now();
                    let give_up = posted + Duration::from_secs(60);
                    let policy =
                        RetryPolicy { give_up_after: policy.give_up_after.min(Duration::from_secs(60)), ..policy };
                    if !deliver(&http, &request, &policy, &mut Rng(u64::from(n) | 1), || true).await.accepted() {
                        return problem("not acknowledged within the retry bounds (at most 60 s)");
                    }
                    let views_url = format!("http://{query}/v1/videos/{video}/views");
                    loop {
                        if let Ok(r) = http.get(&views_url).send().await {
                            if let Ok(v) = r.json::<Value>().await {
                                match v["views"].as_i64() {
                                    Some(1) => break,
                                    Some(0) | None => {}
                                    Some(_) => {
                                        problem("counted more than once");
                                        break;
                                    }
                                }
                            }
                        }
                        if Instant::now() > give_up {
                            return problem("not visible in 60 s");
                        }
                        tokio::time::sleep(poll).await;
                    }
                    lock(&freshness).record(started.elapsed().as_secs_f64(), micros_since(posted), 1);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        });
    }
    // Live progress, once a second, on stderr.
    let progress = {
        let (ingest, queries, freshness, sent) = (ingest.clone(), queries.clone(), freshness.clone(), sent.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let t = started.elapsed().as_secs();
                let last = |r: &Mutex<Recorder>| {
                    let r = lock(r);
                    r.timeline().get(t.saturating_sub(1) as usize).map_or((0, 0.0), |s| (s.events, s.p99_ms))
                };
                let (events, ingest_p99) = last(&ingest);
                let (queries_done, query_p99) = last(&queries);
                let fresh = lock(&freshness).overall();
                eprint!(
                    "\rloadgen {t:>4} s | ingest {events:>7} ev/s p99 {ingest_p99:>8.2} ms, {} req sent | query {queries_done:>6} req/s p99 {query_p99:>7.2} ms | freshness p50 {:.0} p99 {:.0} ms   ",
                    sent.load(Ordering::Relaxed),
                    fresh.p50,
                    fresh.p99
                );
            }
        })
    };
    while let Some(done) = workloads.join_next().await {
        done.context("workload task")?;
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!();

    let (expected, events_acknowledged, answers) = {
        let s = lock(&shared);
        (s.expected(), s.events_acknowledged, s.summary())
    };
    let steady = |r: &Recorder| {
        let (p, requests, events) = r.window(args.warmup, args.duration);
        let seconds = args.duration.saturating_sub(args.warmup).max(1) as f64;
        json!({ "from_s": args.warmup, "to_s": args.duration, "requests_per_s": requests as f64 / seconds, "events_per_s": events as f64 / seconds, "latency_ms": p })
    };
    let mut result = json!({ "run": run, "duration_s": elapsed });
    if ingesting {
        let r = lock(&ingest);
        result["ingest"] = json!({
            "mode": format!("{:?}", args.mode).to_lowercase(),
            "offered_rate_rps": (args.mode == Mode::Open).then_some(args.rate),
            "connections": (args.mode == Mode::Closed).then_some(args.connections),
            "batch": args.batch,
            "requests_acknowledged": r.requests(),
            "requests_sent": sent.load(Ordering::Relaxed),
            "answers": answers,
            "retry_policy": {
                "base_ms": policy.base.as_millis(),
                "cap_ms": policy.cap.as_millis(),
                "max_attempts": policy.max_attempts,
                "give_up_after_s": policy.give_up_after.as_secs(),
            },
            "events_acknowledged": events_acknowledged,
            "events_per_s": events_acknowledged as f64 / elapsed,
            "latency_ms": r.overall(),
            "latency_from": if args.mode == Mode::Open { "intended send time" } else { "actual send time" },
            "steady": steady(&r),
            "timeline": r.timeline(),
        });
        if let Some(o) = *lock(&closed_outcome) {
            result["ingest"]["closed_loop"] =
                json!({"attempted": o.attempted, "succeeded": o.succeeded, "failed": o.failed});
        }
    }
    if args.query_rate > 0 {
        let r = lock(&queries);
        result["query"] = json!({
            "offered_rate_rps": args.query_rate,
            "requests_ok": r.requests(),
            "failures": query_failures.load(Ordering::Relaxed),
            "requests_per_s": r.requests() as f64 / elapsed,
            "latency_ms": r.overall(),
            "latency_from": "intended send time",
            "steady": steady(&r),
            "timeline": r.timeline(),
        });
    }
    if args.freshness_every_ms > 0 {
        let r = lock(&freshness);
        result["freshness"] = json!({
            "what": "POST of one event of a new video until GET shows it (includes the ingest acknowledgement)",
            "probes_every_ms": args.freshness_every_ms,
            "poll_ms": args.freshness_poll_ms,
            "probes_visible": r.requests(),
            "problems": *lock(&probe_problems),
            "latency_ms": r.overall(),
        });
    }
    if let (Some(broker), Some(before)) = (&args.broker, &before_partitions) {
        let after = watermarks(broker, &args.topic)?;
        result["partitions"] = json!({ "topic": args.topic, "spread": imbalance(before, &after) });
    }
    if let (Some(m), Some(before)) = (&args.metrics, salted_before) {
        let after = scrape(&http, m, "tally_ingest_events_salted_total").await.unwrap_or(before);
        let hot = scrape(&http, m, "tally_ingest_hot_videos").await;
        result["salting"] = json!({ "events_salted": after - before, "hot_videos_at_end": hot });
    }
    if let (Some(path), true) = (&args.plot, ingesting || args.query_rate > 0) {
        let (name, unit, timeline) = if ingesting {
            ("ingest", "events", lock(&ingest).timeline())
        } else {
            ("query", "requests", lock(&queries).timeline())
        };
        let mode = if ingesting { format!("{:?}", args.mode).to_lowercase() } else { "open".into() };
        let title = format!("tally-loadgen run {run}: {name}, {mode} loop");
        std::fs::write(path, plot::render(&title, unit, &timeline)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(query), true, false) = (&args.query, ingesting, args.no_exactness) {
        let Discrepancy { lost, duplicated } = exactness(&http, query, &expected).await?;
        result["exactness"] = json!({
            "videos": expected.videos().count(),
            "views": expected.acknowledged(),
            "views_maybe_counted": expected.at_most.values().sum::<i64>() - expected.acknowledged(),
            "lost": lost,
            "duplicated": duplicated,
        });
    }
    // The summary without the per-second timelines, which go to --out.
    let mut summary = result.clone();
    for part in ["ingest", "query"] {
        if let Some(o) = summary.get_mut(part).and_then(Value::as_object_mut) {
            o.remove("timeline");
        }
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    Ok(())
}

/// Open-loop ingest at `--rate` requests per second.
#[allow(clippy::too_many_arguments)]
async fn open_ingest(
    args: &Args,
    http: reqwest::Client,
    generator: Arc<Mutex<Generator>>,
    shared: Arc<Mutex<IngestTally>>,
    ingest: Arc<Mutex<Recorder>>,
    sent: Arc<AtomicU64>,
    url: String,
    started: Instant,
    end: Instant,
) {
    let shape = BodyShape { run: lock(&generator).run, viewers: args.viewers };
    let policy = args.retry_policy();
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0u32.. {
        let intended = started + interval * n;
        if intended >= end || sent.load(Ordering::Relaxed) >= args.max_requests {
            break;
        }
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let events = lock(&generator).batch(args.batch);
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let (http, shared, ingest, sent, url) =
            (http.clone(), shared.clone(), ingest.clone(), sent.clone(), url.clone());
        let max = args.max_requests;
        tasks.spawn(async move {
            let _permit = permit;
            if post_batch(&http, &url, shape, &events, &policy, (&sent, max), &shared).await {
                lock(&ingest).record(started.elapsed().as_secs_f64(), micros_since(intended), events.len() as u64);
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Waits (up to 120 s) until the query API's counts are exact; the last discrepancy.
async fn exactness(http: &reqwest::Client, query: &str, expected: &Expected) -> anyhow::Result<Discrepancy> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let ids: Vec<&String> = expected.videos().collect();
    loop {
        let mut got = BTreeMap::new();
        for chunk in ids.chunks(1_000) {
            let body: Value = http
                .post(format!("http://{query}/v1/views:batchGet"))
                .json(&json!({ "video_ids": chunk }))
                .send()
                .await?
                .json()
                .await?;
            for r in body["results"].as_array().into_iter().flatten() {
                let video = r["video_id"].as_str().context("a result without video_id")?;
                let views = r["views"].as_i64().context("a result without views")?;
                got.insert(video.to_owned(), views);
            }
        }
        let discrepancy = expected.discrepancy(&got);
        if discrepancy.exact() || Instant::now() > deadline {
            return Ok(discrepancy);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
