//! Sending one ingest request until it is accepted, refused for good, or the
//! [`RetryPolicy`] gives up; every attempt is kept for the report.
//!
//! The body is the same bytes on every attempt (the same event ids), so the
//! pipeline counts the events once however many attempts reached the broker.

use std::time::{Instant, SystemTime};

use bytes::Bytes;

use crate::retry::{RetryAfter, RetryPolicy, Verdict};
use crate::Rng;

/// What one attempt got back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP answer.
    Status {
        /// Its status code.
        status: u16,
        /// Its `Retry-After`.
        retry_after: RetryAfter,
    },
    /// No HTTP answer: connection refused or reset, or the client's timeout.
    Transport,
}

impl Answer {
    /// A temporary refusal: 408, 429 or 5xx.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Status { status, .. } if Verdict::of(*status) == Verdict::Retry)
    }
}

/// One send of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// When it was sent.
    pub sent: Instant,
    /// What came back.
    pub answer: Answer,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx: the events are acknowledged.
    Accepted,
    /// A status that no retry can change (400, 401, 413...).
    Refused {
        /// The status.
        status: u16,
    },
    /// The policy's count or time bound was reached while still refused.
    GaveUp,
    /// The caller's request budget ran out.
    BudgetSpent,
}

/// A request's attempts and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// How it ended.
    pub outcome: Outcome,
    /// Every send, in order.
    pub attempts: Vec<Attempt>,
}

impl Delivery {
    /// Whether the events were acknowledged.
    pub fn accepted(&self) -> bool {
        self.outcome == Outcome::Accepted
    }
}

/// A POST of a fixed body.
#[derive(Debug, Clone)]
pub struct Request {
    /// Target URL.
    pub url: String,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// The body, identical on every attempt.
    pub body: Bytes,
}

/// Sends `request` until it is accepted, refused for good, `policy` gives
/// up, or `may_send` (asked before every send) says the budget is spent.
/// Between attempts it waits as [`RetryPolicy::delay`] says, drawing the
/// jitter from `rng`.
pub async fn deliver(
    http: &reqwest::Client,
    request: &Request,
    policy: &RetryPolicy,
    rng: &mut Rng,
    mut may_send: impl FnMut() -> bool,
) -> Delivery {
    let mut attempts = Vec::new();
    let first = Instant::now();
    loop {
        if !may_send() {
            return Delivery { outcome: Outcome::BudgetSpent, attempts };
        }
        let sent = Instant::now();
        let answer = send(http, request).await;
        attempts.push(Attempt { sent, answer });
        let retry_after = match answer {
            Answer::Status { status, retry_after } => match Verdict::of(status) {
                Verdict::Accepted => return Delivery { outcome: Outcome::Accepted, attempts },
                Verdict::Refused => return Delivery { outcome: Outcome::Refused { status }, attempts },
                Verdict::Retry => retry_after.wait(),
            },
            Answer::Transport => None,
        };
        let sends = u32::try_from(attempts.len()).unwrap_or(u32::MAX);
        let delay = policy.delay(sends - 1, retry_after, rng.uniform());
        let resume = first.elapsed().saturating_add(delay);
        if !policy.may_retry(sends, resume) {
            return Delivery { outcome: Outcome::GaveUp, attempts };
        }
        tokio::time::sleep(delay).await;
    }
}

async fn send(http: &reqwest::Client, request: &Request) -> Answer {
    let sent = http
        .post(&request.url)
        .header(reqwest::header::CONTENT_TYPE, request.content_type)
        .body(request.body.clone())
        .send()
        .await;
    let Ok(response) = sent else { return Answer::Transport };
    let status = response.status().as_u16();
    let header = response.headers().get(reqwest::header::RETRY_AFTER).map(|v| v.to_str().unwrap_or(""));
    let retry_after = RetryAfter::parse(header, SystemTime::now());
    // Reading the (small) answer to its end lets the connection be reused.
    if response.bytes().await.is_err() {
        return Answer::Transport;
    }
    Answer::Status { status, retry_after }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers the scripted heads in turn (the last one for
    /// ever after) and keeps every request body and its arrival time.
    async fn scripted(heads: &'static [&'static str]) -> (String, Arc<Mutex<Vec<(Instant, Vec<u8>)>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/events", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut answered = 0;
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let mut stream = BufReader::new(stream);
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    if line != "\r\n" {
                        break; // the client closed the connection
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    log.lock().unwrap().push((Instant::now(), body));
                    let head = heads[answered.min(heads.len() - 1)];
                    answered += 1;
                    let response = format!("{head}\r\ncontent-length: 2\r\n\r\n{{}}");
                    stream.get_mut().write_all(response.as_bytes()).await.unwrap();
                }
            }
        });
        (url, seen)
    }

    fn request(url: String) -> Request {
        Request {
            url,
            content_type: "application/json",
            body: Bytes::from_static(br#"[{"video_id":"v","event_id":"e-1"}]"#),
        }
    }

    #[tokio::test]
    async fn a_refused_request_is_resent_unchanged_no_earlier_than_retry_after() {
        let (url, seen) =
            scripted(&["HTTP/1.1 503 Service Unavailable\r\nretry-after: 1", "HTTP/1.1 202 Accepted"]).await;
        let http = reqwest::Client::new();
        let policy = RetryPolicy { base: Duration::from_millis(10), ..RetryPolicy::default() };
        let delivery = deliver(&http, &request(url), &policy, &mut Rng(1), || true).await;
        assert_eq!(delivery.outcome, Outcome::Accepted);
        assert_eq!(delivery.attempts.len(), 2);
        assert_eq!(
            delivery.attempts[0].answer,
            Answer::Status { status: 503, retry_after: RetryAfter::Wait(Duration::from_secs(1)) }
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].1, seen[1].1, "the same body, so the same event ids");
        let gap = seen[1].0 - seen[0].0;
        assert!(gap >= Duration::from_secs(1), "resent after {gap:?}, before the server's Retry-After of 1 s");
    }

    #[tokio::test]
    async fn retries_stop_at_the_attempt_bound_and_permanent_refusals_at_once() {
        let (url, seen) = scripted(&["HTTP/1.1 429 Too Many Requests"]).await;
        let http = reqwest::Client::new();
        let policy = RetryPolicy { base: Duration::from_millis(1), max_attempts: 4, ..RetryPolicy::default() };
        let delivery = deliver(&http, &request(url), &policy, &mut Rng(2), || true).await;
        assert_eq!(delivery.outcome, Outcome::GaveUp);
        assert_eq!(delivery.attempts.len(), 4);
        assert!(delivery.attempts.iter().all(|a| a.answer.is_refusal()));
        assert_eq!(seen.lock().unwrap().len(), 4);

        let (url, seen) = scripted(&["HTTP/1.1 400 Bad Request"]).await;
        let delivery = deliver(&http, &request(url), &policy, &mut Rng(3), || true).await;
        assert_eq!(delivery.outcome, Outcome::Refused { status: 400 });
        assert_eq!(seen.lock().unwrap().len(), 1, "a 400 is not retried");

        let (url, seen) = scripted(&["HTTP/1.1 503 Service Unavailable\r\nretry-after: 3600"]).await;
        let delivery = deliver(&http, &request(url), &policy, &mut Rng(4), || true).await;
        assert_eq!(delivery.outcome, Outcome::GaveUp, "a wait past give-up-after is not started");
        assert_eq!(seen.lock().unwrap().len(), 1);

        let mut budget = 2;
        let (url, _) = scripted(&["HTTP/1.1 503 Service Unavailable"]).await;
        let delivery = deliver(&http, &request(url), &policy, &mut Rng(5), || {
            budget -= 1;
            budget >= 0
        })
        .await;
        assert_eq!((delivery.outcome, delivery.attempts.len()), (Outcome::BudgetSpent, 2));
    }
}
