//! Reconciling closed periods: recount from the archive, compare with the
//! real-time counts, write the batch layer (idempotently) and report drift.
//!
//! A period (one hour of event time) is closed once its end is more than the
//! allowed lateness ago: no on-time event of it can still arrive. It is
//! recounted once it is closed *and* the archive holds every event received
//! up to the allowed lateness after it ([`crate::coverage`]); until then it
//! waits, however long the archiver is behind. Reads then use the batch
//! counts for exactly the reconciled periods and real-time counts for every
//! other minute (`tally_store::layers`), so history before the first
//! reconciled period, or a gap a manual reconcile left, keeps its real-time
//! count; the scheduled loop fills gaps before it goes on ([`pending`]).
//!
//! Unique viewers: each reconciled hour records its exact distinct viewers
//! per video, and the period that completes a UTC day (every hour of it
//! reconciled) records the day's, its run recounting the whole day for that
//! ([`completed_days`]). Before writing, the largest audiences' sketch
//! estimates are compared with the exact counts
//! (`tally_reconciler_uniques_relative_error_ratio`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;
use tally_store::layers::Reconciled as ReconciledRuns;
use tally_store::{CountStore, DayUniques, Granularity, PeriodSummary, PeriodUniques, StoreError};

use crate::archive::layout::HOUR_MS;
use crate::archive::parquet_io::ArchiveError;
use crate::archive::storage::ArchiveStorage;
use crate::coverage::{self, Coverage, ViewsLog};
use crate::recount::{self, Scope};
use tally_model::counting::CountingRule;

/// How reconciliation runs.
#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// The Parquet archive.
    pub archive: ArchiveStorage,
    /// The counter's counting rule (`[counter]`), applied by the recount
    /// too; a period is closed its allowed lateness after its end.
    pub counting: CountingRule,
    /// How far before a period (receive time) the recount starts folding
    /// each partition, so that its dedup window holds what the counter's
    /// held: at least the dedup window, twice the clock skew allowed, and
    /// how far ahead of their receive time the gateways accept event times.
    pub lookback: Duration,
    /// How far past a period files are read for its late events (received
    /// late, dead-lettered and replayed, archived in their receive hour).
    pub late_lookahead: Duration,
    /// The views topic, whose high watermarks say how far the archive must reach.
    pub views: ViewsLog,
    /// The longest a gateway may still be delivering an event it received
    /// (its delivery timeout): a fully archived partition is complete up to this long ago.
    pub in_flight: Duration,
}

impl ReconcileOptions {
    /// How long after its end a period is closed: the counter's allowed lateness.
    pub fn allowed_lateness(&self) -> Duration {
        // Built from a Duration: never negative.
        Duration::from_millis(self.counting.allowed_lateness_ms.unsigned_abs())
    }
}

/// Why reconciliation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading the archive.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The views topic's watermarks could not be read.
    #[error("reading the views topic's watermarks: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reconciled {
    /// The periods recounted, oldest first.
    pub reports: Vec<PeriodReport>,
    /// Closed periods `(start_ms, end_ms)` left for a later run because the
    /// archive does not reach past them yet; always after the recounted ones.
    pub waiting_for_archive: Vec<(i64, i64)>,
    /// How far the archive was complete.
    pub archive: Coverage,
}

/// Drift of one video in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VideoDrift {
    /// The video.
    pub video_id: String,
    /// Batch count.
    pub batch: i64,
    /// Real-time count.
    pub realtime: i64,
}

/// How the real-time sketches did against the exact distinct viewers of
/// one hour or day.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UniquesCheck {
    /// Videos with viewers.
    pub videos: u64,
    /// Videos compared: the largest audiences, at most [`UNIQUES_COMPARED`].
    pub compared: u64,
    /// Largest `|estimate - exact| / exact` among them.
    pub worst_relative_error: f64,
    /// Compared videos whose exact count lay outside the sketch's bounds
    /// (two standard deviations: expect about 1 in 20 above some 1,500
    /// viewers per hour and partition, none below).
    pub outside_bounds: u64,
}

/// How many videos per hour or day the reconciler compares with their
/// sketch estimates: the largest audiences, where the sketches estimate
/// (small ones are held exactly). Each costs one store read.
pub const UNIQUES_COMPARED: usize = 1_000;

/// The outcome of one period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodReport {
    /// Period start, epoch ms.
    pub start_ms: i64,
    /// Period end, epoch ms.
    pub end_ms: i64,
    /// Views the batch recount found.
    pub batch_views: i64,
    /// Views the real-time path had counted.
    pub realtime_views: i64,
    /// `batch_views - realtime_views`.
    pub drift: i64,
    /// Videos whose counts differ (largest differences first, at most 20).
    pub drifting_videos: Vec<VideoDrift>,
    /// Archive rows read for this run (whole run, on the first period).
    pub rows_read: u64,
    /// Unique viewers of the hour: the sketches against the exact count.
    pub uniques: UniquesCheck,
    /// When this period completed its UTC day: the day's check.
    pub day_uniques: Option<UniquesCheck>,
}

/// Reconciliation metrics.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    /// Drift of the last reconciled period.
    pub drift: IntGauge,
    /// Absolute drift summed over reconciled periods.
    pub drift_total: IntCounter,
    /// Periods reconciled.
    pub periods: IntCounter,
    /// End of the last reconciled period, epoch seconds.
    pub exact_through: IntGauge,
    /// Receive time up to which the archive is complete, epoch seconds.
    pub archive_complete_through: IntGauge,
    /// Closed periods waiting for the archive.
    pub waiting_periods: IntGauge,
    /// `|estimate - exact| / exact` of compared unique-viewer sketches, by granularity.
    pub uniques_relative_error: HistogramVec,
    /// Compared sketches whose bounds missed the exact count, by granularity.
    pub uniques_outside_bounds: IntCounterVec,
}

impl ReconcileMetrics {
    /// Registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            drift: IntGauge::new(
                "tally_reconciler_drift_views",
                "Batch minus real-time views of the last reconciled period",
            )?,
            drift_total: IntCounter::new(
                "tally_reconciler_drift_views_total",
                "Absolute drift summed over reconciled periods",
            )?,
            periods: IntCounter::new("tally_reconciler_periods_total", "Periods reconciled")?,
            exact_through: IntGauge::new(
                "tally_reconciler_exact_through_seconds",
                "End of the last reconciled period (epoch seconds): counts before it are batch-verified",
            )?,
            archive_complete_through: IntGauge::new(
                "tally_reconciler_archive_complete_through_seconds",
                "Gateway receive time (epoch seconds) up to which every partition is archived; 0 when one has records and no file",
            )?,
            waiting_periods: IntGauge::new(
                "tally_reconciler_periods_waiting_for_archive",
                "Closed periods not recounted yet because the archive does not reach past them",
            )?,
            uniques_relative_error: HistogramVec::new(
                HistogramOpts::new(
                    "tally_reconciler_uniques_relative_error_ratio",
                    "Relative error of the unique-viewer sketches against the batch's exact count, per compared video and hour or day",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.016, 0.024, 0.032, 0.05, 0.1, 0.25, 1.0]),
                &["granularity"],
            )?,
            uniques_outside_bounds: IntCounterVec::new(
                Opts::new(
                    "tally_reconciler_uniques_outside_bounds_total",
                    "Compared unique-viewer sketches whose two-standard-deviation bounds missed the exact count",
                ),
                &["granularity"],
            )?,
        };
        // Every series exists from the start, so rate() sees the first one.
        for granularity in ["hour", "day"] {
            m.uniques_relative_error.with_label_values(&[granularity]);
            m.uniques_outside_bounds.with_label_values(&[granularity]);
        }
        registry.register(Box::new(m.uniques_relative_error.clone()))?;
        registry.register(Box::new(m.uniques_outside_bounds.clone()))?;
        registry.register(Box::new(m.drift.clone()))?;
        registry.register(Box::new(m.drift_total.clone()))?;
        registry.register(Box::new(m.periods.clone()))?;
        registry.register(Box::new(m.exact_through.clone()))?;
        registry.register(Box::new(m.archive_complete_through.clone()))?;
        registry.register(Box::new(m.waiting_periods.clone()))?;
        Ok(m)
    }
}

/// The closed hours of `[from_ms, to_ms)` at `now_ms`.
pub fn closed_periods(from_ms: i64, to_ms: i64, now_ms: i64, lateness: Duration) -> Vec<(i64, i64)> {
    let lateness = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    let mut start = from_ms.div_euclid(HOUR_MS) * HOUR_MS;
    while start < to_ms {
        let end = start + HOUR_MS;
        if end.saturating_add(lateness) <= now_ms {
            out.push((start, end));
        }
        start = end;
    }
    out
}

/// The ranges the scheduled loop reconciles at `now_ms`, oldest first: with
/// no period reconciled yet, the `first_lookback_ms` before now; else every
/// gap between reconciled periods (left by a manual reconcile of a later
/// range, or by a run that stopped half way) and then everything after the
/// last one. Nothing before the first reconciled period: the archive may not
/// reach back there (it stays real time).
pub fn pending(periods: &[PeriodSummary], now_ms: i64, first_lookback_ms: i64) -> Vec<(i64, i64)> {
    let mut spans: Vec<(i64, i64)> = periods.iter().map(|p| (p.start_ms, p.end_ms)).collect();
    spans.sort_unstable();
    let Some(&(first_start, _)) = spans.first() else {
        return vec![(now_ms.saturating_sub(first_lookback_ms), now_ms)];
    };
    let mut out = Vec::new();
    let mut cursor = first_start;
    for (start, end) in spans {
        if start > cursor {
            out.push((cursor, start));
        }
        cursor = cursor.max(end);
    }
    if cursor < now_ms {
        out.push((cursor, now_ms));
    }
    out
}

/// Reconciles every closed hour of `[from_ms, to_ms)` the archive covers;
/// `progress(done, total)` is called after each period.
pub async fn reconcile<S: CountStore>(
    store: &S,
    options: &ReconcileOptions,
    from_ms: i64,
    to_ms: i64,
    metrics: Option<&ReconcileMetrics>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Reconciled, ReconcileError> {
    // In this order: an event received before `now - in_flight` is below the
    // watermarks read after `now`, and files listed after them reach at least as far.
    let now = tally_model::timestamp::now_ms();
    let watermarks = options.views.watermarks().await?;
    let files = options.archive.list().await?;
    let archive = coverage::coverage(&files, &watermarks, now, options.in_flight);
    let lateness = options.allowed_lateness();
    let (periods, waiting_for_archive): (Vec<_>, Vec<_>) = closed_periods(from_ms, to_ms, now, lateness)
        .into_iter()
        .partition(|(_, end)| coverage::covers(&archive, *end, lateness));
    if let Some(m) = metrics {
        m.archive_complete_through.set(archive.complete_through_ms.max(0) / 1000);
        m.waiting_periods.set(i64::try_from(waiting_for_archive.len()).unwrap_or(i64::MAX));
    }
    if let Some((start, _)) = waiting_for_archive.first() {
        tracing::info!(
            waiting = waiting_for_archive.len(),
            first_start_ms = start,
            complete_through_ms = archive.complete_through_ms,
            behind_partition = ?archive.behind_partition,
            "closed periods wait for the archive"
        );
    }
    let reports = recount_periods(store, options, &periods, metrics, &mut progress).await?;
    Ok(Reconciled { reports, waiting_for_archive, archive })
}

/// The UTC days that reconciling `run` completes: days holding a period of
/// `run` every hour of which is reconciled once `run` is (with `stored`).
pub fn completed_days(stored: &[PeriodSummary], run: &[(i64, i64)]) -> BTreeSet<i64> {
    let runs = ReconciledRuns::new(stored.iter().map(|p| (p.start_ms, p.end_ms)).chain(run.iter().copied()));
    let day_ms = Granularity::Day.millis();
    run.iter()
        .map(|(start, _)| Granularity::Day.bucket(*start))
        .filter(|day| runs.outside(*day, day + day_ms).is_empty())
        .collect()
}

async fn recount_periods<S: CountStore>(
    store: &S,
    options: &ReconcileOptions,
    periods: &[(i64, i64)],
    metrics: Option<&ReconcileMetrics>,
    progress: &mut impl FnMut(usize, usize),
) -> Result<Vec<PeriodReport>, ReconcileError> {
    let (Some(first), Some(last)) = (periods.first().copied(), periods.last().copied()) else { return Ok(Vec::new()) };
    let days = completed_days(&store.periods().await?, periods);
    let day_ms = Granularity::Day.millis();
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    // A day's distinct viewers need all of its hours recounted.
    let scope = Scope {
        from_ms: days.first().map_or(first.0, |day| first.0.min(*day)),
        to_ms: days.last().map_or(last.1, |day| last.1.max(day + day_ms)),
        lookback_ms: millis(options.lookback),
        lookahead_ms: millis(options.late_lookahead),
    };
    let counted = recount::recount(&options.archive, &scope, &options.counting).await?;
    let mut reports = Vec::with_capacity(periods.len());
    for (index, (start, end)) in periods.iter().copied().enumerate() {
        let batch_minutes: Vec<(String, i64, i64)> = counted
            .minutes
            .range((String::new(), i64::MIN)..)
            .filter(|((_, minute), _)| *minute >= start && *minute < end)
            .map(|((video, minute), views)| (video.clone(), *minute, *views))
            .collect();
        let realtime = store.realtime_minutes(start, end).await?;
        let mut per_video: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (video, _, views) in &batch_minutes {
            per_video.entry(video.clone()).or_default().0 += views;
        }
        for (video, _, views) in &realtime {
            per_video.entry(video.clone()).or_default().1 += views;
        }
        let batch_views: i64 = per_video.values().map(|v| v.0).sum();
        let realtime_views: i64 = per_video.values().map(|v| v.1).sum();
        let mut drifting: Vec<VideoDrift> = per_video
            .into_iter()
            .filter(|(_, (b, r))| b != r)
            .map(|(video_id, (batch, realtime))| VideoDrift { video_id, batch, realtime })
            .collect();
        drifting.sort_by_key(|d| std::cmp::Reverse((d.batch - d.realtime).abs()));
        drifting.truncate(20);
        let day = Granularity::Day.bucket(start);
        let completes_day = days.contains(&day) && periods[index + 1..].iter().all(|(next, _)| *next >= day + day_ms);
        let uniques = PeriodUniques {
            hour: counted.viewers.hour(start),
            day: completes_day.then(|| DayUniques { day_ms: day, viewers: counted.viewers.day(day) }),
        };
        let hour_check = check_uniques(store, &uniques.hour, (start, end), metrics.map(|m| (m, "hour"))).await?;
        let day_check = match &uniques.day {
            Some(d) => Some(check_uniques(store, &d.viewers, (day, day + day_ms), metrics.map(|m| (m, "day"))).await?),
            None => None,
        };
        store
            .replace_batch(
                PeriodSummary { start_ms: start, end_ms: end, batch_views, realtime_views },
                batch_minutes,
                Some(uniques),
            )
            .await?;
        let drift = batch_views - realtime_views;
        if let Some(m) = metrics {
            m.drift.set(drift);
            m.drift_total.inc_by(drift.unsigned_abs());
            m.periods.inc();
            // Filling a gap does not move it back.
            m.exact_through.set(m.exact_through.get().max(end / 1000));
        }
        reports.push(PeriodReport {
            start_ms: start,
            end_ms: end,
            batch_views,
            realtime_views,
            drift,
            drifting_videos: drifting,
            rows_read: if index == 0 { counted.rows_read } else { 0 },
            uniques: hour_check,
            day_uniques: day_check,
        });
        progress(index + 1, periods.len());
    }
    Ok(reports)
}

/// Compares the sketch estimates of the [`UNIQUES_COMPARED`] largest of
/// `exact` (distinct viewers per video over `range`) with the exact counts.
async fn check_uniques<S: CountStore>(
    store: &S,
    exact: &[(String, u64)],
    (from, to): (i64, i64),
    metrics: Option<(&ReconcileMetrics, &str)>,
) -> Result<UniquesCheck, ReconcileError> {
    // Owned: a future borrowing from `exact` is not `Send` for every lifetime.
    let mut largest: Vec<(String, u64)> = exact.iter().filter(|(_, viewers)| *viewers > 0).cloned().collect();
    largest.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    largest.truncate(UNIQUES_COMPARED);
    let estimates: Vec<(u64, tally_model::uniques::UniquesEstimate)> = stream::iter(largest)
        .map(|(video, viewers)| async move {
            let read = store.uniques(video, from, to).await?;
            Ok::<_, StoreError>((viewers, read.estimate))
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let mut check =
        UniquesCheck { videos: exact.len() as u64, compared: estimates.len() as u64, ..UniquesCheck::default() };
    for (viewers, estimate) in estimates {
        let error = (estimate.uniques as f64 - viewers as f64).abs() / viewers as f64;
        check.worst_relative_error = check.worst_relative_error.max(error);
        let outside = viewers < estimate.lower_bound || viewers > estimate.upper_bound;
        check.outside_bounds += u64::from(outside);
        if let Some((m, granularity)) = metrics {
            m.uniques_relative_error.with_label_values(&[granularity]).observe(error);
            if outside {
                m.uniques_outside_bounds.with_label_values(&[granularity]).inc();
            }
        }
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_fills_gaps_before_going_on_after_the_last_period() {
        let t0 = 1_795_341_600_000;
        let period =
            |start: i64| PeriodSummary { start_ms: start, end_ms: start + HOUR_MS, batch_views: 0, realtime_views: 0 };
        let now = t0 + 30 * HOUR_MS;
        assert_eq!(pending(&[], now, 24 * HOUR_MS), vec![(now - 24 * HOUR_MS, now)]);
        // Reconciled 10:00 and 11:00, then by hand 15:00: 12:00-15:00 is a gap.
        let periods = [period(t0 + 5 * HOUR_MS), period(t0), period(t0 + HOUR_MS)];
        assert_eq!(
            pending(&periods, now, 24 * HOUR_MS),
            vec![(t0 + 2 * HOUR_MS, t0 + 5 * HOUR_MS), (t0 + 6 * HOUR_MS, now)]
        );
        assert_eq!(pending(&periods[1..], t0 + 2 * HOUR_MS, 0), vec![]);
    }

    #[test]
    fn only_hours_past_the_allowed_lateness_are_closed() {
        let t0 = 1_795_341_600_000; // 10:00
        let now = t0 + 3 * HOUR_MS + 30 * 60_000; // 13:30
        let closed = closed_periods(t0 + 5, t0 + 4 * HOUR_MS, now, Duration::from_secs(3600));
        assert_eq!(closed, vec![(t0, t0 + HOUR_MS), (t0 + HOUR_MS, t0 + 2 * HOUR_MS)]);
    }

    #[test]
    fn a_day_is_completed_by_the_run_that_reconciles_its_last_missing_hour() {
        let day = 20_000 * 24 * HOUR_MS;
        let period =
            |start: i64| PeriodSummary { start_ms: start, end_ms: start + HOUR_MS, batch_views: 0, realtime_views: 0 };
        let hour = |h: i64| (day + h * HOUR_MS, day + (h + 1) * HOUR_MS);
        let stored: Vec<PeriodSummary> = (0..23).filter(|h| *h != 5).map(|h| period(day + h * HOUR_MS)).collect();
        assert!(completed_days(&stored, &[hour(23)]).is_empty(), "05:00 is still missing");
        assert_eq!(completed_days(&stored, &[hour(5), hour(23)]), BTreeSet::from([day]));
        assert_eq!(completed_days(&stored, &[hour(23), hour(24)]), BTreeSet::new(), "the next day has one hour");
        let all: Vec<PeriodSummary> = (0..24).map(|h| period(day + h * HOUR_MS)).collect();
        assert_eq!(completed_days(&all, &[hour(7)]), BTreeSet::from([day]), "a rerun recounts its day again");
    }
}
