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
    // Read the answer only: the connection may stay open for the body.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.expect("read the answer");
        assert!(n > 0, "the connection closed before a whole answer: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&raw);
        let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .expect("a content-length");
        if body.len() >= length {
            return RawResponse { status, headers, body: body.to_owned() };
        }
    }
}

/// A gateway whose admission bound (4 events) is exhausted: its broker
/// address has nothing listening, so produced records wait in the producer
/// until their delivery timeout, holding their permits, as under a broker
/// that cannot keep up.
async fn saturated_gateway(max_body_bytes: usize) -> Gateway {
    let mut kafka = tally_testkit::kafka_config_for(&format!("127.0.0.1:{}", tally_testkit::process::free_port()));
    kafka.create_topics = false;
    let gateway = Gateway::start_with(kafka, |c| {
        c.max_in_flight_events = 4;
        c.ack_timeout = Duration::from_millis(200);
        c.delivery_timeout = Duration::from_secs(60);
        // Were the gateway to wait for a body, it would answer 408 after this.
        c.body_read_timeout = Duration::from_secs(3);
        c.max_body_bytes = max_body_bytes;
    })
    .await;
    let four: Vec<Value> = (0..4).map(|i| json!({"video_id": "v", "event_id": format!("e-{i}")})).collect();
    let response = gateway.post("application/json", Value::from(four).to_string()).await;
    assert_eq!(response.status(), 503, "no broker acknowledges");
    let metrics = gateway.metrics().await;
    assert!(metrics.contains("tally_ingest_in_flight_events 4"), "the bound is exhausted: {metrics}");
    gateway
}

/// Stops a gateway whose queued records would hold a graceful stop for their delivery timeout.
fn abandon(gateway: Gateway) {
    gateway.shutdown.cancel();
    gateway.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_gateway_answers_503_before_reading_the_body() {
    bounded(Duration::from_secs(60), async {
        let gateway = saturated_gateway(2 * 1024 * 1024).await;

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
        abandon(gateway);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_a_large_body_gets_its_503_not_a_reset() {
    bounded(Duration::from_secs(60), async {
        let gateway = saturated_gateway(16 * 1024 * 1024).await;
        // 8 MB: more than the socket buffers hold, so most of it is still on
        // its way when the gateway answers from the head.
        let event = r#"{"video_id":"v","attributes":{"pad":"0123456789012345678901234567890123456789"}}"#;
        let body = format!("[{}]", vec![event; 8 * 1024 * 1024 / (event.len() + 1)].join(","));
        for attempt in 0..3 {
            let response = gateway
                .http
                .post(format!("http://{}/v1/events", gateway.addr))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("attempt {attempt}: no answer, the connection failed: {e:?}"));
            assert_eq!(response.status(), 503, "attempt {attempt}");
            assert!(response.headers().contains_key("retry-after"), "attempt {attempt}");
        }
        abandon(gateway);
    })
    .await;
}
