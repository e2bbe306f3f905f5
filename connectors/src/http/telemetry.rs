//! The metric families of one teddyflow process, in Prometheus naming and base units.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::health::Health;
use super::process::ProcessCollector;
use crate::wire::DeadLetterReason;

/// Upper bounds (seconds) of the stage histograms: from a 1 ms decode to a 30 s reply.
pub const STAGE_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Writes a closed enum as its snake_case name: label values are fixed words, never ids.
macro_rules! label_words {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $word),+ }
            }

            /// The variant named `word` (the names of the metrics snapshot and this label).
            pub fn parse(word: &str) -> Option<$ty> {
                match word { $($word => Some($ty::$variant),)+ _ => None }
            }
        }

        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

impl EncodeLabelValue for DeadLetterReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The kinds of parent alert (`teddy.alerts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    NeedsCare,
    Unsafe,
}

label_words!(AlertKind {
    NeedsCare => "needs_care",
    Unsafe => "unsafe",
});

/// How an offset commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommitResult {
    Ok,
    Error,
}

label_words!(CommitResult {
    Ok => "ok",
    Error => "error",
});

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StageLabel {
    /// The stage's name (`teddyflow_dataflow::stage::Stage::name`): a fixed word, never an id.
    stage: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: DeadLetterReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: AlertKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: CommitResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PartitionLabel {
    partition: i32,
}

type Histograms = Family<StageLabel, Histogram, fn() -> Histogram>;

fn stage_histogram() -> Histogram {
    Histogram::new(STAGE_BUCKETS)
}

/// One process's metrics and health. Shared as `Arc<Telemetry>` by every worker and the
/// HTTP thread; every update is an atomic operation or one short lock, so operators can
/// call it per utterance (or once per batch) without a measurable cost.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    utterances: Counter,
    deadletters: Family<ReasonLabel, Counter>,
    alerts: Family<KindLabel, Counter>,
    stages: Histograms,
    lag: Family<PartitionLabel, Gauge>,
    in_flight: Gauge,
    in_flight_by_worker: Vec<AtomicI64>,
    replies_replaced: Counter,
    llm_requests: Counter,
    llm_failures: Counter,
    backend_fallbacks: Counter,
    llm_breaker: Gauge,
    offset_commits: Family<ResultLabel, Counter>,
    health: Health,
}

impl Telemetry {
    /// The families of a process with `workers` timely workers. `needs_profiles`: whether
    /// readiness waits for the workers to have read the profiles topic (answering on).
    pub fn new(workers: usize, needs_profiles: bool) -> Arc<Telemetry> {
        let t = Telemetry {
            registry: Registry::default(),
            utterances: Counter::default(),
            deadletters: Family::default(),
            alerts: Family::default(),
            stages: Histograms::new_with_constructor(stage_histogram),
            lag: Family::default(),
            in_flight: Gauge::default(),
            in_flight_by_worker: (0..workers.max(1)).map(|_| AtomicI64::new(0)).collect(),
            replies_replaced: Counter::default(),
            llm_requests: Counter::default(),
            llm_failures: Counter::default(),
            backend_fallbacks: Counter::default(),
            llm_breaker: Gauge::default(),
            offset_commits: Family::default(),
            health: Health::new(workers.max(1), needs_profiles),
        };
        Arc::new(t.registered())
    }

    fn registered(mut self) -> Telemetry {
        let r = &mut self.registry;
        r.register(
            "teddyflow_utterances",
            "Utterances answered: responses acknowledged by the broker",
            self.utterances.clone(),
        );
        r.register(
            "teddyflow_deadletters",
            "Records and utterances written to the dead-letter topic, by reason",
            self.deadletters.clone(),
        );
        r.register(
            "teddyflow_alerts",
            "Parent alerts written, by kind",
            self.alerts.clone(),
        );
        r.register(
            "teddyflow_stage_duration_seconds",
            "Time per utterance in each stage (a batching stage reports its batch's time)",
            self.stages.clone(),
        );
        r.register(
            "teddyflow_consumer_lag",
            "Records behind the broker's high watermark, per audio partition of this process",
            self.lag.clone(),
        );
        r.register(
            "teddyflow_in_flight",
            "Outputs queued, sent and not yet acknowledged, or held for first audio",
            self.in_flight.clone(),
        );
        r.register(
            "teddyflow_replies_replaced",
            "Generated replies that failed the safety check and were replaced by a redirect",
            self.replies_replaced.clone(),
        );
        r.register(
            "teddyflow_llm_requests",
            "Requests sent to the LLM server (answering.backend = openai)",
            self.llm_requests.clone(),
        );
        r.register(
            "teddyflow_llm_failures",
            "LLM server requests that failed: no connection, timeout, HTTP error, broken stream",
            self.llm_failures.clone(),
        );
        r.register(
            "teddyflow_reply_backend_fallbacks",
            "Replies the configured engine did not write (its server failed or its breaker was open)",
            self.backend_fallbacks.clone(),
        );
        r.register(
            "teddyflow_llm_breaker",
            "The LLM server's circuit breaker: 0 closed, 1 half-open, 2 open",
            self.llm_breaker.clone(),
        );
        r.register(
            "teddyflow_offset_commits",
            "Offset commits handed to the broker, by result",
            self.offset_commits.clone(),
        );
        r.register_collector(Box::new(ProcessCollector));
        self
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// A response was acknowledged.
    pub fn utterance_done(&self) {
        self.utterances.inc();
    }

    pub fn deadletter(&self, reason: DeadLetterReason) {
        self.deadletters
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn alert(&self, kind: AlertKind) {
        self.alerts.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn stage(&self, stage: &'static str, took: Duration) {
        self.stage_ms(stage, took.as_secs_f64() * 1e3);
    }

    /// The same in milliseconds, the unit the graph's timings are kept in.
    pub fn stage_ms(&self, stage: &'static str, ms: f64) {
        self.stages
            .get_or_create(&StageLabel { stage })
            .observe(ms.max(0.0) / 1e3);
    }

    /// The lag of this worker's partitions (partition → records behind).
    pub fn lag(&self, by_partition: &BTreeMap<i32, i64>) {
        for (&partition, &lag) in by_partition {
            self.lag
                .get_or_create(&PartitionLabel { partition })
                .set(lag);
        }
    }

    /// What worker `worker` holds in flight now; the gauge is the process's sum.
    pub fn in_flight(&self, worker: usize, n: i64) {
        let slot = &self.in_flight_by_worker[worker % self.in_flight_by_worker.len()];
        let before = slot.swap(n, Ordering::AcqRel);
        self.in_flight.inc_by(n - before);
    }

    pub fn reply_replaced(&self) {
        self.replies_replaced.inc();
    }

    /// What one reply cost the LLM server: requests sent, failed, whether another engine
    /// answered, and the breaker's state after it (`None` without a server).
    pub fn reply_backend(
        &self,
        requests: u64,
        failures: u64,
        fallback: bool,
        breaker: Option<i64>,
    ) {
        self.llm_requests.inc_by(requests);
        self.llm_failures.inc_by(failures);
        if fallback {
            self.backend_fallbacks.inc();
        }
        if let Some(state) = breaker {
            self.llm_breaker.set(state);
        }
    }

    pub fn offset_commit(&self, result: CommitResult) {
        self.offset_commits
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The Prometheus text format (0.0.4) of every family, process figures included.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::super::exposition::{parse, Type};
    use super::*;

    #[test]
    fn label_words_round_trip() {
        for r in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::parse(r.as_str()), Some(*r));
        }
    }

    #[test]
    fn counts_histograms_and_gauges_read_back_through_the_text_format() {
        let t = Telemetry::new(2, false);
        for _ in 0..3 {
            t.utterance_done();
        }
        t.deadletter(DeadLetterReason::Decode);
        t.deadletter(DeadLetterReason::Parse);
        t.deadletter(DeadLetterReason::Parse);
        t.alert(AlertKind::Unsafe);
        for ms in [3.0, 40.0, 700.0] {
            t.stage_ms("asr", ms);
        }
        t.stage("first_audio", Duration::from_millis(1200));
        t.lag(&BTreeMap::from([(0, 5), (2, 0)]));
        t.lag(&BTreeMap::from([(0, 1)]));
        t.in_flight(0, 4);
        t.in_flight(1, 2);
        t.in_flight(0, 1);
        t.reply_replaced();
        t.offset_commit(CommitResult::Ok);
        t.offset_commit(CommitResult::Ok);
        t.offset_commit(CommitResult::Error);
        t.reply_backend(1, 0, false, Some(0));
        t.reply_backend(2, 2, true, Some(2));
        t.reply_backend(0, 0, true, None);

        let m = parse(&t.encode()).expect("valid exposition");
        assert_eq!(m.value("teddyflow_llm_requests_total", &[]), Some(3.0));
        assert_eq!(m.value("teddyflow_llm_failures_total", &[]), Some(2.0));
        let fallbacks = m.value("teddyflow_reply_backend_fallbacks_total", &[]);
        assert_eq!(fallbacks, Some(2.0));
        assert_eq!(
            m.value("teddyflow_llm_breaker", &[]),
            Some(2.0),
            "last state seen"
        );
        assert_eq!(m.value("teddyflow_utterances_total", &[]), Some(3.0));
        assert_eq!(
            m.family("teddyflow_utterances_total").unwrap().kind,
            Type::Counter
        );
        let dl = |r: &str| m.value("teddyflow_deadletters_total", &[("reason", r)]);
        assert_eq!(
            (dl("parse"), dl("decode"), dl("asr")),
            (Some(2.0), Some(1.0), None)
        );
        assert_eq!(
            m.value("teddyflow_alerts_total", &[("kind", "unsafe")]),
            Some(1.0)
        );
        assert_eq!(m.value("teddyflow_replies_replaced_total", &[]), Some(1.0));
        let commits = |r: &str| m.value("teddyflow_offset_commits_total", &[("result", r)]);
        assert_eq!((commits("ok"), commits("error")), (Some(2.0), Some(1.0)));
        assert_eq!(
            m.value("teddyflow_consumer_lag", &[("partition", "0")]),
            Some(1.0)
        );
        assert_eq!(
            m.value("teddyflow_consumer_lag", &[("partition", "2")]),
            Some(0.0)
        );
        assert_eq!(m.value("teddyflow_in_flight", &[]), Some(3.0));

        let h = m.histogram("teddyflow_stage_duration_seconds", &[("stage", "asr")]);
        let h = h.expect("asr histogram");
        assert_eq!(h.count, 3.0);
        assert!((h.sum - 0.743).abs() < 1e-9, "{}", h.sum);
        // Cumulative: 3 ms ≤ 5 ms bucket; 40 ms ≤ 50 ms; 700 ms ≤ 1 s.
        assert_eq!(h.bucket(0.0025), Some(0.0));
        assert_eq!(h.bucket(0.005), Some(1.0));
        assert_eq!(h.bucket(0.05), Some(2.0));
        assert_eq!(h.bucket(0.5), Some(2.0));
        assert_eq!(h.bucket(1.0), Some(3.0));
        assert_eq!(h.bucket(f64::INFINITY), Some(3.0));
        let fa = m.histogram(
            "teddyflow_stage_duration_seconds",
            &[("stage", "first_audio")],
        );
        assert_eq!(fa.unwrap().bucket(1.0), Some(0.0));

        assert!(m.value("process_resident_memory_bytes", &[]).unwrap() > 1e6);
        assert!(m.value("process_open_fds", &[]).unwrap() >= 3.0);
        assert!(m.value("process_start_time_seconds", &[]).unwrap() > 1.6e9);
        // A fresh test process may not have used a clock tick of CPU yet.
        assert!(m.value("process_cpu_seconds_total", &[]).unwrap() >= 0.0);
        assert_eq!(
            m.family("process_cpu_seconds_total").unwrap().kind,
            Type::Counter
        );
    }

    #[test]
    fn no_label_can_hold_an_id() {
        // Every label name the process exposes; values are enum words or partition numbers.
        let t = Telemetry::new(1, false);
        t.deadletter(DeadLetterReason::Other);
        t.alert(AlertKind::NeedsCare);
        t.stage_ms("decode", 1.0);
        t.lag(&BTreeMap::from([(3, 0)]));
        t.offset_commit(CommitResult::Ok);
        let m = parse(&t.encode()).unwrap();
        let mut names: Vec<&str> = m
            .samples()
            .flat_map(|s| s.labels.iter().map(|(k, _)| k.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names,
            ["kind", "le", "partition", "reason", "result", "stage"]
        );
    }
}
