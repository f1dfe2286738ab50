//! `GET /v1/trending` over the embedded store and the in-process cache:
//! exact window views, velocity, caching, stale answers and problem bodies.

use std::time::Duration;

use prometheus::Registry;
use serde_json::{json, Value};
use tally_cache::{CacheBackend, MemoryCache};
use tally_model::counts::{Delta, FlushChunk, FlushHeader, MinuteSketch};
use tally_model::timestamp::{format_rfc3339_ms, minute_bucket, now_ms};
use tally_model::Salt;
use tally_query::{QueryConfig, QueryService};
use tally_service::Readiness;
use tally_store::{CountStore, SqliteStore};
use tally_testkit::bounded;
use tally_testkit::store::SwitchableStore;
use tokio_util::sync::CancellationToken;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

struct Running {
    base: String,
    http: reqwest::Client,
    registry: Registry,
    shutdown: CancellationToken,
}

impl Running {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap()
    }
}

async fn start(store: impl CountStore + Clone, trending_fresh_for: Duration) -> Running {
    let config = QueryConfig { listen: "127.0.0.1:0".parse().unwrap(), trending_fresh_for, ..QueryConfig::default() };
    let registry = Registry::new();
    let cache = Some(CacheBackend::Memory(MemoryCache::default()));
    let service = QueryService::build(&config, store, cache, &registry, &Readiness::default()).await.unwrap();
    let base = format!("http://{}", service.local_addr());
    let shutdown = CancellationToken::new();
    tokio::spawn(service.run(shutdown.clone()));
    Running { base, http: reqwest::Client::new(), registry, shutdown }
}

/// One flush of `views` `(video, salt, minute, count)`, with the trending
/// sketch of each minute as a counter builds it.
async fn apply(store: &SqliteStore, end: i64, views: &[(&str, u16, i64, u32)]) {
    let mut minutes: Vec<i64> = views.iter().map(|v| v.2).collect();
    minutes.sort_unstable();
    minutes.dedup();
    let trending = minutes
        .iter()
        .map(|m| MinuteSketch {
            minute: *m,
            sketch: tally_model::trending::sketch_of(
                8,
                views.iter().filter(|v| v.2 == *m).map(|v| (v.0, u64::from(v.3))),
            )
            .unwrap(),
        })
        .collect();
    let chunk = FlushChunk {
        header: FlushHeader { end, chunk_count: 1, max_received_ms: now_ms(), ..FlushHeader::default() },
        deltas: views
            .iter()
            .map(|(video, salt, minute, count)| Delta {
                video_id: (*video).into(),
                salt: Salt(*salt),
                minute: *minute,
                count: *count,
            })
            .collect(),
        uniques: Vec::new(),
        trending,
    };
    store.apply(vec![tally_store::CountsEntry::chunk(chunk)]).await.unwrap();
}

/// Views a few minutes ago (inside both windows whatever minute the test
/// runs in), two hours ago (only in the day) and two days ago (in none).
async fn seeded(now: i64) -> SqliteStore {
    let store = SqliteStore::in_memory().unwrap();
    let recent = minute_bucket(now) - 5 * MINUTE;
    apply(
        &store,
        10,
        &[
            ("rising", 0, recent, 30),
            ("rising", 2, recent + MINUTE, 20),
            ("steady", 0, recent, 40),
            ("quiet", 0, recent, 3),
            ("steady", 0, recent - 3 * HOUR, 240),
            ("rising", 0, recent - 3 * HOUR, 24),
            ("old", 0, recent - 2 * HOUR, 500),
            ("ancient", 0, recent - 48 * HOUR, 900),
        ],
    )
    .await;
    // A later flush adds to a minute already counted.
    apply(&store, 20, &[("quiet", 0, recent, 2)]).await;
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trending_lists_exact_window_views_ranks_velocity_and_is_cached_then_served_stale() {
    bounded(Duration::from_secs(60), async {
        let now = now_ms();
        let store = SwitchableStore::new(seeded(now).await);
        let query = start(store.clone(), Duration::from_secs(15)).await;
        let first = query.get("/v1/trending?window=1h&limit=2").await;
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()["x-tally-cache"], "miss");
        let body: Value = first.json().await.unwrap();
        assert_eq!(body["videos"], json!([{"video_id": "rising", "views": 50}, {"video_id": "steady", "views": 40}]));
        assert_eq!((body["window"].clone(), body["order"].clone()), (json!("1h"), json!("views")));
        // quiet (5 views) is the most any unlisted video can have had.
        assert_eq!((body["complete"].clone(), body["error_bound"].clone()), (json!(true), json!(5)));
        assert_eq!(body["stale"], json!(false));
        let to = body["to"].as_str().unwrap().to_owned();
        let from = body["from"].as_str().unwrap().to_owned();
        let to_ms = tally_model::timestamp::parse_rfc3339_ms(&to).unwrap();
        assert!(to_ms > now && to_ms <= minute_bucket(now) + 2 * MINUTE, "the window ends with the current minute");
        assert_eq!(from, format_rfc3339_ms(to_ms - HOUR));
        let again = query.get("/v1/trending?window=1h&limit=2").await;
        assert_eq!(again.headers()["x-tally-cache"], "hit");

        let everyone: Value = query.get("/v1/trending?window=1h&limit=10").await.json().await.unwrap();
        let listed: Vec<(String, i64)> = everyone["videos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["video_id"].as_str().unwrap().to_owned(), v["views"].as_i64().unwrap()))
            .collect();
        let expected: Vec<(String, i64)> =
            [("rising", 50), ("steady", 40), ("quiet", 5)].iter().map(|(v, n)| ((*v).to_owned(), *n)).collect();
        assert_eq!(listed, expected, "fewer videos than the limit: all of them, exact");
        assert_eq!(everyone["complete"], json!(true));

        let day: Value = query.get("/v1/trending?window=24h&limit=2").await.json().await.unwrap();
        assert_eq!(day["videos"], json!([{"video_id": "old", "views": 500}, {"video_id": "steady", "views": 280}]));

        // rising: 50 views in the hour, 24 in the day before it (1 per hour): 50.
        // steady: 40 in the hour, 240 in the day before (10 per hour): 4.
        let velocity: Value = query.get("/v1/trending?window=1h&limit=2&order=velocity").await.json().await.unwrap();
        assert_eq!(
            velocity["videos"],
            json!([
                {"video_id": "rising", "views": 50, "baseline_views": 24, "velocity": 50.0},
                {"video_id": "steady", "views": 40, "baseline_views": 240, "velocity": 4.0},
            ])
        );

        store.set_down(true);
        let cached = query.get("/v1/trending?window=1h&limit=2").await;
        assert_eq!(cached.headers()["x-tally-cache"], "hit", "fresh answers need no store");
        let uncached = query.get("/v1/trending?window=1h&limit=3").await;
        assert_eq!(uncached.status(), 503, "nothing cached and the store is down");
        let ok = tally_testkit::metrics::value(&query.registry, "tally_query_trending_refreshes_total", Some("ok"));
        assert_eq!(ok, 4.0, "one store read per key: four keys asked while the store was up");
        query.shutdown.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trending_answers_past_their_freshness_are_served_stale_while_the_store_is_down() {
    bounded(Duration::from_secs(60), async {
        let store = SwitchableStore::new(seeded(now_ms()).await);
        let query = start(store.clone(), Duration::from_millis(1)).await;
        let fresh: Value = query.get("/v1/trending?window=1h").await.json().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.set_down(true);
        let stale = query.get("/v1/trending?window=1h").await;
        assert_eq!(stale.headers()["x-tally-cache"], "stale");
        let body: Value = stale.json().await.unwrap();
        assert_eq!((body["videos"].clone(), body["stale"].clone()), (fresh["videos"].clone(), json!(true)));
        query.shutdown.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_flush_to_a_closed_hour_is_in_the_next_day_refresh_and_unchanged_hours_are_reused() {
    bounded(Duration::from_secs(60), async {
        let now = now_ms();
        let store = seeded(now).await;
        let query = start(store.clone(), Duration::from_millis(1)).await;
        let hours = |outcome| {
            tally_testkit::metrics::value(&query.registry, "tally_query_trending_hour_sums_total", Some(outcome))
        };
        let day: Value = query.get("/v1/trending?window=24h&limit=2").await.json().await.unwrap();
        assert_eq!(day["videos"], json!([{"video_id": "old", "views": 500}, {"video_id": "steady", "views": 280}]));
        // A day's window: a partial first hour, 23 closed hours, the open hour.
        assert_eq!((hours("reused"), hours("rebuilt")), (0.0, 23.0), "the first refresh sums every closed hour");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A newer flush to a minute of a closed hour, already summed and cached.
        let late_minute = minute_bucket(now) - 4 * HOUR;
        apply(&store, 30, &[("late", 0, late_minute, 1_000)]).await;
        let next: Value = query.get("/v1/trending?window=24h&limit=2").await.json().await.unwrap();
        assert_eq!(next["videos"], json!([{"video_id": "late", "views": 1000}, {"video_id": "old", "views": 500}]));
        // 22 reused and 1 rebuilt, or one more rebuilt if an hour began between the two refreshes.
        assert!(hours("reused") >= 21.0 && hours("rebuilt") >= 24.0, "{} {}", hours("reused"), hours("rebuilt"));
        assert_eq!(hours("reused") + hours("rebuilt"), 46.0, "23 closed hours per day refresh");
        query.shutdown.cancel();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_trending_parameters_get_400_problems() {
    bounded(Duration::from_secs(60), async {
        let query = start(SqliteStore::in_memory().unwrap(), Duration::from_secs(15)).await;
        for path in [
            "/v1/trending",
            "/v1/trending?window=2h",
            "/v1/trending?window=1h&limit=0",
            "/v1/trending?window=1h&limit=1001",
            "/v1/trending?window=1h&limit=ten",
            "/v1/trending?window=1h&order=random",
            "/v1/trending?window=1h&since=yesterday",
        ] {
            let response = query.get(path).await;
            assert_eq!(response.status(), 400, "{path}");
            assert_eq!(response.headers()["content-type"], "application/problem+json", "{path}");
            let problem: Value = response.json().await.unwrap();
            assert_eq!(problem["type"], "urn:tally:problem:invalid-trending", "{path}");
            assert_eq!(problem["status"], 400, "{path}");
        }
        let empty: Value = query.get("/v1/trending?window=24h&limit=1000").await.json().await.unwrap();
        assert_eq!((empty["videos"].clone(), empty["complete"].clone()), (json!([]), json!(true)));
        query.shutdown.cancel();
    })
    .await;
}

#[tokio::test]
async fn a_trending_freshness_above_15_seconds_is_refused_at_start() {
    let store = SqliteStore::in_memory().unwrap();
    let config = QueryConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        trending_fresh_for: Duration::from_secs(16),
        ..QueryConfig::default()
    };
    let built = QueryService::build(&config, store, None, &Registry::new(), &Readiness::default()).await;
    let error = built.err().expect("16 s refused").to_string();
    assert!(error.contains("trending-fresh-for") && error.contains("15s"), "{error}");
}
