//! The query service over a real redis-server and the embedded store.

use std::time::{Duration, Instant};

use prometheus::Registry;
use serde_json::{json, Value};
use tally_cache::{CacheBackend, RedisCache};
use tally_model::counts::{Delta, FlushChunk, FlushHeader, SketchDelta};
use tally_model::Salt;
use tally_query::{QueryConfig, QueryService};
use tally_service::Readiness;
use tally_store::{CountStore, SqliteStore};
use tally_testkit::store::SwitchableStore;
use tally_testkit::{bounded, RedisServer};
use tokio_util::sync::CancellationToken;

const T0: i64 = 1_795_341_600_000;

struct Running {
    base: String,
    http: reqwest::Client,
    registry: Registry,
    readiness: Readiness,
    shutdown: CancellationToken,
}

impl Running {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    fn metric(&self, name: &str, label: &str) -> f64 {
        tally_testkit::metrics::value(&self.registry, name, Some(label))
    }
}

async fn start(store: impl CountStore + Clone, redis: Option<&RedisServer>) -> Running {
    start_with(store, redis, Duration::from_secs(60)).await
}

async fn start_with(store: impl CountStore + Clone, redis: Option<&RedisServer>, fresh_for: Duration) -> Running {
    let cache = match redis {
        Some(r) => Some(CacheBackend::Redis(RedisCache::connect(&r.url(), Duration::from_millis(200)).await.unwrap())),
        None => None,
    };
    let config = QueryConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        fresh_for,
        cache_breaker_cool_down: Duration::from_millis(300),
        ..QueryConfig::default()
    };
    let registry = Registry::new();
    let readiness = Readiness::default();
    let service = QueryService::build(&config, store, cache, &registry, &readiness).await.unwrap();
    let base = format!("http://{}", service.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(service.run(shutdown.clone()));
    Running { base, http: reqwest::Client::new(), registry, readiness, shutdown }
}

async fn seeded_store() -> SqliteStore {
    let store = SqliteStore::in_memory().unwrap();
    let chunk = FlushChunk {
        header: FlushHeader { end: 10, chunk_count: 1, max_received_ms: T0 + 90_000, ..FlushHeader::default() },
        deltas: vec![
            Delta { video_id: "popular".into(), salt: Salt(0), minute: T0, count: 40 },
            Delta { video_id: "popular".into(), salt: Salt(3), minute: T0, count: 2 },
            Delta { video_id: "popular".into(), salt: Salt(0), minute: T0 + 3_600_000, count: 8 },
        ],
        uniques: vec![
            SketchDelta { video_id: "popular".into(), salt: Salt(0), hour: T0, sketch: viewers(0..50) },
            SketchDelta { video_id: "popular".into(), salt: Salt(3), hour: T0, sketch: viewers(40..60) },
            SketchDelta { video_id: "popular".into(), salt: Salt(0), hour: T0 + 3_600_000, sketch: viewers(55..70) },
        ],
        trending: Vec::new(),
    };
    store.apply(vec![tally_store::CountsEntry::chunk(chunk)]).await.unwrap();
    store
}

fn viewers(range: std::ops::Range<u32>) -> Vec<u8> {
    let mut sketch = tally_model::uniques::new_sketch(12).unwrap();
    for i in range {
        sketch.update_with_coupon(tally_model::uniques::viewer_coupon(&format!("viewer-{i}")));
    }
    tally_model::uniques::serialize(&sketch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciled_hour_answers_its_batch_count_of_unique_viewers_as_exact() {
    bounded(Duration::from_secs(60), async {
        let store = seeded_store().await;
        // The batch recount found 61 viewers at 10:00 (one the sketches missed); 11:00 is not reconciled.
        let period =
            tally_store::PeriodSummary { start_ms: T0, end_ms: T0 + 3_600_000, batch_views: 42, realtime_views: 42 };
        let counted = tally_store::PeriodUniques { hour: vec![("popular".into(), 61)], day: None };
        store.replace_batch(period, vec![("popular".into(), T0, 42)], Some(counted)).await.unwrap();
        let query = start(store, None).await;
        let hour: Value = query
            .get(&format!("/v1/videos/popular/uniques?from={T0}&to={}", T0 + 3_600_000))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (hour["uniques"].clone(), hour["lower_bound"].clone(), hour["upper_bound"].clone(), hour["exact"].clone()),
            (json!(61), json!(61), json!(61), json!(true))
        );
        assert_eq!(hour["exact_through"], "2026-11-22T11:00:00Z");
        // Two hours, one of them not counted: the sketches' union, not exact by the batch.
        let two: Value = query
            .get(&format!("/v1/videos/popular/uniques?from={T0}&to={}", T0 + 7_200_000))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!((two["uniques"].clone(), two["exact_through"].clone()), (json!(70), json!("2026-11-22T11:00:00Z")));
        query.shutdown.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_viewers_merge_salts_and_hours_are_cached_and_served_stale_while_the_store_is_down() {
    bounded(Duration::from_secs(60), async {
        let redis = RedisServer::start();
        let store = SwitchableStore::new(seeded_store().await);
        let query = start(store.clone(), Some(&redis)).await;
        // Mid-hour bounds widen to whole hours.
        let path = format!("/v1/videos/popular/uniques?from={}&to={}", T0 + 5, T0 + 3_600_000);
        let first = query.get(&path).await;
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()["x-tally-cache"], "miss");
        let body: Value = first.json().await.unwrap();
        assert_eq!(
            body,
            json!({
                "video_id": "popular", "from": "2026-11-22T10:00:00Z", "to": "2026-11-22T11:00:00Z",
                "uniques": 60, "lower_bound": 60, "upper_bound": 60, "exact": true, "exact_through": null,
                "stale": false,
            })
        );
        assert_eq!(query.get(&path).await.headers()["x-tally-cache"], "hit");
        let two_hours: Value = query
            .get(&format!("/v1/videos/popular/uniques?from={T0}&to={}", T0 + 7_200_000))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(two_hours["uniques"], 70);
        let nobody: Value =
            query.get(&format!("/v1/videos/nobody/uniques?from={T0}&to={}", T0 + 1)).await.json().await.unwrap();
        assert_eq!((nobody["uniques"].clone(), nobody["exact"].clone()), (json!(0), json!(true)));
        for bad in [
            format!("/v1/videos/popular/uniques?from={T0}&to={T0}"),
            format!("/v1/videos/popular/uniques?from={T0}"),
            format!("/v1/videos/popular/uniques?from={T0}&to={}", T0 + 401 * 86_400_000),
            format!("/v1/videos/bad%20id/uniques?from={T0}&to={}", T0 + 1),
        ] {
            assert_eq!(query.get(&bad).await.status(), 400, "{bad}");
        }
        store.set_down(true);
        // A cached answer past its freshness would be served stale; this one is fresh.
        assert_eq!(query.get(&path).await.status(), 200);
        let uncached = query.get(&format!("/v1/videos/other/uniques?from={T0}&to={}", T0 + 1)).await;
        assert_eq!(uncached.status(), 503);
        query.shutdown.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_viewers_cached_past_their_freshness_are_served_stale_while_the_store_is_down() {
    bounded(Duration::from_secs(60), async {
        let redis = RedisServer::start();
        let store = SwitchableStore::new(seeded_store().await);
        let query = start_with(store.clone(), Some(&redis), Duration::from_millis(1)).await;
        let path = format!("/v1/videos/popular/uniques?from={T0}&to={}", T0 + 3_600_000);
        assert_eq!(query.get(&path).await.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.set_down(true);
        let stale = query.get(&path).await;
        assert_eq!(stale.headers()["x-tally-cache"], "stale");
        let body: Value = stale.json().await.unwrap();
        assert_eq!((body["uniques"].clone(), body["stale"].clone()), (json!(60), json!(true)));
        query.shutdown.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_merge_salts_and_a_video_nobody_watched_has_zero_views_cached_negatively() {
    bounded(Duration::from_secs(60), async {
        let redis = RedisServer::start();
        let query = start(seeded_store().await, Some(&redis)).await;
        let first = query.get("/v1/videos/popular/views").await;
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()["x-tally-cache"], "miss");
        let body: Value = first.json().await.unwrap();
        assert_eq!(body["views"], 50);
        assert_eq!(body["provisional_views"], 50);
        assert_eq!(body["stale"], false);
        assert_eq!(body["as_of"], "2026-11-22T10:01:30Z");
        assert_eq!(query.get("/v1/videos/popular/views").await.headers()["x-tally-cache"], "hit");
        let nobody = query.get("/v1/videos/nobody-watched/views").await;
        assert_eq!(nobody.status(), 200);
        assert_eq!(nobody.json::<Value>().await.unwrap()["views"], 0);
        let again = query.get("/v1/videos/nobody-watched/views").await;
        assert_eq!(again.headers()["x-tally-cache"], "hit", "unknown ids are cached too");
        query.shutdown.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_video_share_one_store_read() {
    bounded(Duration::from_secs(60), async {
        let store = SwitchableStore::new(seeded_store().await);
        // A slow store, so that all requests overlap one read.
        store.set_read_delay(Duration::from_millis(300));
        let query = start(store, None).await;
        let requests = (0..64).map(|_| query.get("/v1/videos/popular/views"));
        let responses = futures::future::join_all(requests).await;
        assert!(responses.iter().all(|r| r.status() == 200));
        let loads = query.metric("tally_query_store_loads_total", "ok");
        assert_eq!(loads, 1.0, "64 concurrent misses caused {loads} store reads");
        query.shutdown.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_redis_fails_no_request_and_hits_resume_after_it_returns() {
    bounded(Duration::from_secs(90), async {
        let mut redis = RedisServer::start();
        let query = start(seeded_store().await, Some(&redis)).await;
        let mut answered = 0;
        for round in 0..60 {
            if round == 10 {
                redis.stop();
            }
            if round == 40 {
                redis.restart();
            }
            let response = query.get("/v1/videos/popular/views").await;
            assert_eq!(response.status(), 200, "round {round}");
            assert_eq!(response.json::<Value>().await.unwrap()["views"], 50, "round {round}");
            answered += 1;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert_eq!(answered, 60);
        assert!(
            query.metric("tally_query_cache_lookups_total", "bypass") > 0.0,
            "the store answered while Redis was down"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let source =
                query.get("/v1/videos/popular/views").await.headers()["x-tally-cache"].to_str().unwrap().to_owned();
            if source == "hit" {
                break;
            }
            assert!(Instant::now() < deadline, "cache hits did not resume (last: {source})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        query.shutdown.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_cached_answers_are_served_stale_and_uncached_ones_get_503() {
    bounded(Duration::from_secs(60), async {
        let redis = RedisServer::start();
        let store = SwitchableStore::new(seeded_store().await);
        // Nothing is fresh: every lookup asks the store, so the fallback is exercised.
        let query = start_with(store.clone(), Some(&redis), Duration::ZERO).await;
        let warm = query.get("/v1/videos/popular/views").await;
        assert_eq!(warm.json::<Value>().await.unwrap()["stale"], false);
        store.set_down(true);
        let stale = query.get("/v1/videos/popular/views").await;
        assert_eq!(stale.status(), 200);
        assert_eq!(stale.headers()["x-tally-cache"], "stale");
        let body: Value = stale.json().await.unwrap();
        assert_eq!((body["views"].clone(), body["stale"].clone()), (json!(50), json!(true)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while query.readiness.report().0 {
            assert!(Instant::now() < deadline, "/readyz kept reporting ready with the store down");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let uncached = query.get("/v1/videos/never-cached/views").await;
        assert_eq!(uncached.status(), 503, "nothing cached and the store is down");
        assert!(uncached.headers().contains_key("retry-after"));
        store.set_down(false);
        let back = query.get("/v1/videos/popular/views").await;
        assert_eq!(back.json::<Value>().await.unwrap()["stale"], false, "fresh again once the store returns");
        query.shutdown.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_ranges_and_batches_get_400_problems_and_series_answer() {
    bounded(Duration::from_secs(60), async {
        let query = start(seeded_store().await, None).await;
        for path in [
            "/v1/videos/bad%20id/views",
            "/v1/videos/popular/views/series?from=2026-11-22T11:00:00Z&to=2026-11-22T10:00:00Z",
            "/v1/videos/popular/views/series?from=yesterday&to=2026-11-22T10:00:00Z",
            "/v1/videos/popular/views/series?from=0&to=9999999999999",
            "/v1/videos/popular/views/series?from=2026-11-22T10:00:00Z&to=2026-11-22T11:00:00Z&step=week",
        ] {
            let response = query.get(path).await;
            assert_eq!(response.status(), 400, "{path}");
            assert_eq!(response.headers()["content-type"], "application/problem+json", "{path}");
        }
        let too_many: Vec<String> = (0..1001).map(|i| format!("v{i}")).collect();
        let response = query
            .http
            .post(format!("{}/v1/views:batchGet", query.base))
            .json(&json!({"video_ids": too_many}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let series: Value = query
            .get("/v1/videos/popular/views/series?from=2026-11-22T10:00:00Z&to=2026-11-22T12:00:00Z&step=hour")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            series["points"],
            json!([{"start": "2026-11-22T10:00:00Z", "views": 42}, {"start": "2026-11-22T11:00:00Z", "views": 8}])
        );
        let batch: Value = query
            .http
            .post(format!("{}/v1/views:batchGet", query.base))
            .json(&json!({"video_ids": ["popular", "nobody"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(batch["results"][0]["views"], 50);
        assert_eq!(batch["results"][1]["views"], 0);
        query.shutdown.cancel();
    })
    .await;
}
