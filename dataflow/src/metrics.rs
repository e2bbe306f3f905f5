//! Per-worker metrics, written as JSON snapshots to the metrics topic. No PII: only
//! counts, sizes and latencies — never conversation ids, child ids or transcripts.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use teddyflow_connectors::http::{AlertKind, Telemetry};
use teddyflow_connectors::wire::DeadLetterReason;
use teddyflow_models::safety::Verdict;

use crate::envelope::Meta;
use crate::outputs::{Counts, MetricsSnapshot};
use crate::stage::{Pool, Stage};

/// Latency samples of one stage since the last snapshot (bounded, so memory stays flat).
#[derive(Debug, Default, Clone)]
pub struct Samples {
    count: u64,
    values: Vec<f64>,
}

const MAX_SAMPLES: usize = 4096;

impl Samples {
    pub fn add(&mut self, ms: f64) {
        self.count += 1;
        if self.values.len() < MAX_SAMPLES {
            self.values.push(ms);
        } else {
            // Reservoir sampling keeps a uniform sample of the interval without growing;
            // a xorshift of the count is random enough for percentiles.
            let mut x = self.count;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % self.count) as usize;
            if i < MAX_SAMPLES {
                self.values[i] = ms;
            }
        }
    }

    fn summary(&mut self) -> StageSummary {
        self.values.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| percentile(&self.values, p);
        let s = StageSummary {
            count: self.count,
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            max_ms: self.values.last().copied().unwrap_or(0.0),
        };
        *self = Samples::default();
        s
    }
}

/// Nearest-rank percentile of sorted values (0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StageSummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Default)]
pub struct WorkerMetrics {
    pub counts: Counts,
    pub errors: BTreeMap<String, u64>,
    /// Records the operators hold (the sink's queue, responses waiting for first audio);
    /// each operator keeps its own count, summed into `in_flight` at every snapshot.
    pub in_flight: Vec<Rc<Cell<usize>>>,
    pub lag: BTreeMap<i32, i64>,
    pub stages: BTreeMap<Stage, Samples>,
    /// Stage → (sum of batch sizes, utterances) since the last snapshot.
    pub batch_sizes: BTreeMap<Stage, (u64, u64)>,
    /// The process's core budget and pool sizes (what `plan` needs to know about it).
    pub cores: usize,
    pub threads: BTreeMap<Pool, usize>,
    /// The process's Prometheus families: every stage time recorded here is observed
    /// there too (the `/metrics` histograms), so the graph times each stage once.
    pub telemetry: Option<Arc<Telemetry>>,
}

impl WorkerMetrics {
    pub fn stage(&mut self, stage: Stage, ms: f64) {
        if let Some(t) = &self.telemetry {
            t.stage_ms(stage.name(), ms);
        }
        self.stages.entry(stage).or_default().add(ms);
    }

    /// A response was acknowledged.
    pub fn answered(&mut self) {
        self.counts.utterances_done += 1;
        if let Some(t) = &self.telemetry {
            t.utterance_done();
        }
    }

    /// A dead letter was acknowledged.
    pub fn dead_lettered(&mut self, reason: DeadLetterReason) {
        self.counts.deadletters += 1;
        if let Some(t) = &self.telemetry {
            t.deadletter(reason);
        }
    }

    /// A parent alert was acknowledged.
    pub fn alerted(&mut self, kind: Verdict) {
        self.counts.alerts += 1;
        let kind = match kind {
            Verdict::Unsafe => AlertKind::Unsafe,
            Verdict::NeedsCare | Verdict::Safe => AlertKind::NeedsCare,
        };
        if let Some(t) = &self.telemetry {
            t.alert(kind);
        }
    }

    /// A generated reply was replaced by a safe line.
    pub fn reply_replaced(&mut self) {
        self.counts.replies_replaced += 1;
        if let Some(t) = &self.telemetry {
            t.reply_replaced();
        }
    }

    /// A count of held records an operator keeps up to date, for the `in_flight` gauge.
    pub fn in_flight_gauge(&mut self) -> Rc<Cell<usize>> {
        let gauge = Rc::new(Cell::new(0));
        self.in_flight.push(gauge.clone());
        gauge
    }

    /// The times an utterance's metadata holds for `stages`.
    pub fn timings(&mut self, meta: &Meta, stages: &[Stage]) {
        for (stage, ms) in meta.timings.iter().filter(|(s, _)| stages.contains(s)) {
            self.stage(*stage, *ms);
        }
    }

    /// The batch `stage` processed an utterance in, from its `Meta::batches`.
    pub fn batches(&mut self, meta: &Meta, stage: Stage) {
        for (_, size) in meta.batches.iter().filter(|(s, _)| *s == stage) {
            let (sum, n) = self.batch_sizes.entry(stage).or_default();
            *sum += *size as u64;
            *n += 1;
        }
    }

    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    /// A snapshot for the metrics topic; per-interval samples are reset, counters are totals.
    pub fn snapshot(&mut self, worker: usize, process: usize, interval_ms: u64) -> MetricsSnapshot {
        let stages = self
            .stages
            .iter_mut()
            .map(|(k, s)| (*k, s.summary()))
            .collect();
        // Mean batch size per utterance over the interval (how full the batches ran).
        let batch_mean = std::mem::take(&mut self.batch_sizes)
            .into_iter()
            .map(|(k, (sum, n))| (k, sum as f64 / n.max(1) as f64))
            .collect();
        let in_flight = self.in_flight.iter().map(|c| c.get() as i64).sum();
        if let Some(t) = &self.telemetry {
            // Gauges follow the snapshots: a scrape sees the last interval's values.
            t.in_flight(worker, in_flight);
            t.lag(&self.lag);
        }
        MetricsSnapshot {
            ts_ms: crate::envelope::now_ms(),
            worker,
            process,
            interval_ms,
            counts: self.counts,
            errors: self.errors.clone(),
            in_flight,
            consumer_lag: self.lag.values().sum(),
            lag_by_partition: self.lag.clone(),
            rss_bytes: rss_bytes(),
            stages,
            batch_mean,
            cores: self.cores,
            threads: self.threads.clone(),
        }
    }
}

/// Resident set size of this process, from /proc (0 where unavailable).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn snapshot_resets_samples_but_keeps_totals() {
        let mut m = WorkerMetrics::default();
        m.counts.records_in = 3;
        for ms in [10.0, 20.0, 30.0] {
            m.stage(Stage::Asr, ms);
        }
        let s = m.snapshot(0, 0, 1000);
        assert_eq!(s.stages[&Stage::Asr].count, 3);
        assert_eq!(s.stages[&Stage::Asr].p50_ms, 20.0);
        let mut meta = crate::envelope::tests::meta("c", "u");
        meta.batches = vec![(Stage::Asr, 3)];
        m.batches(&meta, Stage::Asr);
        meta.batches = vec![(Stage::Asr, 1), (Stage::Understand, 5)];
        m.batches(&meta, Stage::Asr);
        assert!(s.rss_bytes > 0);
        let s = m.snapshot(0, 0, 1000);
        assert_eq!(s.stages[&Stage::Asr].count, 0);
        assert_eq!(s.batch_mean[&Stage::Asr], 2.0);
        assert!(!s.batch_mean.contains_key(&Stage::Understand));
        assert_eq!(s.counts.records_in, 3);
        assert!(m.snapshot(0, 0, 1000).batch_mean.is_empty());
        // The snapshot's JSON is what docs/wire-format.md shows: stage names as keys.
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["stages"]["asr"]["count"], 0);
    }

    #[test]
    fn stage_times_reach_the_prometheus_histograms() {
        let t = Telemetry::new(1, false);
        let mut m = WorkerMetrics {
            telemetry: Some(t.clone()),
            ..Default::default()
        };
        m.stage(Stage::Asr, 250.0);
        m.stage(Stage::FirstAudio, 900.0);
        let e = teddyflow_connectors::http::exposition::parse(&t.encode()).unwrap();
        let h = |s: &str| e.histogram("teddyflow_stage_duration_seconds", &[("stage", s)]);
        assert_eq!(h("asr").unwrap().count, 1.0);
        assert_eq!(h("first_audio").unwrap().sum, 0.9);
        assert_eq!(m.snapshot(0, 0, 1000).stages[&Stage::Asr].count, 1);
    }

    #[test]
    fn samples_stay_bounded() {
        let mut s = Samples::default();
        for i in 0..(MAX_SAMPLES * 3) {
            s.add(i as f64);
        }
        assert_eq!(s.values.len(), MAX_SAMPLES);
        assert_eq!(s.summary().count, (MAX_SAMPLES * 3) as u64);
    }
}
