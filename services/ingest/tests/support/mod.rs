//! A gateway on free ports in front of a real broker, for the tests of this crate.

// Each test binary uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use prometheus::Registry;
use tally_ingest::{IngestConfig, IngestService};
use tally_kafka::KafkaConfig;
use tally_service::{admin, serve, Readiness};
use tally_testkit::Broker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub kafka: KafkaConfig,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), tally_ingest::IngestError>>,
    pub http: reqwest::Client,
}

impl Gateway {
    /// Starts a gateway against `broker` with `tweak` applied to a test configuration.
    pub async fn start(broker: &Broker, tweak: impl FnOnce(&mut IngestConfig)) -> Self {
        Self::start_with(tally_testkit::kafka_config(broker), tweak).await
    }

    /// [`Gateway::start`] with the Kafka configuration `kafka`.
    pub async fn start_with(kafka: KafkaConfig, tweak: impl FnOnce(&mut IngestConfig)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut config = IngestConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ack_timeout: Duration::from_secs(2),
            delivery_timeout: Duration::from_secs(5),
            ..IngestConfig::default()
        };
        tweak(&mut config);
        let registry = Registry::new();
        let readiness = Readiness::default();
        let service = IngestService::build(&config, &kafka, &registry, &readiness).await.expect("build gateway");
        let addr = service.local_addr();
        let shutdown = CancellationToken::new();
        let admin_listener = serve::bind(config.admin_listen, "admin").await.expect("bind admin");
        let admin = admin_listener.local_addr().expect("admin address");
        tokio::spawn(serve::serve(admin_listener, admin::router(registry, readiness), shutdown.clone()));
        let task = tokio::spawn(service.run(shutdown.clone()));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
        Self { addr, admin, kafka, shutdown, task, http }
    }

    /// POSTs `body` with `content_type` to `/v1/events`.
    pub async fn post(&self, content_type: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(format!("http://{}/v1/events", self.addr))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /v1/events")
    }

    /// The admin server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Stops the gateway and waits for its drain.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("gateway task").expect("gateway drained cleanly");
    }
}
