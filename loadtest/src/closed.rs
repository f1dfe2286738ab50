//! Closed-loop driver: `connections` workers, each sending its next request
//! as soon as the previous one completed. Throughput is whatever the server
//! sustains at that concurrency; latency is measured from the actual send
//! (a closed loop cannot see the queueing an open loop would cause, which is
//! why the open loop is the default).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::record::Recorder;

/// What a closed-loop run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Requests started (each one call of `send`).
    pub attempted: u64,
    /// Requests that succeeded (recorded).
    pub succeeded: u64,
    /// Requests that failed (not recorded).
    pub failed: u64,
}

/// Runs `connections` workers until `deadline` or `max_requests` calls of
/// `send`, whichever comes first. `send(seq)` performs request number `seq`
/// and returns the events it carried, or `None` when it failed. Successful
/// requests are recorded in `recorder` at their completion time relative to
/// `started`.
pub async fn run<F, Fut>(
    connections: usize,
    started: Instant,
    deadline: Instant,
    max_requests: u64,
    recorder: Arc<Mutex<Recorder>>,
    send: F,
) -> Outcome
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<u64>> + Send + 'static,
{
    let send = Arc::new(send);
    let attempted = Arc::new(AtomicU64::new(0));
    let succeeded = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (send, attempted, succeeded, failed, recorder) =
            (send.clone(), attempted.clone(), succeeded.clone(), failed.clone(), recorder.clone());
        workers.spawn(async move {
            while Instant::now() < deadline {
                let Ok(seq) = attempted
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max_requests).then_some(n + 1))
                else {
                    return;
                };
                let sent = Instant::now();
                match send(seq).await {
                    Some(events) => {
                        let latency = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        recorder.lock().unwrap_or_else(std::sync::PoisonError::into_inner).record(
                            started.elapsed().as_secs_f64(),
                            latency,
                            events,
                        );
                        succeeded.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    Outcome {
        attempted: attempted.load(Ordering::Relaxed),
        succeeded: succeeded.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrency_is_exactly_the_connections_and_every_request_is_accounted_for() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(AtomicU64::new(0));
        let recorder = Arc::new(Mutex::new(Recorder::new()));
        let started = Instant::now();
        let (f, p, c) = (in_flight.clone(), peak.clone(), calls.clone());
        let outcome = run(4, started, started + Duration::from_secs(30), 200, recorder.clone(), move |seq| {
            let (f, p, c) = (f.clone(), p.clone(), c.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                f.fetch_sub(1, Ordering::SeqCst);
                // Every fifth request fails; the others carry 10 events.
                (seq % 5 != 4).then_some(10)
            }
        })
        .await;
        assert_eq!(peak.load(Ordering::SeqCst), 4, "never more than the connections, and all of them used");
        assert_eq!(calls.load(Ordering::SeqCst), 200, "stops at max_requests exactly");
        assert_eq!(outcome, Outcome { attempted: 200, succeeded: 160, failed: 40 });
        let r = recorder.lock().unwrap();
        assert_eq!((r.requests(), r.events()), (160, 1_600), "only successes are recorded");
        assert!(r.overall().p50 >= 2.0, "latency includes the server's time: {:?}", r.overall());
    }

    #[tokio::test]
    async fn the_deadline_stops_the_workers() {
        let recorder = Arc::new(Mutex::new(Recorder::new()));
        let started = Instant::now();
        let outcome = run(2, started, started + Duration::from_millis(100), u64::MAX, recorder, |_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some(1)
        })
        .await;
        assert!(started.elapsed() < Duration::from_millis(400), "{:?}", started.elapsed());
        // 2 workers x about 10 requests each.
        assert!((10..=24).contains(&outcome.attempted), "{outcome:?}");
        assert_eq!(outcome.attempted, outcome.succeeded);
    }
}
