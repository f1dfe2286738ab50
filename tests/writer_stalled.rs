//! A writer frozen with SIGSTOP (alive, holding its partitions and its
//! sockets, doing nothing: a stopped VM or container) is detected by the
//! shipped alert rules within 5 minutes. A real Prometheus scrapes the writer
//! and evaluates infra/prometheus/alerts.yml every second; the writer also
//! exports its own lag on tally.counts and a loop heartbeat.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::query::store_totals_become;
use common::{counter_writer_sections, write_config, Load, TallyProcess, ViewsProducer};
use tally_testkit::{bounded, Broker};

/// Lines of `metrics` for `name` with labels.
fn labelled<'a>(metrics: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}{{");
    metrics.lines().filter(|l| l.starts_with(&prefix)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_stopped_with_sigstop_fires_tally_writer_down_within_five_minutes() {
    bounded(Duration::from_secs(290), async {
        let broker = Broker::shared();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("counts.db");
        let config = write_config(dir.path(), &kafka, &counter_writer_sections(&db, ""));
        let mut load = Load::new(0x0051_670b);
        let mut producer = ViewsProducer::new(&kafka, &[]);
        let _counter = TallyProcess::spawn(&config, "counter");
        let writer = TallyProcess::spawn(&config, "writer");
        producer.send(&load.batch(1_000, tally_model::timestamp::now_ms(), 20)).await;
        assert!(writer.wait_for_metric("tally_writer_batches_total", 1.0, Duration::from_secs(60)), "the writer wrote");

        // The writer's own lag on tally.counts, per partition it holds, and
        // its heartbeat, close to now.
        let deadline = Instant::now() + Duration::from_secs(20);
        while labelled(&writer.metrics(), "tally_writer_consumer_lag_records").is_empty() {
            assert!(Instant::now() < deadline, "no tally_writer_consumer_lag_records series:\n{}", writer.metrics());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let heartbeat = writer.metric("tally_writer_heartbeat_timestamp_seconds").expect("a heartbeat");
        let now = tally_model::timestamp::now_ms() as f64 / 1000.0;
        assert!((now - heartbeat).abs() < 5.0, "heartbeat {heartbeat} is not close to now {now}");

        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/prometheus/alerts.yml");
        let prometheus = Prometheus::start(dir.path(), &[("tally-writer", &writer.admin)], &[&rules]);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        // Healthy: scraped, and neither writer alert pending or firing.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = prometheus.query(&http, "up{job=\"tally-writer\"} == 1").await;
            if up["data"]["result"].as_array().is_some_and(|r| r.len() == 1) {
                break;
            }
            assert!(Instant::now() < deadline, "prometheus never scraped the writer: {up}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        for alert in ["TallyWriterDown", "TallyWriterStalled"] {
            for state in ["pending", "firing"] {
                let seen = prometheus.alerts(&http, alert, state).await;
                assert!(seen.is_empty(), "{alert} is {state} on a healthy writer: {seen:?}");
            }
        }

        writer.freeze();
        let frozen = Instant::now();
        producer.send(&load.batch(1_000, tally_model::timestamp::now_ms(), 20)).await;
        let firing = loop {
            let firing = prometheus.alerts(&http, "TallyWriterDown", "firing").await;
            if let Some(alert) = firing.into_iter().find(|a| a["labels"]["instance"] == writer.admin.as_str()) {
                break alert;
            }
            assert!(frozen.elapsed() < Duration::from_secs(300), "TallyWriterDown did not fire within 5 minutes");
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        eprintln!("TallyWriterDown fired {:?} after SIGSTOP: {firing}", frozen.elapsed());
        assert_eq!(firing["labels"]["severity"], "critical");

        // Thawed, it applies what waited: nothing was lost.
        writer.thaw();
        store_totals_become(&db, &producer.expected, Duration::from_secs(60), "after the thaw").await;
        assert!(writer.terminate(Duration::from_secs(30)).success());
    })
    .await;
}
