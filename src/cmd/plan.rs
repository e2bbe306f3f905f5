//! `teddyflow plan`: from measured per-stage costs, how many processes, workers, threads,
//! partitions and batch sizes a target utterance rate needs within a latency target, and
//! which stage saturates first. What "auto-scaling" becomes for a timely cluster: the
//! cluster's shape is chosen from numbers before it starts.
//!
//! The model (also printed with every plan):
//! - Each stage runs on a per-process pool: `decode` on the timely workers, `asr*` on
//!   `asr.threads`, `acoustic` on one thread, `understand` on `understanding.threads`,
//!   `reply`/`tts` on `answering.threads`. A busy pool thread occupies one core.
//! - Stage capacity per process = min(threads, cores) × 1000 / mean_ms. The process as a
//!   whole is bounded by its cores: cores × 1000 / Σ mean_ms of all stages.
//! - Every resource is kept at or below a utilisation ρ (default 0.7). A stage on the
//!   critical path is taken to behave like an M/M/1 queue, so latency ≈ critical path /
//!   (1 − highest utilisation) + the engine's own overhead. A latency target lowers ρ.
//! - Load spreads evenly over processes (conversations hash to partitions).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde::Serialize;
use teddyflow_connectors::kafka::{KafkaSettings, StartAt, TopicReader};
use teddyflow_dataflow::outputs::MetricsSnapshot;
use teddyflow_dataflow::stage::{self, Pool, Stage};

use super::bench_e2e::Report;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("costs").args(["from", "metrics_from_brokers"])))]
pub struct PlanArgs {
    /// Utterances per second the whole cluster must sustain.
    #[arg(long, required_unless_present = "watch")]
    target_rate: Option<f64>,
    /// Latency target (utterance complete → response), ms.
    #[arg(long)]
    latency_ms: Option<f64>,
    /// Stage costs from a `teddyflow bench e2e --json` output file.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Which run of the bench file (one per --workers value); the first has the least
    /// contention, so its stage costs are closest to one thread's cost.
    #[arg(long, default_value_t = 0)]
    run: usize,
    /// Or: stage costs from a running deployment's metrics topic on these brokers.
    #[arg(long, requires = "metrics_topic")]
    metrics_from_brokers: Option<String>,
    /// Metrics topic to read (from its beginning).
    #[arg(long)]
    metrics_topic: Option<String>,
    /// Seconds to read the metrics topic for.
    #[arg(long, default_value_t = 5)]
    metrics_seconds: u64,
    /// The deployment that wrote the metrics: workers per process.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// The deployment that wrote the metrics: asr.threads.
    #[arg(long, default_value_t = 1)]
    asr_threads: usize,
    /// The deployment that wrote the metrics: understanding.threads.
    #[arg(long, default_value_t = 1)]
    understanding_threads: usize,
    /// The deployment that wrote the metrics: answering.threads (for --watch).
    #[arg(long, default_value_t = 1)]
    answering_threads: usize,
    /// Cores each process may use. Default: this machine's.
    #[arg(long)]
    cores_per_process: Option<usize>,
    /// Highest utilisation planned for any pool or for the cores (0–1).
    #[arg(long, default_value_t = 0.7)]
    utilization: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Write deployment files for the recommended size: `--emit k8s DIR` (a StatefulSet,
    /// its headless Service and a ConfigMap; see docs/operations.md).
    #[arg(long, num_args = 2, value_names = ["KIND", "DIR"])]
    emit: Vec<String>,
    /// The image the emitted manifests run.
    #[arg(long, default_value = "teddyflow:latest")]
    image: String,
    /// The Kafka bootstrap servers the emitted manifests point at.
    #[arg(long, default_value = "kafka:9092")]
    deploy_brokers: String,
    /// Instead of one plan: watch a running deployment's metrics topic and say when, and
    /// to what size, to resize it (thresholds below; docs/operations.md).
    #[arg(long, conflicts_with_all = ["target_rate", "from", "metrics_from_brokers", "emit"])]
    watch: bool,
    #[command(flatten)]
    watch_args: super::resize::WatchArgs,
}

/// What was measured: mean ms per compute stage, and the deployment it was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub costs: BTreeMap<Stage, f64>,
    /// The engine's own time per utterance, outside model compute and queues.
    pub overhead_ms: f64,
    pub threads: BTreeMap<Pool, usize>,
    pub source: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub rate: f64,
    pub latency_ms: Option<f64>,
    pub cores: usize,
    pub utilization: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolPlan {
    pub pool: Pool,
    pub key: String,
    pub stages: Vec<Stage>,
    pub mean_ms: f64,
    pub threads: usize,
    pub utilization: f64,
    /// Utterances arriving at this pool during one call: the most a dynamic batch could
    /// gather without waiting for utterances that are not there.
    pub batch: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub processes: usize,
    pub workers_per_process: usize,
    pub pools: Vec<PoolPlan>,
    pub partitions: usize,
    pub max_pending_utterances: usize,
    pub rate_per_process: f64,
    /// The utilisation ceiling used (the default, or lower for the latency target).
    pub rho: f64,
    pub cpu_utilization: f64,
    pub critical_path_ms: f64,
    pub expected_latency_ms: f64,
    pub latency_met: Option<bool>,
    /// The resource that reaches 100 % first as the rate grows, and the cluster rate then.
    pub saturates_first: String,
    pub saturates_at_rate: f64,
    /// The measured deployment, one process: its first saturating resource and capacity.
    pub measured_saturates_first: String,
    pub measured_capacity: f64,
    pub notes: Vec<String>,
}

const ASSUMPTIONS: [&str; 5] = [
    "a busy pool thread occupies one core; stage costs are the measured means and already hold whatever contention the measurement had",
    "stage capacity per process = min(threads, cores) x 1000 / mean_ms; a process is also bounded by cores x 1000 / (sum of all stage means)",
    "no pool and no process's cores are planned above the utilisation ceiling rho (default 0.7; lower when the latency target needs it)",
    "latency ~ critical path / (1 - highest utilisation) + engine overhead (each critical stage queues no worse than M/M/1); critical path = decode + max(asr, acoustic) + understand + reply + tts",
    "conversations spread evenly over partitions, partitions evenly over workers and processes",
];

/// Pool → (stages, Σ mean ms).
fn pool_costs(costs: &BTreeMap<Stage, f64>) -> BTreeMap<Pool, (Vec<Stage>, f64)> {
    let mut pools: BTreeMap<Pool, (Vec<Stage>, f64)> = BTreeMap::new();
    for (stage, ms) in costs {
        if let Some(pool) = stage.pool() {
            let entry = pools.entry(pool).or_default();
            entry.0.push(*stage);
            entry.1 += ms;
        }
    }
    pools
}

fn critical_path(costs: &BTreeMap<Stage, f64>) -> f64 {
    stage::critical_path(|s| costs.get(&s).copied().unwrap_or(0.0))
}

/// Stages joined by `+`, as the plan prints a pool.
fn names(stages: &[Stage]) -> String {
    stages
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join("+")
}

fn ceil(x: f64) -> usize {
    // Tolerate float noise: 2.5 × 400 / 1000 must be 1, not 2.
    (x - 1e-9).ceil().max(0.0) as usize
}

/// The utilisation ceiling: the default, or lower so the latency estimate meets the target.
fn rho_for(critical: f64, overhead: f64, t: &Target, notes: &mut Vec<String>) -> f64 {
    let Some(target) = t.latency_ms else {
        return t.utilization;
    };
    let budget = target - overhead;
    if budget <= critical {
        notes.push(format!(
            "the latency target {target:.0} ms is below the critical path {critical:.0} ms + overhead {overhead:.0} ms even with no queueing: no cluster shape meets it; the stages themselves must get faster"
        ));
        return t.utilization;
    }
    t.utilization.min(1.0 - critical / budget)
}

/// One process's usable rate at ceiling `rho` with pools as large as the cores allow.
fn process_capacity(
    pools: &BTreeMap<Pool, (Vec<Stage>, f64)>,
    cpu_ms: f64,
    t: &Target,
    rho: f64,
) -> f64 {
    let mut cap = rho * t.cores as f64 * 1000.0 / cpu_ms.max(f64::EPSILON);
    for (pool, (_, ms)) in pools {
        if let Some(n) = pool.fixed_threads() {
            cap = cap.min(rho * n as f64 * 1000.0 / ms.max(f64::EPSILON));
        }
    }
    cap
}

/// The arithmetic of the plan: pure, so it is tested against hand-computed figures.
pub fn plan(m: &Measured, t: &Target) -> Plan {
    let mut notes = Vec::new();
    let pools = pool_costs(&m.costs);
    let cpu_ms: f64 = m.costs.values().sum();
    let critical = critical_path(&m.costs);
    let rho = rho_for(critical, m.overhead_ms, t, &mut notes);
    let capacity = process_capacity(&pools, cpu_ms, t, rho);
    let processes = ceil(t.rate / capacity.max(f64::EPSILON)).max(1);
    let r = t.rate / processes as f64;
    let pool_plans: Vec<PoolPlan> = pools
        .iter()
        .map(|(pool, (stages, ms))| {
            let wanted = ceil(r * ms / 1000.0 / rho).clamp(1, t.cores.max(1));
            let threads = pool.fixed_threads().unwrap_or(wanted);
            PoolPlan {
                pool: *pool,
                key: pool.key().into(),
                stages: stages.clone(),
                mean_ms: *ms,
                threads,
                utilization: r * ms / (threads as f64 * 1000.0),
                batch: ceil(r * ms / 1000.0).max(1),
            }
        })
        .collect();
    let cpu_utilization = r * cpu_ms / (t.cores.max(1) as f64 * 1000.0);
    let (saturates_first, u_max) = pool_plans
        .iter()
        .map(|p| (names(&p.stages), p.utilization))
        .fold(("cpu".to_string(), cpu_utilization), |best, x| {
            if x.1 > best.1 {
                x
            } else {
                best
            }
        });
    let expected = critical / (1.0 - u_max) + m.overhead_ms;
    let workers = pool_plans
        .iter()
        .find(|p| p.pool == Pool::Workers)
        .map_or(1, |p| p.threads);
    let (measured_saturates_first, measured_capacity) = measured_bottleneck(m, &pools, cpu_ms, t);
    Plan {
        processes,
        workers_per_process: workers,
        partitions: 2 * processes * workers,
        max_pending_utterances: ceil(2.0 * r * expected / 1000.0).max(4),
        rate_per_process: r,
        rho,
        cpu_utilization,
        critical_path_ms: critical,
        expected_latency_ms: expected,
        latency_met: t.latency_ms.map(|l| expected <= l),
        saturates_at_rate: t.rate / u_max.max(f64::EPSILON),
        saturates_first,
        measured_saturates_first,
        measured_capacity,
        pools: pool_plans,
        notes,
    }
}

/// With the measured thread counts, one process: which resource fills first, at what rate.
fn measured_bottleneck(
    m: &Measured,
    pools: &BTreeMap<Pool, (Vec<Stage>, f64)>,
    cpu_ms: f64,
    t: &Target,
) -> (String, f64) {
    let cores = t.cores.max(1);
    let mut best = (
        "cpu".to_string(),
        cores as f64 * 1000.0 / cpu_ms.max(f64::EPSILON),
    );
    for (pool, (stages, ms)) in pools {
        let threads = pool
            .fixed_threads()
            .or_else(|| m.threads.get(pool).copied())
            .unwrap_or(1);
        let cap = threads.min(cores) as f64 * 1000.0 / ms.max(f64::EPSILON);
        if cap < best.1 {
            best = (names(stages), cap);
        }
    }
    best
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    if args.watch {
        let threads = super::resize::Threads {
            asr: args.asr_threads,
            understanding: args.understanding_threads,
            answering: args.answering_threads,
        };
        let topic = args.metrics_topic.as_deref().unwrap_or("teddy.metrics");
        return super::resize::watch(&args.watch_args, threads, topic);
    }
    let target_rate = args.target_rate.unwrap_or_default();
    anyhow::ensure!(target_rate > 0.0, "--target-rate must be above 0");
    anyhow::ensure!(
        args.from.is_some() || args.metrics_from_brokers.is_some(),
        "stage costs are needed: --from BENCH.json or --metrics-from-brokers HOST:PORT"
    );
    anyhow::ensure!(
        args.utilization > 0.0 && args.utilization < 1.0,
        "--utilization must be between 0 and 1"
    );
    let measured = match &args.from {
        Some(path) => from_bench(path, args.run)?,
        None => from_metrics(&args)?,
    };
    anyhow::ensure!(
        !measured.costs.is_empty(),
        "no stage costs in {}",
        measured.source
    );
    anyhow::ensure!(
        args.cores_per_process != Some(0),
        "--cores-per-process must be at least 1"
    );
    let target = Target {
        rate: target_rate,
        latency_ms: args.latency_ms,
        cores: args
            .cores_per_process
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        utilization: args.utilization,
    };
    let plan = plan(&measured, &target);
    let emitted = emit(&args, &target, &plan)?;
    if args.json {
        let out = serde_json::json!({
            "target_rate": target.rate, "latency_ms": target.latency_ms,
            "cores_per_process": target.cores, "measured": measured, "plan": plan,
            "assumptions": ASSUMPTIONS,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_plan(&measured, &target, &plan);
    }
    if let Some(dir) = emitted {
        eprintln!(
            "plan: wrote Kubernetes manifests for {} process(es) x {} worker(s) to {}",
            plan.processes,
            plan.workers_per_process,
            dir.display()
        );
    }
    Ok(())
}

/// `--emit k8s DIR`: the manifests for the recommended size, each pod requesting the cores
/// the plan assumed a process has.
fn emit(args: &PlanArgs, target: &Target, plan: &Plan) -> anyhow::Result<Option<PathBuf>> {
    let [kind, dir] = args.emit.as_slice() else {
        return Ok(None);
    };
    anyhow::ensure!(kind == "k8s", "--emit knows `k8s`, not `{kind}`");
    let size = super::k8s::Size {
        image: args.image.clone(),
        brokers: args.deploy_brokers.clone(),
        processes: plan.processes,
        workers: plan.workers_per_process,
        cpu: target.cores as f64,
        ..super::k8s::Size::example()
    };
    let dir = PathBuf::from(dir);
    super::k8s::write(&dir, &size)?;
    Ok(Some(dir))
}

/// Costs from a bench file: compute stages' means; overhead without queue waits, since
/// the plan models queueing itself.
fn from_bench(path: &std::path::Path, run: usize) -> anyhow::Result<Measured> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not `bench e2e --json` output", path.display()))?;
    let r = report
        .runs
        .get(run)
        .with_context(|| format!("{} has {} runs", path.display(), report.runs.len()))?;
    let costs = r
        .stages
        .iter()
        .filter(|(s, _)| s.pool().is_some())
        .map(|(s, st)| (*s, st.mean_ms))
        .collect();
    let costs = per_utterance(costs, &r.batch_mean);
    let overhead_ms = r.overhead.as_ref().map_or(0.0, |o| {
        (o.overhead_ms.mean - o.queue_wait_ms_mean).max(0.0)
    });
    // The pools as the processes reported them (derived from their core budget), else
    // the bench's --stage-threads.
    let reported = r.worker_metrics.iter().find(|m| !m.threads.is_empty());
    let threads = match reported {
        Some(m) => m.threads.clone(),
        None => BTreeMap::from([
            (Pool::Workers, r.workers),
            (Pool::Asr, r.stage_threads.max(1)),
            (Pool::Understanding, r.stage_threads.max(1)),
            (Pool::Answering, r.stage_threads.max(1)),
        ]),
    };
    Ok(Measured {
        costs,
        overhead_ms,
        threads,
        source: format!("{} run {run} ({} worker(s))", path.display(), r.workers),
    })
}

/// Costs from metrics snapshots. They carry percentiles, not means: the count-weighted
/// p50 stands in for the mean (an underestimate for skewed stages; prefer a bench file).
fn from_metrics(args: &PlanArgs) -> anyhow::Result<Measured> {
    let brokers = args.metrics_from_brokers.clone().unwrap_or_default();
    let topic = args.metrics_topic.clone().unwrap_or_default();
    let snapshots = read_metrics(&brokers, &topic, Duration::from_secs(args.metrics_seconds))?;
    let p50 = weighted_p50s(&snapshots);
    let costs: BTreeMap<Stage, f64> = p50
        .iter()
        .filter(|(s, _)| s.pool().is_some())
        .map(|(s, v)| (*s, *v))
        .collect();
    let costs = per_utterance(costs, &weighted_batch_means(&snapshots));
    // end_to_end spans complete → acked; what the stages and queues do not explain is
    // the engine's (and the sink's) own time.
    let waits: f64 = p50
        .iter()
        .filter(|(s, _)| s.is_wait())
        .map(|(_, v)| v)
        .sum();
    let overhead_ms = p50
        .get(&Stage::EndToEnd)
        .map_or(0.0, |e| (e - critical_path(&costs) - waits).max(0.0));
    Ok(Measured {
        costs,
        overhead_ms,
        threads: BTreeMap::from([
            (Pool::Workers, args.workers),
            (Pool::Asr, args.asr_threads),
            (Pool::Understanding, args.understanding_threads),
        ]),
        source: format!("{} snapshots of {topic} on {brokers}", snapshots.len()),
    })
}

/// A batching stage reports the time of its whole batch for each utterance in it; what one
/// utterance costs the pool is that time over the mean batch size.
fn per_utterance(
    mut costs: BTreeMap<Stage, f64>,
    batch_mean: &BTreeMap<Stage, f64>,
) -> BTreeMap<Stage, f64> {
    for (stage, n) in batch_mean {
        if let Some(ms) = costs.get_mut(stage) {
            *ms /= n.max(1.0);
        }
    }
    costs
}

/// Mean batch size per stage over the snapshots, weighted by each snapshot's utterances.
fn weighted_batch_means(snapshots: &[MetricsSnapshot]) -> BTreeMap<Stage, f64> {
    count_weighted(snapshots, |snap, stage| {
        snap.batch_mean.get(&stage).copied()
    })
}

/// Σ count × p50 / Σ count per stage, over snapshots that saw the stage.
fn weighted_p50s(snapshots: &[MetricsSnapshot]) -> BTreeMap<Stage, f64> {
    count_weighted(snapshots, |snap, stage| {
        snap.stages.get(&stage).map(|s| s.p50_ms)
    })
}

/// Σ count × value / Σ count per stage, over the snapshots where the stage ran and
/// `value` has a figure for it.
fn count_weighted(
    snapshots: &[MetricsSnapshot],
    value: impl Fn(&MetricsSnapshot, Stage) -> Option<f64>,
) -> BTreeMap<Stage, f64> {
    let mut acc: BTreeMap<Stage, (f64, f64)> = BTreeMap::new();
    for snap in snapshots {
        for (stage, s) in &snap.stages {
            let count = s.count as f64;
            if let (true, Some(v)) = (count > 0.0, value(snap, *stage)) {
                let e = acc.entry(*stage).or_default();
                e.0 += count * v;
                e.1 += count;
            }
        }
    }
    acc.into_iter().map(|(k, (sum, n))| (k, sum / n)).collect()
}

fn read_metrics(
    brokers: &str,
    topic: &str,
    wait: Duration,
) -> anyhow::Result<Vec<MetricsSnapshot>> {
    let settings = KafkaSettings {
        brokers: brokers.into(),
        group_id: format!("teddyflow-plan-{}", std::process::id()),
        ..Default::default()
    };
    let reader = TopicReader::open(&settings, &[topic], StartAt::Beginning, Duration::ZERO)?;
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let snapshot = reader
            .next(Duration::from_millis(200))
            .and_then(|rec| serde_json::from_slice(rec.value.as_deref()?).ok());
        out.extend(snapshot);
    }
    anyhow::ensure!(
        !out.is_empty(),
        "no metrics snapshots on {topic} within {} s",
        wait.as_secs()
    );
    Ok(out)
}

fn print_plan(m: &Measured, t: &Target, p: &Plan) {
    let latency = t
        .latency_ms
        .map_or(String::new(), |l| format!(" within {l:.0} ms"));
    println!(
        "plan: {:.2} utterances/s{latency}, {} cores per process (costs from {})",
        t.rate, t.cores, m.source
    );
    let costs: Vec<String> = m
        .costs
        .iter()
        .map(|(s, ms)| format!("{s} {ms:.1}"))
        .collect();
    println!(
        "  stage means, ms: {}; engine overhead {:.1} ms",
        costs.join(", "),
        m.overhead_ms
    );
    println!(
        "  recommend: {} process(es) x {} worker(s), audio partitions {}, engine.max_pending_utterances = {}",
        p.processes, p.workers_per_process, p.partitions, p.max_pending_utterances
    );
    for pool in &p.pools {
        let batch = match pool.pool.batch_key() {
            Some(key) => format!("{key} >= {}", pool.batch),
            None => format!("batch up to {}", pool.batch),
        };
        println!(
            "    {:<24} threads {:>2}  ({} at {:.1} ms: {:>3.0} % busy; {batch})",
            pool.key,
            pool.threads,
            names(&pool.stages),
            pool.mean_ms,
            pool.utilization * 100.0,
        );
    }
    println!(
        "  per process {:.2} utterances/s, cores {:.0} % busy (ceiling {:.0} %)",
        p.rate_per_process,
        p.cpu_utilization * 100.0,
        p.rho * 100.0
    );
    println!(
        "  saturates first: {} (at {:.2} utterances/s for this cluster)",
        p.saturates_first, p.saturates_at_rate
    );
    let met = match p.latency_met {
        Some(true) => " (target met)",
        Some(false) => " (target NOT met)",
        None => "",
    };
    println!(
        "  latency: critical path {:.0} ms -> about {:.0} ms expected{met}",
        p.critical_path_ms, p.expected_latency_ms
    );
    println!(
        "  as measured (one process): {} saturates first, at {:.2} utterances/s",
        p.measured_saturates_first, p.measured_capacity
    );
    for note in &p.notes {
        println!("  note: {note}");
    }
    println!("  assumptions:");
    for a in ASSUMPTIONS {
        println!("    - {a}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(costs: &[(Stage, f64)], overhead_ms: f64) -> Measured {
        Measured {
            costs: costs.iter().copied().collect(),
            overhead_ms,
            threads: BTreeMap::from([(Pool::Workers, 1), (Pool::Asr, 1), (Pool::Understanding, 1)]),
            source: "test".into(),
        }
    }

    fn target(rate: f64, latency_ms: Option<f64>) -> Target {
        Target {
            rate,
            latency_ms,
            cores: 2,
            utilization: 0.7,
        }
    }

    const COSTS: [(Stage, f64); 4] = [
        (Stage::Decode, 2.0),
        (Stage::Asr, 400.0),
        (Stage::Acoustic, 20.0),
        (Stage::Understand, 30.0),
    ];

    fn pool(p: &Plan, pool: Pool) -> &PoolPlan {
        p.pools.iter().find(|x| x.pool == pool).unwrap()
    }

    #[test]
    fn ten_per_second_on_two_cores_needs_four_processes_and_the_cores_fill_first() {
        // Σ means 452 ms; one process at ρ 0.7: 0.7 × 2000 / 452 = 3.097/s → ⌈10 / 3.097⌉ = 4.
        // Per process 2.5/s: asr ⌈2.5 × 0.4 / 0.7⌉ = 2 threads at 2.5 × 400 / 2000 = 50 %;
        // cores 2.5 × 452 / 2000 = 56.5 % → the cores saturate first, at 10 / 0.565 = 17.70/s.
        let p = plan(&measured(&COSTS, 0.0), &target(10.0, None));
        assert_eq!(p.processes, 4);
        assert_eq!(p.rate_per_process, 2.5);
        assert_eq!(pool(&p, Pool::Asr).threads, 2);
        assert!((pool(&p, Pool::Asr).utilization - 0.5).abs() < 1e-12);
        assert_eq!(pool(&p, Pool::Understanding).threads, 1);
        assert_eq!(pool(&p, Pool::Workers).threads, 1);
        assert_eq!(pool(&p, Pool::Acoustic).threads, 1);
        assert!((p.cpu_utilization - 0.565).abs() < 1e-12);
        assert_eq!(p.saturates_first, "cpu");
        assert!((p.saturates_at_rate - 17.699).abs() < 1e-3);
        assert_eq!(p.partitions, 8);
        // Critical path 2 + max(400, 20) + 30 = 432; 432 / (1 − 0.565) = 993.1 ms.
        assert_eq!(p.critical_path_ms, 432.0);
        assert!((p.expected_latency_ms - 993.103).abs() < 1e-3);
        // Little: ⌈2 × 2.5 × 0.9931⌉ = 5 pending utterances.
        assert_eq!(p.max_pending_utterances, 5);
        assert_eq!(pool(&p, Pool::Asr).batch, 1);
    }

    #[test]
    fn a_latency_target_lowers_the_ceiling_and_adds_processes() {
        // ρ = 1 − 432 / 800 = 0.46: 0.46 × 2000 / 452 = 2.035/s → 5 processes at 2/s;
        // cores 2 × 452 / 2000 = 45.2 % → 432 / 0.548 = 788.3 ms ≤ 800.
        let p = plan(&measured(&COSTS, 0.0), &target(10.0, Some(800.0)));
        assert!((p.rho - 0.46).abs() < 1e-12);
        assert_eq!(p.processes, 5);
        assert!((p.expected_latency_ms - 788.321).abs() < 1e-3);
        assert_eq!(p.latency_met, Some(true));
        assert_eq!(pool(&p, Pool::Asr).threads, 2);
    }

    #[test]
    fn an_impossible_latency_target_is_said_so() {
        let p = plan(&measured(&COSTS, 10.0), &target(1.0, Some(430.0)));
        assert_eq!(p.latency_met, Some(false));
        assert!(
            p.notes[0].contains("below the critical path"),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn at_a_light_rate_one_process_and_asr_saturates_first() {
        // 1/s: asr 1 × 400 / 1000 = 40 % > cores 452 / 2000 = 22.6 % → asr, at 2.5/s.
        let p = plan(&measured(&COSTS, 5.0), &target(1.0, None));
        assert_eq!(p.processes, 1);
        assert_eq!(pool(&p, Pool::Asr).threads, 1);
        assert_eq!(p.saturates_first, "asr");
        assert!((p.saturates_at_rate - 2.5).abs() < 1e-12);
        // 432 / 0.6 + 5 = 725 ms
        assert!((p.expected_latency_ms - 725.0).abs() < 1e-9);
        // Measured with one asr thread: asr 2.5/s < cores 4.42/s.
        assert_eq!(p.measured_saturates_first, "asr");
        assert!((p.measured_capacity - 2.5).abs() < 1e-12);
    }

    #[test]
    fn a_heavy_single_thread_stage_bounds_each_process() {
        // acoustic 500 ms on its one thread: 0.7 × 1000 / 500 = 1.4/s per process (cores
        // allow 0.7 × 2000 / 532 = 2.63/s) → ⌈3 / 1.4⌉ = 3 processes; 1/s each → acoustic
        // 50 % busy, saturating first at 3 / 0.5 = 6/s.
        let costs = [
            (Stage::Decode, 2.0),
            (Stage::Asr, 30.0),
            (Stage::Acoustic, 500.0),
        ];
        let p = plan(&measured(&costs, 0.0), &target(3.0, None));
        assert_eq!(p.processes, 3);
        assert_eq!(p.saturates_first, "acoustic");
        assert!((p.saturates_at_rate - 6.0).abs() < 1e-9);
        // The parallel branch: critical path 2 + max(30, 500) = 502.
        assert_eq!(p.critical_path_ms, 502.0);
    }

    #[test]
    fn answering_stages_share_a_pool() {
        let costs = [
            (Stage::Asr, 100.0),
            (Stage::Reply, 300.0),
            (Stage::Tts, 100.0),
        ];
        let p = plan(&measured(&costs, 0.0), &target(1.0, None));
        let a = pool(&p, Pool::Answering);
        assert_eq!(a.stages, [Stage::Reply, Stage::Tts]);
        assert_eq!(a.mean_ms, 400.0);
        assert_eq!(p.critical_path_ms, 500.0);
    }

    #[test]
    fn metrics_means_are_count_weighted_p50s() {
        let snaps = [
            snapshot(&[(Stage::Asr, 3, 100.0)], &[]),
            snapshot(&[(Stage::Asr, 1, 500.0), (Stage::Decode, 0, 0.0)], &[]),
        ];
        let w = weighted_p50s(&snaps);
        assert_eq!(w[&Stage::Asr], 200.0);
        assert!(!w.contains_key(&Stage::Decode));
    }

    fn snapshot(stages: &[(Stage, u64, f64)], batch_mean: &[(Stage, f64)]) -> MetricsSnapshot {
        let summary = |count, p50_ms| teddyflow_dataflow::metrics::StageSummary {
            count,
            p50_ms,
            ..Default::default()
        };
        MetricsSnapshot {
            stages: stages
                .iter()
                .map(|(s, n, p)| (*s, summary(*n, *p)))
                .collect(),
            batch_mean: batch_mean.iter().copied().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn batched_stages_cost_their_batch_time_over_its_size() {
        let costs = BTreeMap::from([(Stage::Asr, 2000.0), (Stage::Reply, 900.0)]);
        let batches = BTreeMap::from([(Stage::Asr, 4.0), (Stage::Understand, 2.0)]);
        let c = per_utterance(costs, &batches);
        assert_eq!(c[&Stage::Asr], 500.0);
        assert_eq!(c[&Stage::Reply], 900.0);
        assert!(!c.contains_key(&Stage::Understand));
        let snaps = [
            snapshot(&[(Stage::Asr, 3, 0.0)], &[(Stage::Asr, 3.0)]),
            snapshot(&[(Stage::Asr, 1, 0.0)], &[(Stage::Asr, 1.0)]),
            snapshot(&[], &[]),
        ];
        assert_eq!(weighted_batch_means(&snaps)[&Stage::Asr], 2.5);
    }
}
