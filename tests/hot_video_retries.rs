//! Issue 15, item 1, end to end: the events of hot videos, sent without `ts`
//! (the gateway's clock stands in), each retried through a second gateway
//! whose detector never saw the videos and again through the first gateway
//! restarted, are counted once. Checked against what the gateways
//! acknowledged, with an oracle that shares no code with the writer, again
//! once the counter has committed the whole views topic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus::Registry;
use tally_counter::{CounterConfig, CounterService};
use tally_ingest::{IngestConfig, IngestService};
use tally_kafka::KafkaConfig;
use tally_model::SaltingConfig;
use tally_service::Readiness;
use tally_testkit::counts::settled_views;
use tally_testkit::{bounded, Broker};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A gateway in this process.
struct Gateway {
    url: String,
    stop: CancellationToken,
    task: JoinHandle<Result<(), tally_ingest::IngestError>>,
}

impl Gateway {
    async fn start(kafka: &KafkaConfig, salting: &SaltingConfig) -> Self {
        let config = IngestConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            salting: salting.clone(),
            ..IngestConfig::default()
        };
        let service =
            IngestService::build(&config, kafka, &Registry::new(), &Readiness::default()).await.expect("gateway");
        let url = format!("http://{}/v1/events", service.local_addr());
        let stop = CancellationToken::new();
        let task = tokio::spawn(service.run(stop.clone()));
        Self { url, stop, task }
    }

    /// POSTs `body` (NDJSON) until the gateway acknowledges it: a client retrying.
    async fn post(&self, http: &reqwest::Client, body: &str) {
        for _ in 0..20 {
            let sent = http.post(&self.url).header("content-type", "application/x-ndjson").body(body.to_owned());
            match sent.send().await {
                Ok(response) if response.status() == 202 => return,
                Ok(response) => eprintln!("gateway answered {}; retrying", response.status()),
                Err(e) => eprintln!("gateway unreachable: {e}; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("the gateway never acknowledged the events");
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("gateway task").expect("gateway drained");
    }
}

/// `n` events of `video` without `ts`, with the client's own event ids.
fn body(video: &str, n: usize) -> String {
    (0..n).map(|i| format!("{{\"video_id\":\"{video}\",\"event_id\":\"{video}-{i}\"}}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_hot_videos_without_ts_through_other_gateways_are_counted_once() {
    bounded(Duration::from_secs(240), async {
        let broker = Broker::shared();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        // Groups named after the test's topics: the broker may be shared by tests running at once.
        let counter_config = CounterConfig {
            flush_interval: Duration::from_millis(200),
            group_id: format!("tally-counter-{}", kafka.topics.views),
            ..CounterConfig::default()
        };
        let counter =
            CounterService::build(&counter_config, &kafka, &Registry::new(), &Readiness::default()).await.unwrap();
        let stop_counter = CancellationToken::new();
        let counter = tokio::spawn(counter.run(stop_counter.clone(), Duration::from_secs(10)));

        // "launch" is configured hot on every gateway; "viral" is detected hot
        // by the first gateway only (300 events in one second, over its
        // threshold of 100 a second), never by the second.
        let salting = SaltingConfig {
            hot_videos: vec!["launch".into()],
            detect_threshold_per_sec: 100,
            ..SaltingConfig::default()
        };
        let first = Gateway::start(&kafka, &salting).await;
        let second = Gateway::start(&kafka, &SaltingConfig { detect_threshold_per_sec: 0, ..salting.clone() }).await;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let (viral, launch) = (body("viral", 300), body("launch", 300));

        first.post(&http, &viral).await;
        first.post(&http, &launch).await;
        // Every event retried through the other gateway...
        second.post(&http, &viral).await;
        second.post(&http, &launch).await;
        // ... and through the first one, restarted (its detector starts over).
        first.stop().await;
        let restarted = Gateway::start(&kafka, &salting).await;
        restarted.post(&http, &launch).await;
        restarted.post(&http, &viral).await;

        let expected = BTreeMap::from([("launch".to_owned(), 300), ("viral".to_owned(), 300)]);
        let settled = settled_views(&kafka, &counter_config.group_id, &expected, Duration::from_secs(120)).await;
        assert_eq!(settled, expected, "still exact once the counter committed the whole views topic");

        second.stop().await;
        restarted.stop().await;
        stop_counter.cancel();
        counter.await.unwrap().unwrap();
    })
    .await;
}
