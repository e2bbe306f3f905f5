//! What the dashboard knows about the fleet: the latest metrics snapshot of every worker
//! and the count of alerts by kind, folded into the one view the page draws. Pure, so it
//! is tested on snapshots as the workers write them.
//!
//! Counters in a snapshot are totals since that worker started; a worker that restarts
//! (a resize, a crash) starts again from 0, so a drop is carried over and the fleet's
//! totals stay totals over everything read.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use teddyflow_dataflow::outputs::MetricsSnapshot as Snapshot;
use teddyflow_dataflow::stage::{self, Kind, Stage};

/// Of a `teddy.alerts` record, only the kind is read: never the excerpt or any id.
#[derive(Debug, Deserialize)]
pub struct AlertRecord {
    pub kind: String,
}

/// The stages the page has a row for: every timed one.
fn shown() -> impl Iterator<Item = Stage> {
    stage::ALL.into_iter().filter(|s| s.kind() != Kind::Untimed)
}

/// Counters a restart resets, per worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
struct Totals {
    utterances_done: u64,
    deadletters: u64,
    alerts: u64,
    replies_replaced: u64,
}

impl Totals {
    fn of(s: &Snapshot) -> Totals {
        Totals {
            utterances_done: s.counts.utterances_done,
            deadletters: s.counts.deadletters,
            alerts: s.counts.alerts,
            replies_replaced: s.counts.replies_replaced,
        }
    }

    fn add(self, o: Totals) -> Totals {
        Totals {
            utterances_done: self.utterances_done + o.utterances_done,
            deadletters: self.deadletters + o.deadletters,
            alerts: self.alerts + o.alerts,
            replies_replaced: self.replies_replaced + o.replies_replaced,
        }
    }
}

#[derive(Debug, Default)]
struct WorkerState {
    last: Snapshot,
    /// What earlier runs of this worker had counted before it restarted.
    carried: Totals,
}

/// One point of the latency chart: a snapshot interval, all workers together.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub ts_ms: i64,
    /// Stage → [p50, p95] ms: the count-weighted mean of the workers' p50s (an
    /// approximation of the fleet's p50) and the highest p95 (an upper bound).
    pub stages: BTreeMap<String, [f64; 2]>,
    pub utterances_per_s: f64,
}

#[derive(Debug, Default)]
pub struct Fleet {
    workers: BTreeMap<(usize, usize), WorkerState>,
    alert_kinds: BTreeMap<String, u64>,
    /// (ts_ms, fleet utterances answered) after each snapshot, for the rate.
    answered: VecDeque<(i64, u64)>,
    history: VecDeque<Point>,
    history_len: usize,
    /// Stage → (count, Σ count × p50, highest p95) over every snapshot read.
    run_stages: BTreeMap<String, (u64, f64, f64)>,
}

/// How far back utterances/s looks.
const RATE_WINDOW_MS: i64 = 30_000;

/// A worker whose last snapshot is older than this many of its intervals is shown as gone
/// (stopped, or replaced by a resize) and left out of the current latencies and lag.
const STALE_INTERVALS: i64 = 3;

impl Fleet {
    pub fn new(history_len: usize) -> Fleet {
        Fleet {
            history_len: history_len.max(2),
            ..Default::default()
        }
    }

    pub fn snapshot(&mut self, s: Snapshot) {
        let w = self.workers.entry((s.process, s.worker)).or_default();
        if s.counts.utterances_done < w.last.counts.utterances_done
            || s.counts.deadletters < w.last.counts.deadletters
        {
            w.carried = w.carried.add(Totals::of(&w.last));
        }
        for (name, st) in s.stages.iter().filter(|(_, st)| st.count > 0) {
            let r = self.run_stages.entry(name.name().to_string()).or_default();
            r.0 += st.count;
            r.1 += st.count as f64 * st.p50_ms;
            r.2 = r.2.max(st.p95_ms);
        }
        let ts = s.ts_ms;
        w.last = s;
        let done = self.totals().utterances_done;
        self.answered.push_back((ts, done));
        while self
            .answered
            .front()
            .is_some_and(|(t, _)| *t < ts - RATE_WINDOW_MS)
        {
            self.answered.pop_front();
        }
        self.chart_point(ts);
    }

    pub fn alert(&mut self, a: AlertRecord) {
        *self.alert_kinds.entry(a.kind).or_default() += 1;
    }

    fn totals(&self) -> Totals {
        self.workers.values().fold(Totals::default(), |t, w| {
            t.add(w.carried).add(Totals::of(&w.last))
        })
    }

    fn now_ms(&self) -> i64 {
        self.workers
            .values()
            .map(|w| w.last.ts_ms)
            .max()
            .unwrap_or(0)
    }

    fn live(&self) -> impl Iterator<Item = &Snapshot> {
        let now = self.now_ms();
        self.workers
            .values()
            .map(|w| &w.last)
            .filter(move |s| now - s.ts_ms <= STALE_INTERVALS * s.interval_ms.max(1) as i64)
    }

    fn rate(&self) -> f64 {
        match (self.answered.front(), self.answered.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 * 1000.0 / (t1 - t0) as f64
            }
            _ => 0.0,
        }
    }

    /// Latency per stage over the live workers' latest intervals.
    fn stage_figures(&self) -> BTreeMap<String, StageView> {
        let mut out: BTreeMap<String, StageView> = BTreeMap::new();
        for s in self.live() {
            for (name, st) in s.stages.iter().filter(|(_, st)| st.count > 0) {
                let v = out.entry(name.name().to_string()).or_default();
                v.count += st.count;
                v.p50_ms += st.count as f64 * st.p50_ms;
                v.p95_ms = v.p95_ms.max(st.p95_ms);
                v.busy += st.count as f64 * st.p50_ms / s.interval_ms.max(1) as f64;
            }
        }
        for v in out.values_mut() {
            v.p50_ms /= v.count.max(1) as f64;
        }
        out
    }

    fn chart_point(&mut self, ts: i64) {
        let stages = self
            .stage_figures()
            .into_iter()
            .map(|(k, v)| (k, [v.p50_ms, v.p95_ms]))
            .collect();
        let point = Point {
            ts_ms: ts,
            stages,
            utterances_per_s: self.rate(),
        };
        // Snapshots of one interval from several workers update one point.
        let interval = self
            .live()
            .map(|s| s.interval_ms as i64)
            .max()
            .unwrap_or(1000);
        match self.history.back_mut() {
            Some(last) if ts - last.ts_ms < interval / 2 => *last = point,
            _ => self.history.push_back(point),
        }
        while self.history.len() > self.history_len {
            self.history.pop_front();
        }
    }

    pub fn view(&self) -> View {
        let totals = self.totals();
        let figures = self.stage_figures();
        let stages = shown()
            .map(|stage| {
                let f = figures.get(stage.name()).cloned().unwrap_or_default();
                let compute = stage.pool().is_some();
                StageRow {
                    stage: stage.name(),
                    compute,
                    count: f.count,
                    p50_ms: f.p50_ms,
                    p95_ms: f.p95_ms,
                    busy: compute.then_some(f.busy),
                }
            })
            .collect();
        let mut lag: BTreeMap<i32, i64> = BTreeMap::new();
        let mut newest: BTreeMap<i32, i64> = BTreeMap::new();
        for s in self.live() {
            for (&p, l) in &s.lag_by_partition {
                // After a resize two workers may have owned a partition: the newest says.
                if newest.get(&p).is_none_or(|t| *t <= s.ts_ms) {
                    newest.insert(p, s.ts_ms);
                    lag.insert(p, *l);
                }
            }
        }
        let now = self.now_ms();
        let workers = self
            .workers
            .iter()
            .map(|(&(process, worker), w)| WorkerRow {
                process,
                worker,
                rss_bytes: w.last.rss_bytes,
                in_flight: w.last.in_flight,
                consumer_lag: w.last.consumer_lag,
                utterances_done: w.carried.utterances_done + w.last.counts.utterances_done,
                age_ms: now - w.last.ts_ms,
                live: now - w.last.ts_ms <= STALE_INTERVALS * w.last.interval_ms.max(1) as i64,
            })
            .collect();
        let run_stages = shown()
            .filter_map(|stage| {
                let (count, weighted, p95) = self.run_stages.get(stage.name())?;
                Some(RunStageRow {
                    stage: stage.name(),
                    count: *count,
                    p50_ms: weighted / (*count).max(1) as f64,
                    p95_ms: *p95,
                })
            })
            .collect();
        View {
            ts_ms: now,
            run_stages,
            utterances_done: totals.utterances_done,
            deadletters: totals.deadletters,
            alerts: self.alert_kinds.values().sum(),
            alerts_by_kind: self.alert_kinds.clone(),
            replies_replaced: totals.replies_replaced,
            utterances_per_s: self.rate(),
            in_flight: self.live().map(|s| s.in_flight).sum(),
            stages,
            lag_by_partition: lag,
            workers,
            history: self.history.iter().cloned().collect(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct StageView {
    count: u64,
    p50_ms: f64,
    p95_ms: f64,
    busy: f64,
}

/// Everything the page shows, sent whole on every update.
#[derive(Debug, Serialize)]
pub struct View {
    pub ts_ms: i64,
    pub utterances_done: u64,
    pub deadletters: u64,
    pub alerts: u64,
    pub alerts_by_kind: BTreeMap<String, u64>,
    pub replies_replaced: u64,
    pub utterances_per_s: f64,
    pub in_flight: i64,
    pub stages: Vec<StageRow>,
    pub lag_by_partition: BTreeMap<i32, i64>,
    pub workers: Vec<WorkerRow>,
    pub history: Vec<Point>,
    /// Every stage over everything read (the demo's closing summary).
    pub run_stages: Vec<RunStageRow>,
}

/// A stage over the whole run: p50 is the count-weighted mean of the intervals' p50s,
/// p95 the highest interval p95.
#[derive(Debug, Serialize, PartialEq)]
pub struct RunStageRow {
    pub stage: &'static str,
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct StageRow {
    pub stage: &'static str,
    pub compute: bool,
    /// Utterances through the stage in the workers' latest intervals.
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// Thread-seconds of work per second (Σ count × p50 / interval): 1.0 keeps one thread
    /// busy. Only for compute stages.
    pub busy: Option<f64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct WorkerRow {
    pub process: usize,
    pub worker: usize,
    pub rss_bytes: u64,
    pub in_flight: i64,
    pub consumer_lag: i64,
    pub utterances_done: u64,
    pub age_ms: i64,
    pub live: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use teddyflow_dataflow::metrics::StageSummary;

    /// A snapshot as a worker writes it: `v`'s fields over a default one.
    fn snap(v: serde_json::Value) -> Snapshot {
        let mut full = serde_json::to_value(Snapshot::default()).unwrap();
        let summary = serde_json::to_value(StageSummary::default()).unwrap();
        for (k, x) in v.as_object().unwrap() {
            full[k] = x.clone();
        }
        // Stage summaries given in part: the rest of their fields at zero.
        for st in full["stages"].as_object_mut().unwrap().values_mut() {
            let mut whole = summary.clone();
            for (k, x) in st.as_object().unwrap() {
                whole[k] = x.clone();
            }
            *st = whole;
        }
        serde_json::from_value(full).unwrap()
    }

    fn worker(process: usize, worker: usize, ts: i64, done: u64, asr: (u64, f64, f64)) -> Snapshot {
        snap(serde_json::json!({
            "ts_ms": ts, "worker": worker, "process": process, "interval_ms": 1000,
            "utterances_done": done, "deadletters": 1, "in_flight": 2, "rss_bytes": 100 << 20,
            "consumer_lag": 3, "lag_by_partition": {(worker * 2).to_string(): 3},
            "stages": {"asr": {"count": asr.0, "p50_ms": asr.1, "p95_ms": asr.2, "p99_ms": 0.0, "max_ms": 0.0},
                       "first_audio": {"count": 1, "p50_ms": 900.0, "p95_ms": 900.0}}
        }))
    }

    fn row<'a>(v: &'a View, stage: &str) -> &'a StageRow {
        v.stages.iter().find(|r| r.stage == stage).unwrap()
    }

    #[test]
    fn totals_sum_workers_and_latencies_weigh_by_count() {
        let mut f = Fleet::new(10);
        f.snapshot(worker(0, 0, 10_000, 4, (3, 200.0, 300.0)));
        f.snapshot(worker(0, 1, 10_100, 6, (1, 600.0, 650.0)));
        let v = f.view();
        assert_eq!((v.utterances_done, v.deadletters, v.in_flight), (10, 2, 4));
        let asr = row(&v, "asr");
        assert_eq!(asr.count, 4);
        assert_eq!(asr.p50_ms, (3.0 * 200.0 + 600.0) / 4.0);
        assert_eq!(asr.p95_ms, 650.0);
        // 3 × 200 ms + 1 × 600 ms of work in 1 s: 1.2 threads busy.
        assert!((asr.busy.unwrap() - 1.2).abs() < 1e-12);
        assert_eq!(row(&v, "first_audio").busy, None);
        assert_eq!(row(&v, "tts").count, 0);
        assert_eq!(v.stages.len(), shown().count());
        assert_eq!(v.lag_by_partition, BTreeMap::from([(0, 3), (2, 3)]));
        assert_eq!(v.history.len(), 1, "one interval, one chart point");
    }

    #[test]
    fn a_restarted_worker_keeps_the_run_totals_and_the_rate_follows_snapshot_time() {
        let mut f = Fleet::new(10);
        f.snapshot(worker(0, 0, 0, 0, (0, 0.0, 0.0)));
        f.snapshot(worker(0, 0, 10_000, 20, (5, 100.0, 100.0)));
        assert!((f.view().utterances_per_s - 2.0).abs() < 1e-12);
        // Restarted (a resize): its counters start from 0 again.
        f.snapshot(worker(0, 0, 20_000, 3, (1, 100.0, 100.0)));
        let v = f.view();
        assert_eq!(v.utterances_done, 23);
        // Over the run, not the last interval: 0 + 5 + 1 asr samples at p50 100 ms.
        let asr = v.run_stages.iter().find(|r| r.stage == "asr").unwrap();
        assert_eq!((asr.count, asr.p50_ms, asr.p95_ms), (6, 100.0, 100.0));
        assert_eq!(v.workers[0].utterances_done, 23);
        assert_eq!(v.history.len(), 3);
    }

    #[test]
    fn gone_workers_leave_the_current_figures_but_not_the_totals() {
        let mut f = Fleet::new(10);
        f.snapshot(worker(0, 0, 0, 5, (1, 900.0, 900.0)));
        f.snapshot(worker(1, 0, 10_000, 2, (1, 100.0, 100.0)));
        let v = f.view();
        assert_eq!(v.utterances_done, 7);
        assert_eq!(row(&v, "asr").p50_ms, 100.0);
        assert_eq!(v.workers.iter().filter(|w| w.live).count(), 1);
        assert!(!v.workers[0].live && v.workers[0].age_ms == 10_000);
    }

    #[test]
    fn alerts_are_counted_by_kind_from_their_kind_alone() {
        let mut f = Fleet::new(10);
        for text in [
            r#"{"kind": "unsafe", "excerpt": "never read", "conversation": "c1"}"#,
            r#"{"kind": "needs_care"}"#,
            r#"{"kind": "unsafe"}"#,
        ] {
            f.alert(serde_json::from_str(text).unwrap());
        }
        let v = f.view();
        assert_eq!(v.alerts, 3);
        assert_eq!(v.alerts_by_kind["unsafe"], 2);
        let json = serde_json::to_string(&v).unwrap();
        assert!(!json.contains("never read") && !json.contains("c1"));
    }

    #[test]
    fn the_chart_keeps_a_bounded_history() {
        let mut f = Fleet::new(3);
        for i in 0..10 {
            f.snapshot(worker(0, 0, i * 1000, i as u64, (1, 10.0 * i as f64, 0.0)));
        }
        let h = f.view().history;
        assert_eq!(h.len(), 3);
        assert_eq!(h[2].stages["asr"][0], 90.0);
    }
}
