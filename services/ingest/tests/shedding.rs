//! Load shedding: what the gateway cannot admit is refused from the request
//! head alone, before a byte of the body is read.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::Gateway;
use tally_testkit::bounded;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off the wire.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends only the head of a `POST /v1/events` announcing `content_length`
/// bytes of JSON, never the body, and reads the answer until the gateway
/// closes the connection.
async fn post_head_only(addr: SocketAddr, content_length: usize) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the gateway");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("send the head");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read the answer");
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawResponse { status, headers, body: body.to_owned() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_gateway_answers_503_before_reading_the_body() {
    bounded(Duration::from_secs(60), async {
        // A broker address nothing listens on: produced records wait in the
        // producer until their delivery timeout, holding their admission
        // permits, as under a broker that cannot keep up.
        let mut kafka = tally_testkit::kafka_config_for(&format!("127.0.0.1:{}", tally_testkit::process::free_port()));
        kafka.create_topics = false;
        let gateway = Gateway::start_with(kafka, |c| {
            c.max_in_flight_events = 4;
            c.ack_timeout = Duration::from_millis(200);
            c.delivery_timeout = Duration::from_secs(60);
            // Were the gateway to wait for the body, it would answer 408 after this.
            c.body_read_timeout = Duration::from_secs(3);
            c.max_body_bytes = 2 * 1024 * 1024;
        })
        .await;
        let four: Vec<Value> = (0..4).map(|i| json!({"video_id": "v", "event_id": format!("e-{i}")})).collect();
        let response = gateway.post("application/json", Value::from(four).to_string()).await;
        assert_eq!(response.status(), 503, "no broker acknowledges");
        let metrics = gateway.metrics().await;
        assert!(metrics.contains("tally_ingest_in_flight_events 4"), "the bound is exhausted: {metrics}");

        // 1 MB announced, nothing sent: the answer comes without the body.
        let shed = post_head_only(gateway.addr, 1024 * 1024).await;
        assert_eq!(shed.status, 503, "refused from the head alone: {}", shed.body);
        assert_eq!(shed.header("retry-after"), Some("1"));
        assert_eq!(shed.header("content-type"), Some("application/problem+json"));
        let problem: Value = serde_json::from_str(&shed.body).expect("a problem body");
        assert_eq!(problem["type"], "urn:tally:problem:unavailable", "{problem}");

        // What can never be admitted is refused for good first, saturated or not.
        let too_large = post_head_only(gateway.addr, 3 * 1024 * 1024).await;
        assert_eq!(too_large.status, 413, "{}", too_large.body);

        let metrics = gateway.metrics().await;
        assert!(metrics.contains("tally_ingest_events_rejected_total{reason=\"shed\"} 1"), "{metrics}");
        assert!(metrics.contains("tally_ingest_events_rejected_total{reason=\"too_large\"} 1"), "{metrics}");
        // The queued records would hold a graceful stop for their delivery timeout.
        gateway.shutdown.cancel();
        gateway.task.abort();
    })
    .await;
}
