//! `tally-loadgen`: an open-loop load generator for the ingest API.
//!
//! Requests are scheduled at a constant arrival rate and each one's latency
//! is measured from its *intended* send time, so a slow server shows up as
//! latency instead of silently lowering the offered load (coordinated
//! omission). Video ids follow a zipf-like distribution (hot keys), a share of
//! events resend an earlier event id, and every batch is retried with the same
//! ids until the gateway answers 202. With `--query`, it then waits until the
//! query API's counts equal what was acknowledged and reports lost and
//! duplicated views.
//!
//! Bounded in time (`--duration`) and count (`--max-requests`), and refuses
//! any target outside the loopback range.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Open-loop load against the ingest API.
#[derive(Debug, Parser)]
#[command(name = "tally-loadgen")]
struct Args {
    /// Gateway address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ingest: String,
    /// Query API address for the exactness check (loopback only); no check when absent.
    #[arg(long)]
    query: Option<String>,
    /// Requests per second offered (open loop).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Events per request.
    #[arg(long, default_value_t = 10)]
    batch: usize,
    /// How long to offer load, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Hard bound on requests sent (retries included).
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
    /// Requests allowed in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn loopback(address: &str) -> anyhow::Result<()> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h).trim_matches(['[', ']']);
    let ok = host == "localhost" || host == "::1" || host.starts_with("127.");
    if !ok {
        bail!("{address}: load may only target loopback addresses (127.0.0.0/8, ::1)");
    }
    Ok(())
}

/// Zipf-like sampler over `n` items by inverse CDF on precomputed weights.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: u64, exponent: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(exponent);
                total
            })
            .collect::<Vec<_>>();
        Self { cumulative: cumulative.into_iter().map(|c| c / total).collect() }
    }

    fn sample(&self, uniform: f64) -> usize {
        self.cumulative.partition_point(|c| *c < uniform)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Default)]
struct Shared {
    acknowledged: BTreeMap<String, i64>,
    /// Distinct `(video, id)` acknowledged: what a correct pipeline counts.
    distinct: std::collections::HashSet<(String, u64)>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    loopback(&args.ingest)?;
    if let Some(query) = &args.query {
        loopback(query)?;
    }
    let http =
        reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(args.concurrency).build()?;
    let zipf = Zipf::new(args.videos, args.zipf);
    // Videos and event ids are unique to this run, so its exactness check is not
    // confused by counts of earlier runs against the same pipeline.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() % 1_000_000_000;
    let mut rng = Rng(0x5eed_1234_abcd_0001 ^ run as u64);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let sent = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration);
    let mut next_id: u64 = 0;
    let mut tasks = Vec::new();
    let mut scheduled = 0u64;
    let mut last_report = Instant::now();
    while Instant::now() < end && sent.load(Ordering::Relaxed) < args.max_requests {
        let intended = started + interval * u32::try_from(scheduled).unwrap_or(u32::MAX);
        scheduled += 1;
        if intended > Instant::now() {
            tokio::time::sleep_until(intended.into()).await;
        }
        let events: Vec<(String, u64)> = (0..args.batch)
            .map(|_| {
                let resend = next_id > 0 && rng.uniform() < args.duplicates;
                let id = if resend { rng.next() % next_id } else { next_id };
                if !resend {
                    next_id += 1;
                }
                // The video is a function of the id, so a resend is the same view.
                let video = zipf.sample(Rng(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1).uniform());
                (format!("r{run}-video-{video}"), id)
            })
            .collect();
        let body: Vec<Value> =
            events.iter().map(|(v, id)| json!({"video_id": v, "event_id": format!("r{run}-{id}")})).collect();
        let permit = permits.clone().acquire_owned().await?;
        let (task_http, task_shared, task_histogram, task_sent) =
            (http.clone(), shared.clone(), histogram.clone(), sent.clone());
        let url = format!("http://{}/v1/events", args.ingest);
        let max = args.max_requests;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            loop {
                if task_sent.fetch_add(1, Ordering::Relaxed) >= max {
                    return;
                }
                match task_http.post(&url).json(&body).send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let mut s = task_shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        *s.statuses.entry(status).or_default() += 1;
                        if status == 202 {
                            let micros = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX);
                            let _ = task_histogram
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .record(micros.max(1));
                            for (video, id) in &events {
                                *s.acknowledged.entry(video.clone()).or_default() += 1;
                                s.distinct.insert((video.clone(), *id));
                            }
                            return;
                        }
                    }
                    Err(_) => task_shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner).errors += 1,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let h = histogram.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            eprint!(
                "\rloadgen: {:>5.1} s, {} requests sent, p50 {:.2} ms, p99 {:.2} ms   ",
                started.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0
            );
        }
    }
    for task in tasks {
        task.await.context("request task")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!();
    let (acknowledged, statuses, errors, distinct) = {
        let s = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Resends of one id count once: expected views per video = distinct ids acknowledged.
        let mut distinct: BTreeMap<String, i64> = BTreeMap::new();
        for (video, _) in &s.distinct {
            *distinct.entry(video.clone()).or_default() += 1;
        }
        (s.acknowledged.clone(), s.statuses.clone(), s.errors, distinct)
    };
    let h = histogram.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let accepted_events: i64 = acknowledged.values().sum();
    let mut result = json!({
        "run": run,
        "offered_rate_rps": args.rate,
        "batch": args.batch,
        "duration_s": elapsed,
        "requests_acknowledged": statuses.get(&202).copied().unwrap_or(0),
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "transport_errors": errors,
        "events_acknowledged": accepted_events,
        "events_per_s": accepted_events as f64 / elapsed,
        "latency_ms": {
            "p50": h.value_at_quantile(0.5) as f64 / 1000.0,
            "p90": h.value_at_quantile(0.9) as f64 / 1000.0,
            "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
            "max": h.max() as f64 / 1000.0,
        },
    });
    if let Some(query) = &args.query {
        let (lost, duplicated) = exactness(&http, query, &distinct).await?;
        result["exactness"] = json!({ "videos": distinct.len(), "views": distinct.values().sum::<i64>(), "lost": lost, "duplicated": duplicated });
    }
    let text = serde_json::to_string_pretty(&result)?;
    println!("{text}");
    if let Some(path) = &args.out {
        std::fs::write(path, &text)?;
    }
    Ok(())
}

async fn exactness(
    http: &reqwest::Client,
    query: &str,
    expected: &BTreeMap<String, i64>,
) -> anyhow::Result<(i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let ids: Vec<&String> = expected.keys().collect();
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
                got.insert(r["video_id"].as_str().unwrap_or_default().to_owned(), r["views"].as_i64().unwrap_or(0));
            }
        }
        let lost: i64 = expected.iter().map(|(v, n)| (n - got.get(v).copied().unwrap_or(0)).max(0)).sum();
        let duplicated: i64 = expected.iter().map(|(v, n)| (got.get(v).copied().unwrap_or(0) - n).max(0)).sum();
        if (lost == 0 && duplicated == 0) || Instant::now() > deadline {
            return Ok((lost, duplicated));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
