//! One trending answer, read from the store: candidates from the summed
//! sketches of the window, ranked by their exact views
//! ([`tally_store::trending::hours::top_cached`]: closed hours from the
//! process's hour cache), and for `order=velocity` re-ranked by
//! growth against the 24 hours before the window.

use serde_json::{json, Value};
use tally_model::timestamp::{format_rfc3339_ms, minute_bucket};
use tally_store::trending::hours::{top_cached, HourCache, HourStats};
use tally_store::{CountStore, StoreError};

use super::params::{Order, TrendingRequest, BASELINE_MS};

/// Fewest candidates whose exact views are read, whatever the limit: small
/// limits are cheap to widen and the error bound shrinks with them.
const MIN_CANDIDATES: usize = 100;

/// One listed video.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// The video.
    pub video_id: String,
    /// Its views in the window (exact: what its minute series sums to).
    pub views: i64,
    /// For `order=velocity`: its views in the 24 hours before the window.
    pub baseline_views: Option<i64>,
    /// For `order=velocity`: [`velocity`].
    pub velocity: Option<f64>,
}

/// Growth of a video: its views in the window over its average views per
/// window length in the 24 hours before the window, that average taken as
/// at least 1 view (a video new in the window is not infinitely fast):
/// `views / max(baseline_views × window / 24 h, 1)`.
pub fn velocity(views: i64, baseline_views: i64, window_ms: i64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // view counts stay far below 2^52
    let average = baseline_views as f64 * window_ms as f64 / BASELINE_MS as f64;
    #[allow(clippy::cast_precision_loss)]
    let views = views as f64;
    views / average.max(1.0)
}

/// The window of an answer computed at `now_ms`: the last window length of
/// whole minutes, through the end of the current minute.
pub fn window_at(request: &TrendingRequest, now_ms: i64) -> (i64, i64) {
    let to = minute_bucket(now_ms) + 60_000;
    (to - request.window.millis(), to)
}

/// The answer's JSON (without `stale`), read from `store` at `now_ms`,
/// and what the read did with the cached hours.
pub async fn read<S: CountStore>(
    store: &S,
    hours: &HourCache,
    request: TrendingRequest,
    now_ms: i64,
) -> Result<(String, HourStats), StoreError> {
    let (from, to) = window_at(&request, now_ms);
    let max_candidates = (2 * request.limit).max(MIN_CANDIDATES);
    let (top, stats) = top_cached(store, hours, from, to, request.limit, max_candidates).await?;
    let mut listed: Vec<Listed> = top
        .videos
        .into_iter()
        .map(|(video_id, views)| Listed { video_id, views, baseline_views: None, velocity: None })
        .collect();
    if request.order == Order::Velocity && !listed.is_empty() {
        let ids = listed.iter().map(|l| l.video_id.clone()).collect();
        let before: std::collections::HashMap<String, i64> =
            store.window_views(ids, from - BASELINE_MS, from).await?.into_iter().collect();
        for l in &mut listed {
            let baseline = before.get(&l.video_id).copied().unwrap_or(0);
            l.baseline_views = Some(baseline);
            l.velocity = Some(velocity(l.views, baseline, request.window.millis()));
        }
        rank_by_velocity(&mut listed);
    }
    let videos: Vec<Value> = listed.iter().map(render).collect();
    let json = json!({
        "window": request.window.name(),
        "order": request.order.name(),
        "from": format_rfc3339_ms(top.from_ms),
        "to": format_rfc3339_ms(top.to_ms),
        "videos": videos,
        "error_bound": top.error_bound,
        "complete": top.complete,
    })
    .to_string();
    Ok((json, stats))
}

/// Fastest first; ties by views, then video id (answers are stable).
pub fn rank_by_velocity(listed: &mut [Listed]) {
    listed.sort_by(|a, b| {
        let (va, vb) = (a.velocity.unwrap_or(0.0), b.velocity.unwrap_or(0.0));
        vb.total_cmp(&va).then_with(|| b.views.cmp(&a.views)).then_with(|| a.video_id.cmp(&b.video_id))
    });
}

fn render(l: &Listed) -> Value {
    match (l.baseline_views, l.velocity) {
        (Some(baseline), Some(velocity)) => json!({
            "video_id": l.video_id, "views": l.views, "baseline_views": baseline, "velocity": velocity,
        }),
        _ => json!({ "video_id": l.video_id, "views": l.views }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trending::params::Window;

    fn listed(video: &str, views: i64, baseline: i64) -> Listed {
        Listed {
            video_id: video.into(),
            views,
            baseline_views: Some(baseline),
            velocity: Some(velocity(views, baseline, Window::Hour.millis())),
        }
    }

    #[test]
    fn velocity_compares_the_window_with_the_trailing_day_average() {
        // 240 views in the day before: 10 per hour on average.
        assert!((velocity(50, 240, Window::Hour.millis()) - 5.0).abs() < 1e-9);
        assert!((velocity(50, 100, Window::Day.millis()) - 0.5).abs() < 1e-9);
        // New videos: the average is floored at one view.
        assert!((velocity(7, 0, Window::Hour.millis()) - 7.0).abs() < 1e-9);
        let mut videos = vec![listed("steady", 1_000, 24_000), listed("rising", 100, 240), listed("new", 30, 0)];
        rank_by_velocity(&mut videos);
        let order: Vec<&str> = videos.iter().map(|l| l.video_id.as_str()).collect();
        assert_eq!(order, vec!["new", "rising", "steady"]);
    }

    #[test]
    fn the_window_ends_with_the_current_minute() {
        let request = TrendingRequest { window: Window::Hour, limit: 1, order: Order::Views };
        let now = 1_795_341_600_000 + 90_000;
        assert_eq!(window_at(&request, now), (1_795_341_600_000 + 120_000 - 3_600_000, 1_795_341_600_000 + 120_000));
    }
}
