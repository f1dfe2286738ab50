//! Reading totals back: through the query API, as a client would, or
//! straight from an embedded store file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tally_store::{CountStore, SqliteStore};

/// Ids per `views:batchGet` request (the API's limit is higher; smaller
/// requests keep one slow answer from timing out a whole read).
const IDS_PER_REQUEST: usize = 500;

/// The `views` of each of `ids` from `POST /v1/views:batchGet` on `api`
/// (`host:port`); `Err` with the reason when any request fails or an answer
/// is not a batch of results (a service restarting, the store down).
pub async fn views(
    http: &reqwest::Client,
    api: &str,
    ids: &[impl AsRef<str>],
) -> Result<BTreeMap<String, i64>, String> {
    let mut got = BTreeMap::new();
    let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
    for chunk in ids.chunks(IDS_PER_REQUEST) {
        let response = http
            .post(format!("http://{api}/v1/views:batchGet"))
            .json(&json!({ "video_ids": chunk }))
            .send()
            .await
            .map_err(|e| format!("batchGet: {e}"))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| format!("batchGet answer ({status}): {e}"))?;
        let results = body["results"].as_array().ok_or_else(|| format!("batchGet answered {status}: {body}"))?;
        for r in results {
            let video = r["video_id"].as_str().ok_or_else(|| format!("a result without video_id: {r}"))?;
            let views = r["views"].as_i64().ok_or_else(|| format!("a result without views: {r}"))?;
            got.insert(video.to_owned(), views);
        }
    }
    Ok(got)
}

/// The answer of `GET /v1/videos/{video}/uniques` over `[from_ms, to_ms)` on `api`.
pub async fn uniques(
    http: &reqwest::Client,
    api: &str,
    video: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<Value, String> {
    let url = format!("http://{api}/v1/videos/{video}/uniques?from={from_ms}&to={to_ms}");
    let response = http.get(url).send().await.map_err(|e| format!("uniques: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| format!("uniques answer ({status}): {e}"))?;
    if status != 200 {
        return Err(format!("uniques answered {status}: {body}"));
    }
    Ok(body)
}

/// Waits until the store at `db` holds exactly `expected`; fails the test
/// saying `when` after `limit` (at once with a zero limit).
pub async fn store_totals_become(db: &Path, expected: &BTreeMap<String, i64>, limit: Duration, when: &str) {
    let store = SqliteStore::open(db).unwrap();
    let videos: Vec<String> = expected.keys().cloned().collect();
    let deadline = Instant::now() + limit;
    loop {
        let totals: BTreeMap<String, i64> =
            store.totals(videos.clone()).await.unwrap().into_iter().map(|t| (t.video_id, t.views)).collect();
        if &totals == expected {
            return;
        }
        assert!(Instant::now() < deadline, "not exact {when}: {totals:?} vs {expected:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
