//! A producer in librdkafka's fatal state refuses every later record; only a
//! new producer works again. The gateway must then stop with an error (its
//! supervisor restarts it), never answer 503 forever. librdkafka's mock
//! cluster injects the error: an `OUT_OF_ORDER_SEQUENCE_NUMBER` answer to the
//! first produce request, which an idempotent producer cannot explain
//! (sequence desynchronisation) and turns into a fatal error.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus::Registry;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tally_ingest::{IngestConfig, IngestError, IngestService};
use tally_kafka::KafkaConfig;
use tally_service::Readiness;
use tally_testkit::bounded;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_stops_the_gateway_with_that_error_after_answering_503() {
    bounded(Duration::from_secs(60), async {
        let cluster = MockCluster::new(1).expect("mock cluster");
        let mut kafka =
            KafkaConfig { brokers: cluster.bootstrap_servers(), create_topics: false, ..KafkaConfig::default() };
        kafka.topics.views = "views".into();
        cluster.create_topic(&kafka.topics.views, 1, 1).expect("topic");
        cluster
            .request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER]);
        let config = IngestConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ack_timeout: Duration::from_secs(5),
            delivery_timeout: Duration::from_secs(10),
            ..IngestConfig::default()
        };
        let service = IngestService::build(&config, &kafka, &Registry::new(), &Readiness::default())
            .await
            .expect("build gateway");
        let addr = service.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service.run(shutdown.clone()));

        let response = reqwest::Client::new()
            .post(format!("http://{addr}/v1/events"))
            .header("content-type", "application/json")
            .body(r#"{"video_id":"clip","event_id":"e1"}"#)
            .send()
            .await
            .expect("POST /v1/events");
        assert_eq!(response.status(), 503, "a record the producer could not deliver is refused");
        assert!(response.headers().contains_key("retry-after"));

        // Nobody asked it to stop: it stops by itself, with the fatal error.
        let outcome = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the gateway stops on a fatal producer error")
            .expect("gateway task");
        match outcome {
            Err(IngestError::ProducerFatal(fatal)) => {
                assert!(fatal.reason.contains("sequence"), "librdkafka's reason: {}", fatal.reason)
            }
            other => panic!("expected the fatal producer error, got {other:?}"),
        }
        assert!(!shutdown.is_cancelled());
    })
    .await;
}
