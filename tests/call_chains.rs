//! Call-chain tracing through the real pipeline: a gateway, a counter and a
//! writer as separate processes over a real broker, exporting OpenTelemetry
//! spans over OTLP/HTTP to a receiver started by the test (it decodes the
//! protobuf the services send). A sampled request yields the gateway's span
//! (a child of the client's context), the counter's span of the flush that
//! counted its events and the writer's span of the batch that stored it,
//! both linked to the gateway's span; unsampled requests add no record
//! headers and no spans.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::{write_config, TallyProcess};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use tally_testkit::{bounded, Broker};

/// The client's own context: a sampled trace the gateway's span joins.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// One span as received, ids in hex.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    /// (trace id, span id) of each link.
    links: Vec<(String, String)>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn receive(State(spans): State<Spans>, body: Bytes) -> impl axum::response::IntoResponse {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP/HTTP protobuf export");
    let mut received = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(name)) => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            received.push(Received {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
            });
        }
    }
    ([("content-type", "application/x-protobuf")], ExportTraceServiceResponse::default().encode_to_vec())
}

/// A receiver of OTLP/HTTP trace exports on a free loopback port.
async fn start_receiver() -> (String, Spans) {
    let spans = Spans::default();
    let app = axum::Router::new().route("/v1/traces", post(receive)).with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

/// Every record of the views topic: (key, its `traceparent` header values).
fn views_records(kafka: &tally_kafka::KafkaConfig, expected: usize) -> Vec<(String, Vec<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", tally_testkit::unique("trace-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..kafka.topics.views_partitions {
        assignment.add_partition_offset(&kafka.topics.views, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut records = Vec::new();
    while records.len() < expected && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let traceparents = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .filter(|h| h.key == "traceparent")
                        .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            records.push((key, traceparents));
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_request_yields_linked_gateway_counter_and_writer_spans_and_unsampled_ones_add_nothing() {
    bounded(Duration::from_secs(240), async {
        let (endpoint, spans) = start_receiver().await;
        let broker = Broker::shared();
        let kafka = tally_testkit::kafka_with_topics(&broker).await;
        let dir = tempfile::tempdir().unwrap();
        // Ratio 0: only the request whose client says "sampled" is traced.
        let sections = format!(
            "[traces]\notlp-endpoint = \"{endpoint}\"\nsample-ratio = 0.0\nexport-interval = \"200ms\"\n\n\
             [ingest]\nlisten = \"127.0.0.1:0\"\nadmin-listen = \"127.0.0.1:0\"\n\n{}",
            common::counter_writer_sections(&dir.path().join("counts.db"), "")
        );
        let config = write_config(dir.path(), &kafka, &sections);
        let ingest = TallyProcess::spawn(&config, "ingest");
        let counter = TallyProcess::spawn(&config, "counter");
        let writer = TallyProcess::spawn(&config, "writer");
        let gateway = ingest.address_of("public API");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

        let events = |video: &str| -> Vec<serde_json::Value> {
            (0..5).map(|i| json!({"video_id": video, "event_id": format!("{video}-{i}")})).collect()
        };
        let post = |video: &'static str, traceparent: Option<String>| {
            let mut request = http.post(format!("http://{gateway}/v1/events")).json(&events(video));
            if let Some(traceparent) = traceparent {
                request = request.header("traceparent", traceparent);
            }
            request.send()
        };
        let sampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
        let declined = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".to_owned();
        assert_eq!(post("traced", Some(sampled)).await.unwrap().status(), 202);
        assert_eq!(post("untraced", None).await.unwrap().status(), 202);
        assert_eq!(post("declined", Some(declined)).await.unwrap().status(), 202);

        // The views topic: headers on the sampled request's records only.
        let records = views_records(&kafka, 15);
        assert_eq!(records.len(), 15, "every record read back: {records:?}");
        let mut gateway_parents = Vec::new();
        for (key, traceparents) in &records {
            if key.starts_with("traced") {
                assert_eq!(traceparents.len(), 1, "one traceparent on {key}: {traceparents:?}");
                gateway_parents.push(traceparents[0].clone());
            } else {
                assert!(traceparents.is_empty(), "an unsampled request's record {key} carries {traceparents:?}");
            }
        }
        assert_eq!(gateway_parents.len(), 5);
        assert!(gateway_parents.windows(2).all(|w| w[0] == w[1]), "one request, one context: {gateway_parents:?}");
        assert!(gateway_parents[0].starts_with(&format!("00-{CLIENT_TRACE}-")), "{}", gateway_parents[0]);

        // The spans: the gateway's, a child of the client's; the counter's
        // and the writer's, linked to it.
        let deadline = Instant::now() + Duration::from_secs(90);
        let (gateway_span, counter_span, writer_span) = loop {
            let received = spans.lock().unwrap().clone();
            let gateway_span = received.iter().find(|s| s.service == "tally-ingest").cloned();
            let linked_from = |service: &str| {
                let gateway_span = gateway_span.as_ref()?;
                received
                    .iter()
                    .find(|s| {
                        s.service == service
                            && s.links.contains(&(gateway_span.trace_id.clone(), gateway_span.span_id.clone()))
                    })
                    .cloned()
            };
            if let (Some(g), Some(c), Some(w)) =
                (gateway_span.clone(), linked_from("tally-counter"), linked_from("tally-writer"))
            {
                break (g, c, w);
            }
            assert!(Instant::now() < deadline, "the linked spans did not all arrive: {received:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!((gateway_span.trace_id.as_str(), gateway_span.parent_span_id.as_str()), (CLIENT_TRACE, CLIENT_SPAN));
        assert_eq!(gateway_span.name, "POST /v1/events");
        assert_eq!(gateway_parents[0], format!("00-{CLIENT_TRACE}-{}-01", gateway_span.span_id));
        assert_eq!(counter_span.name, "counter flush");
        assert_eq!(writer_span.name, "writer batch");
        for flush_or_batch in [&counter_span, &writer_span] {
            assert_ne!(flush_or_batch.trace_id, CLIENT_TRACE, "a flush starts a trace of its own, linked");
        }

        // Quiet: still one gateway span, and nothing else of the other requests.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let received = spans.lock().unwrap().clone();
        let gateway_spans: Vec<_> = received.iter().filter(|s| s.service == "tally-ingest").collect();
        assert_eq!(gateway_spans.len(), 1, "only the sampled request is traced: {gateway_spans:#?}");
        for span in received.iter().filter(|s| s.service != "tally-ingest") {
            assert!(
                span.links.iter().all(|(trace, _)| trace == CLIENT_TRACE),
                "a span linked to an unsampled request: {span:#?}"
            );
        }
        for process in [writer, counter, ingest] {
            assert!(process.terminate(Duration::from_secs(30)).success());
        }
    })
    .await;
}
