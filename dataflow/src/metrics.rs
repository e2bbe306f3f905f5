//! Per-worker metrics, written as JSON snapshots to the metrics topic. No PII: only
//! counts, sizes and latencies — never conversation ids, child ids or transcripts.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use teddyflow_connectors::http::{Stage, Telemetry};

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

#[derive(Debug, Serialize, PartialEq)]
pub struct StageSummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Default)]
pub struct WorkerMetrics {
    pub records_in: u64,
    pub bytes_in: u64,
    pub utterances_done: u64,
    pub deadletters: u64,
    pub alerts: u64,
    /// Generated replies that failed the safety check and were replaced by a safe fallback.
    pub replies_replaced: u64,
    /// Speech records acknowledged.
    pub speech_chunks: u64,
    /// Utterances answered with the defaults because their child has no profile.
    pub profiles_missing: u64,
    /// Profiles held by this worker (its partitions of the profiles topic).
    pub profiles: u64,
    pub errors: BTreeMap<String, u64>,
    pub in_flight: i64,
    pub lag: BTreeMap<i32, i64>,
    pub stages: BTreeMap<String, Samples>,
    /// Stage → (sum of batch sizes, utterances) since the last snapshot.
    pub batch_sizes: BTreeMap<String, (u64, u64)>,
    /// The process's Prometheus families: every stage time recorded here is observed
    /// there too (the `/metrics` histograms), so the graph times each stage once.
    pub telemetry: Option<Arc<Telemetry>>,
}

impl WorkerMetrics {
    pub fn stage(&mut self, name: &str, ms: f64) {
        if let (Some(t), Some(stage)) = (&self.telemetry, Stage::parse(name)) {
            t.stage_ms(stage, ms);
        }
        self.stages.entry(name.to_string()).or_default().add(ms);
    }

    /// The batch `stage` processed an utterance in, from its `Meta::batches`.
    pub fn batches(&mut self, batches: &[(String, usize)], stage: &str) {
        for (_, size) in batches.iter().filter(|(s, _)| s == stage) {
            let (sum, n) = self.batch_sizes.entry(stage.to_string()).or_default();
            *sum += *size as u64;
            *n += 1;
        }
    }

    pub fn error(&mut self, stage: &str) {
        *self.errors.entry(stage.to_string()).or_default() += 1;
    }

    /// A snapshot for the metrics topic; per-interval samples are reset, counters are totals.
    pub fn snapshot(
        &mut self,
        worker: usize,
        process: usize,
        interval_ms: u64,
    ) -> serde_json::Value {
        let stages: BTreeMap<String, StageSummary> = self
            .stages
            .iter_mut()
            .map(|(k, s)| (k.clone(), s.summary()))
            .collect();
        // Mean batch size per utterance over the interval (how full the batches ran).
        let batch_mean: BTreeMap<String, f64> = std::mem::take(&mut self.batch_sizes)
            .into_iter()
            .map(|(k, (sum, n))| (k, sum as f64 / n.max(1) as f64))
            .collect();
        serde_json::json!({
            "ts_ms": crate::types::now_ms(),
            "worker": worker,
            "process": process,
            "interval_ms": interval_ms,
            "records_in": self.records_in,
            "bytes_in": self.bytes_in,
            "utterances_done": self.utterances_done,
            "deadletters": self.deadletters,
            "alerts": self.alerts,
            "replies_replaced": self.replies_replaced,
            "speech_chunks": self.speech_chunks,
            "profiles_missing": self.profiles_missing,
            "profiles": self.profiles,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "consumer_lag": self.lag.values().sum::<i64>(),
            "lag_by_partition": self.lag,
            "rss_bytes": rss_bytes(),
            "stages": stages,
            "batch_mean": batch_mean,
        })
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
        m.records_in = 3;
        for ms in [10.0, 20.0, 30.0] {
            m.stage("asr", ms);
        }
        let s = m.snapshot(0, 0, 1000);
        assert_eq!(s["stages"]["asr"]["count"], 3);
        assert_eq!(s["stages"]["asr"]["p50_ms"], 20.0);
        m.batches(&[("asr".into(), 3)], "asr");
        m.batches(&[("asr".into(), 1), ("understand".into(), 5)], "asr");
        assert!(s["rss_bytes"].as_u64().unwrap() > 0);
        let s = m.snapshot(0, 0, 1000);
        assert_eq!(s["stages"]["asr"]["count"], 0);
        assert_eq!(s["batch_mean"]["asr"], 2.0);
        assert!(s["batch_mean"].get("understand").is_none());
        assert_eq!(s["records_in"], 3);
        assert_eq!(m.snapshot(0, 0, 1000)["batch_mean"], serde_json::json!({}));
    }

    #[test]
    fn stage_times_reach_the_prometheus_histograms() {
        let t = Telemetry::new(1, false);
        let mut m = WorkerMetrics {
            telemetry: Some(t.clone()),
            ..Default::default()
        };
        m.stage("asr", 250.0);
        m.stage("first_audio", 900.0);
        m.stage("not_a_stage", 1.0);
        let e = teddyflow_connectors::http::exposition::parse(&t.encode()).unwrap();
        let h = |s: &str| e.histogram("teddyflow_stage_duration_seconds", &[("stage", s)]);
        assert_eq!(h("asr").unwrap().count, 1.0);
        assert_eq!(h("first_audio").unwrap().sum, 0.9);
        assert_eq!(m.snapshot(0, 0, 1000)["stages"]["not_a_stage"]["count"], 1);
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
