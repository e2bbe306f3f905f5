//! `teddyflow plan --watch`: auto-scaling advice for a timely cluster. A timely cluster's
//! size is fixed while it runs, so "scaling" is stopping it and starting it at another
//! size (docs/operations.md); this watches the metrics topic and says when that is worth
//! doing and to what size, as a log line, a JSON line on stdout, optionally a record on a
//! topic and a gauge on `/metrics` — something an operator or a Kubernetes job acts on.
//!
//! The rule (a pure function, [`decide`], tested on its own): each window (one metrics
//! interval by default) is *over* when the busiest pool is above `busy_high`, or lag is
//! above `lag_high` and not falling, or first-audio p95 is above its target; *under* when
//! the busiest pool is below `busy_low`, lag at most `lag_low` and first audio within
//! target. `up_windows` over windows in a row recommend growing to
//! ⌈processes × busy / busy_target⌉ (at least one more); `down_windows` under windows in a
//! row recommend shrinking to that size (at least one fewer, at least 1). After a
//! recommendation nothing is said for `cooldown_windows` (the restart). Never more
//! processes than audio partitions allow (each worker needs one).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use teddyflow_connectors::http::HttpServer;
use teddyflow_connectors::kafka::{AckedWriter, KafkaSettings, StartAt, TopicReader};
use teddyflow_connectors::OutRecord;
use teddyflow_dataflow::outputs::MetricsSnapshot;
use teddyflow_dataflow::stage::{Pool, Stage};

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Brokers of the running deployment (its metrics and audio topics).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value = "teddy.audio")]
    pub audio_topic: String,
    /// Seconds per observation window (a little more than engine.metrics_interval_ms).
    #[arg(long, default_value_t = 6)]
    pub window_seconds: u64,
    /// Stop after this many windows (0: never).
    #[arg(long, default_value_t = 0)]
    pub windows: u64,
    /// Write each recommendation as a JSON record to this topic.
    #[arg(long)]
    pub record_topic: Option<String>,
    /// Serve `teddyflow_recommended_processes` (and the observed size) on this address.
    #[arg(long)]
    pub listen: Option<String>,
    #[command(flatten)]
    pub thresholds: Thresholds,
}

/// The documented thresholds (README, docs/operations.md).
#[derive(Args, Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Thresholds {
    /// Over: the busiest pool's utilisation is above this (0–1).
    #[arg(long, default_value_t = 0.85)]
    pub busy_high: f64,
    /// Under: the busiest pool's utilisation is below this.
    #[arg(long, default_value_t = 0.35)]
    pub busy_low: f64,
    /// The utilisation a new size is computed for.
    #[arg(long, default_value_t = 0.6)]
    pub busy_target: f64,
    /// Over: records behind the high watermarks (all partitions) above this, not falling.
    #[arg(long, default_value_t = 200)]
    pub lag_high: i64,
    /// Under: lag at most this.
    #[arg(long, default_value_t = 10)]
    pub lag_low: i64,
    /// Over: first-audio p95 (ms) above this.
    #[arg(long, default_value_t = 2500.0)]
    pub first_audio_p95_ms: f64,
    /// Over windows in a row before growing.
    #[arg(long, default_value_t = 3)]
    pub up_windows: u32,
    /// Under windows in a row before shrinking (longer: shrinking is never urgent).
    #[arg(long, default_value_t = 20)]
    pub down_windows: u32,
    /// Windows to stay quiet after a recommendation, while the cluster restarts.
    #[arg(long, default_value_t = 10)]
    pub cooldown_windows: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            busy_high: 0.85,
            busy_low: 0.35,
            busy_target: 0.6,
            lag_high: 200,
            lag_low: 10,
            first_audio_p95_ms: 2500.0,
            up_windows: 3,
            down_windows: 20,
            cooldown_windows: 10,
        }
    }
}

/// What one window of snapshots says about the cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    pub processes: usize,
    pub workers_per_process: usize,
    /// Records behind, all partitions (each worker's latest figure).
    pub lag: i64,
    /// Lag now minus lag the window before (0 for the first window).
    pub lag_growth: i64,
    /// The busiest pool's utilisation in the busiest process, and which pool.
    pub busy: f64,
    pub busiest: String,
    pub first_audio_p95_ms: Option<f64>,
}

/// Consecutive windows over and under, and the quiet time after a recommendation.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Hysteresis {
    over: u32,
    under: u32,
    cooldown: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Hold,
    Resize {
        from: usize,
        to: usize,
        reason: String,
    },
    /// Growing would help but the partitions allow no more processes.
    AtLimit {
        processes: usize,
        reason: String,
    },
}

fn over_reason(o: &Observation, t: &Thresholds) -> Option<String> {
    if o.busy > t.busy_high {
        return Some(format!(
            "{} {:.0} % busy > {:.0} %",
            o.busiest,
            o.busy * 100.0,
            t.busy_high * 100.0
        ));
    }
    if o.lag > t.lag_high && o.lag_growth >= 0 {
        return Some(format!("lag {} > {} and not falling", o.lag, t.lag_high));
    }
    match o.first_audio_p95_ms {
        Some(p95) if p95 > t.first_audio_p95_ms => Some(format!(
            "first audio p95 {p95:.0} ms > {:.0} ms",
            t.first_audio_p95_ms
        )),
        _ => None,
    }
}

fn is_under(o: &Observation, t: &Thresholds) -> bool {
    o.busy < t.busy_low
        && o.lag <= t.lag_low
        && o.first_audio_p95_ms
            .is_none_or(|p| p <= t.first_audio_p95_ms)
}

/// The size that brings the busiest pool to `busy_target`.
fn size_for(o: &Observation, t: &Thresholds) -> usize {
    (o.processes as f64 * o.busy / t.busy_target)
        .ceil()
        .max(1.0) as usize
}

/// One window's decision. `max_processes`: what the audio partitions allow.
pub fn decide(
    h: &mut Hysteresis,
    o: &Observation,
    t: &Thresholds,
    max_processes: usize,
) -> Decision {
    if h.cooldown > 0 {
        h.cooldown -= 1;
        return Decision::Hold;
    }
    let over = over_reason(o, t);
    let under = over.is_none() && is_under(o, t);
    h.over = if over.is_some() { h.over + 1 } else { 0 };
    h.under = if under { h.under + 1 } else { 0 };
    let from = o.processes;
    if let Some(reason) = over.filter(|_| h.over >= t.up_windows) {
        *h = Hysteresis {
            cooldown: t.cooldown_windows,
            ..Default::default()
        };
        let to = size_for(o, t).max(from + 1).min(max_processes);
        return if to > from {
            Decision::Resize { from, to, reason }
        } else {
            Decision::AtLimit {
                processes: from,
                reason: format!(
                    "{reason}; the audio partitions allow no more than {max_processes} process(es)"
                ),
            }
        };
    }
    if h.under >= t.down_windows && from > 1 {
        *h = Hysteresis {
            cooldown: t.cooldown_windows,
            ..Default::default()
        };
        let to = size_for(o, t).min(from - 1);
        let reason = format!(
            "{} windows with {} {:.0} % busy < {:.0} % and lag {} <= {}",
            t.down_windows,
            o.busiest,
            o.busy * 100.0,
            t.busy_low * 100.0,
            o.lag,
            t.lag_low
        );
        return Decision::Resize { from, to, reason };
    }
    Decision::Hold
}

/// Pool threads per process of the watched deployment (as `plan`'s flags say).
#[derive(Debug, Clone, Copy)]
pub struct Threads {
    pub asr: usize,
    pub understanding: usize,
    pub answering: usize,
}

/// Fold one window's snapshots into an observation (None without snapshots).
pub fn observe(
    snapshots: &[MetricsSnapshot],
    threads: Threads,
    previous_lag: Option<i64>,
) -> Option<Observation> {
    let mut workers: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let mut lag_by_worker: BTreeMap<(usize, usize), i64> = BTreeMap::new();
    // (process, pool) → Σ count × p50 ms, and the interval it covers.
    let mut work: BTreeMap<(usize, Pool), f64> = BTreeMap::new();
    let mut interval_ms: BTreeMap<usize, f64> = BTreeMap::new();
    let mut first_audio: Option<f64> = None;
    for s in snapshots {
        let (p, w) = (s.process, s.worker);
        workers.entry(p).or_default().insert(w);
        lag_by_worker.insert((p, w), s.consumer_lag);
        let iv = (s.interval_ms as f64).max(1.0);
        let e = interval_ms.entry(p).or_default();
        *e = e.max(iv);
        for (stage, st) in s.stages.iter().filter(|(_, st)| st.count > 0) {
            let count = st.count as f64;
            if *stage == Stage::FirstAudio {
                first_audio = Some(first_audio.map_or(st.p95_ms, |f| f.max(st.p95_ms)));
            }
            if let Some(pool) = stage.pool() {
                *work.entry((p, pool)).or_default() += count * st.p50_ms;
            }
        }
    }
    if workers.is_empty() {
        return None;
    }
    // Snapshots of several intervals of one worker in a window add up their work; what
    // a pool can do in the window is its threads × the window's snapshots' span.
    let snaps_per_worker = snapshots.len() as f64 / lag_by_worker.len().max(1) as f64;
    let (mut busy, mut busiest) = (0.0, String::from("none"));
    for (&(p, pool), ms) in &work {
        let n = match pool {
            Pool::Workers => workers[&p].len(),
            Pool::Asr => threads.asr,
            Pool::Acoustic => 1,
            Pool::Understanding => threads.understanding,
            Pool::Answering => threads.answering,
        };
        let capacity = n.max(1) as f64 * interval_ms[&p] * snaps_per_worker.max(1.0);
        let u = ms / capacity;
        if u > busy {
            (busy, busiest) = (u, pool.key().to_string());
        }
    }
    let lag = lag_by_worker.values().sum();
    Some(Observation {
        processes: workers.len(),
        workers_per_process: workers.values().map(BTreeSet::len).max().unwrap_or(1),
        lag,
        lag_growth: previous_lag.map_or(0, |p| lag - p),
        busy,
        busiest,
        first_audio_p95_ms: first_audio,
    })
}

pub fn watch(args: &WatchArgs, threads: Threads, metrics_topic: &str) -> anyhow::Result<()> {
    let settings = KafkaSettings {
        brokers: args.brokers.clone(),
        group_id: format!("teddyflow-plan-watch-{}", std::process::id()),
        ..Default::default()
    };
    let partitions = settings.partition_count(&args.audio_topic)? as usize;
    // Only what happens from now on: old snapshots describe an older cluster.
    let wait = Duration::from_secs(60);
    let reader = TopicReader::open(&settings, &[metrics_topic], StartAt::End, wait)?;
    let writer = args
        .record_topic
        .as_ref()
        .map(|_| AckedWriter::open(&settings))
        .transpose()?;
    let gauges = Gauges::serve(args.listen.as_deref())?;
    let (mut h, mut previous_lag) = (Hysteresis::default(), None);
    tracing::info!(thresholds = ?args.thresholds, partitions, "watching {metrics_topic}");
    let windows = (1..).take_while(|n| args.windows == 0 || *n <= args.windows);
    for _ in windows {
        let window = read_window(&reader, Duration::from_secs(args.window_seconds));
        let Some(o) = observe(&window, threads, previous_lag) else {
            tracing::info!("no metrics snapshots in this window");
            continue;
        };
        previous_lag = Some(o.lag);
        let max = (partitions / o.workers_per_process.max(1)).max(1);
        let d = decide(&mut h, &o, &args.thresholds, max);
        gauges.set(&o, &d);
        report(&o, &d, args.record_topic.as_deref().zip(writer.as_ref()))?;
    }
    if let Some(w) = &writer {
        // Records are sent untracked: give the last one time to leave.
        w.flush(Duration::from_secs(5));
    }
    Ok(())
}

fn read_window(reader: &TopicReader, window: Duration) -> Vec<MetricsSnapshot> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let Some(rec) = reader.next(Duration::from_millis(200)) else {
            continue;
        };
        if let Ok(s) = serde_json::from_slice(rec.value.as_deref().unwrap_or_default()) {
            out.push(s);
        }
    }
    out
}

fn report(
    o: &Observation,
    d: &Decision,
    record: Option<(&str, &AckedWriter)>,
) -> anyhow::Result<()> {
    let line = serde_json::json!({"ts_ms": teddyflow_dataflow::envelope::now_ms(), "observation": o, "advice": d});
    println!("{line}");
    match d {
        Decision::Hold => tracing::debug!(busy = o.busy, lag = o.lag, "hold"),
        Decision::Resize { from, to, reason } => {
            tracing::info!(from, to, %reason, "resize recommended: stop the cluster, start it with {to} process(es)")
        }
        Decision::AtLimit { processes, reason } => {
            tracing::warn!(processes, %reason, "more processes would help, but not possible")
        }
    }
    if let (Some((topic, w)), false) = (record, *d == Decision::Hold) {
        w.send_untracked(&OutRecord {
            topic: topic.to_string(),
            key: Some(b"resize".to_vec()),
            payload: line.to_string().into_bytes(),
            headers: Vec::new(),
        });
        w.poll();
    }
    Ok(())
}

/// `teddyflow_recommended_processes` and `teddyflow_observed_processes` on `--listen`.
struct Gauges {
    recommended: Gauge,
    observed: Gauge,
    _server: Option<HttpServer>,
}

impl Gauges {
    fn serve(listen: Option<&str>) -> anyhow::Result<Gauges> {
        let (recommended, observed) = (Gauge::default(), Gauge::default());
        let Some(addr) = listen else {
            return Ok(Gauges {
                recommended,
                observed,
                _server: None,
            });
        };
        let mut registry = Registry::default();
        registry.register(
            "teddyflow_recommended_processes",
            "Cluster size plan --watch last recommended (the observed size before any)",
            recommended.clone(),
        );
        registry.register(
            "teddyflow_observed_processes",
            "Processes that wrote metrics in the last window",
            observed.clone(),
        );
        let registry = Arc::new(registry);
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut out = String::new();
                    let _ =
                        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
                    out
                }
            }),
        );
        let server = HttpServer::start(addr, router)?;
        tracing::info!(addr = %server.local_addr(), "serving the recommendation on /metrics");
        Ok(Gauges {
            recommended,
            observed,
            _server: Some(server),
        })
    }

    /// The latest recommendation stands until another one (a job acting on it compares it
    /// with the observed size); before any, the observed size.
    fn set(&self, o: &Observation, d: &Decision) {
        self.observed.set(o.processes as i64);
        match d {
            Decision::Resize { to, .. } => {
                self.recommended.set(*to as i64);
            }
            _ if self.recommended.get() == 0 => {
                self.recommended.set(o.processes as i64);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(processes: usize, busy: f64, lag: i64) -> Observation {
        Observation {
            processes,
            workers_per_process: 1,
            lag,
            lag_growth: 0,
            busy,
            busiest: "asr.threads".into(),
            first_audio_p95_ms: Some(1200.0),
        }
    }

    fn run(h: &mut Hysteresis, o: &Observation, windows: usize, max: usize) -> Vec<Decision> {
        let t = Thresholds::default();
        (0..windows).map(|_| decide(h, o, &t, max)).collect()
    }

    #[test]
    fn grows_after_three_busy_windows_in_a_row_to_the_target_utilisation() {
        let mut h = Hysteresis::default();
        let busy = obs(2, 0.95, 0);
        let d = run(&mut h, &busy, 3, 8);
        assert_eq!(d[..2], [Decision::Hold, Decision::Hold]);
        // ⌈2 × 0.95 / 0.6⌉ = 4
        match &d[2] {
            Decision::Resize {
                from: 2,
                to: 4,
                reason,
            } => assert!(reason.contains("asr.threads 95 % busy"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Then quiet for the cooldown, however busy.
        assert!(run(&mut h, &busy, 10, 8)
            .iter()
            .all(|d| *d == Decision::Hold));
        assert!(matches!(
            run(&mut h, &busy, 3, 8)[2],
            Decision::Resize { .. }
        ));
    }

    #[test]
    fn a_calm_window_resets_the_count() {
        let mut h = Hysteresis::default();
        let t = Thresholds::default();
        for o in [
            obs(1, 0.9, 0),
            obs(1, 0.9, 0),
            obs(1, 0.5, 0),
            obs(1, 0.9, 0),
            obs(1, 0.9, 0),
        ] {
            assert_eq!(decide(&mut h, &o, &t, 8), Decision::Hold);
        }
        assert!(matches!(
            decide(&mut h, &obs(1, 0.9, 0), &t, 8),
            Decision::Resize { from: 1, to: 2, .. }
        ));
    }

    #[test]
    fn lag_that_keeps_growing_or_slow_first_audio_count_as_over() {
        let t = Thresholds::default();
        let mut lagging = obs(1, 0.5, 500);
        lagging.lag_growth = 40;
        assert!(over_reason(&lagging, &t).unwrap().contains("lag 500"));
        lagging.lag_growth = -100; // draining on its own
        assert_eq!(over_reason(&lagging, &t), None);
        let mut slow = obs(1, 0.5, 0);
        slow.first_audio_p95_ms = Some(4000.0);
        assert!(over_reason(&slow, &t)
            .unwrap()
            .contains("first audio p95 4000 ms"));
        // At least one more process even when busy alone would not ask for it.
        let mut h = Hysteresis::default();
        assert!(matches!(
            run(&mut h, &slow, 3, 8)[2],
            Decision::Resize { from: 1, to: 2, .. }
        ));
    }

    #[test]
    fn never_beyond_the_partitions() {
        let mut h = Hysteresis::default();
        let d = run(&mut h, &obs(3, 2.0, 0), 3, 4);
        assert!(
            matches!(d[2], Decision::Resize { from: 3, to: 4, .. }),
            "{:?}",
            d[2]
        );
        let mut h = Hysteresis::default();
        match &run(&mut h, &obs(4, 2.0, 0), 3, 4)[2] {
            Decision::AtLimit {
                processes: 4,
                reason,
            } => assert!(reason.contains("no more than 4")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shrinks_only_after_a_long_quiet_and_never_below_one() {
        let quiet = obs(4, 0.1, 0);
        let mut h = Hysteresis::default();
        let d = run(&mut h, &quiet, 20, 8);
        assert!(d[..19].iter().all(|d| *d == Decision::Hold));
        // ⌈4 × 0.1 / 0.6⌉ = 1
        assert!(
            matches!(d[19], Decision::Resize { from: 4, to: 1, .. }),
            "{:?}",
            d[19]
        );
        let mut h = Hysteresis::default();
        assert!(run(&mut h, &obs(1, 0.0, 0), 40, 8)
            .iter()
            .all(|d| *d == Decision::Hold));
        // Lag above lag_low is not quiet.
        let mut h = Hysteresis::default();
        assert!(run(&mut h, &obs(4, 0.1, 50), 40, 8)
            .iter()
            .all(|d| *d == Decision::Hold));
    }

    #[test]
    fn the_documented_defaults_are_the_flags_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            t: Thresholds,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from(["x"]).unwrap();
        assert_eq!(parsed.t, Thresholds::default());
    }

    #[test]
    fn observations_from_snapshots() {
        use teddyflow_dataflow::metrics::StageSummary;

        let summary = |count: u64, p50_ms: f64, p95_ms: f64| StageSummary {
            count,
            p50_ms,
            p95_ms,
            ..StageSummary::default()
        };
        let snap = |process: usize, worker: usize, asr: (u64, f64), lag: i64| MetricsSnapshot {
            process,
            worker,
            interval_ms: 1000,
            consumer_lag: lag,
            stages: [
                (Stage::Asr, summary(asr.0, asr.1, 0.0)),
                (Stage::AsrWait, summary(9, 9000.0, 0.0)),
                (Stage::FirstAudio, summary(1, 0.0, 1800.0)),
            ]
            .into(),
            ..MetricsSnapshot::default()
        };
        let threads = Threads {
            asr: 2,
            understanding: 1,
            answering: 1,
        };
        // Process 1: 3 × 400 ms of Whisper in 1 s over 2 threads = 60 %; waits do not count.
        let o = observe(
            &[
                snap(0, 0, (1, 400.0), 5),
                snap(1, 0, (3, 400.0), 7),
                snap(1, 1, (0, 0.0), 1),
            ],
            threads,
            Some(20),
        )
        .unwrap();
        assert_eq!(
            (o.processes, o.workers_per_process, o.lag, o.lag_growth),
            (2, 2, 13, -7)
        );
        assert!((o.busy - 0.6).abs() < 1e-12, "{}", o.busy);
        assert_eq!(o.busiest, "asr.threads");
        assert_eq!(o.first_audio_p95_ms, Some(1800.0));
        assert_eq!(observe(&[], threads, None), None);
    }
}
