//! `teddyflow bench e2e`: a simulated fleet through the real broker against real
//! `teddyflow run` processes that the bench starts itself; prints latency percentiles,
//! throughput, per-stage time, engine overhead, CPU and peak RSS per process, and the
//! throughput ratio between worker counts. `--json` output feeds `teddyflow plan`.
//!
//! Each run (one per `--workers` value) uses fresh topics named after a run id, so runs
//! never read each other's records and no consumer offsets need resetting.

mod broker;
mod collect;
pub mod layout;
mod load;
pub(crate) mod procs;
pub mod report;
pub mod soak;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};
use teddyflow_connectors::fleet::{default_voices, profile_record, Voice, CHILD_NAMES};
use teddyflow_connectors::kafka::{ensure_topics, AckedWriter, KafkaSettings, TopicSpec};
use teddyflow_connectors::wire::Codec;

use collect::{Collector, OutputTopics};
use layout::Layout;
use load::{Arrival, LoadSpec, Planned};
use procs::{ProcSpec, ProcUsage, Processors};
use report::{Latency, Observed, Overhead, StageStat};
use teddyflow_dataflow::outputs::MetricsSnapshot;
use teddyflow_dataflow::stage::Stage;

/// How the benchmarked processors are configured and where they log (`bench e2e`, `bench soak`).
#[derive(Args, Debug)]
pub struct ProcessorArgs {
    /// Config file for the processors.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Config override passed to every processor (repeatable); applied last.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Folder for processor logs. Default: a fresh folder under the temp dir.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct E2eArgs {
    /// Bootstrap servers. Default: BROKERS= in .assets/run/broker.env, else a local broker
    /// is started with scripts/broker.sh (and stopped at the end).
    #[arg(long)]
    brokers: Option<String>,
    /// Conversations (toys) the utterances are spread over.
    #[arg(long, default_value_t = 4)]
    conversations: usize,
    /// Utterances measured, all conversations together [default: 20].
    #[arg(long, conflicts_with = "duration_s")]
    utterances: Option<usize>,
    /// Instead of --utterances: send at --rate for this many seconds.
    #[arg(long)]
    duration_s: Option<f64>,
    /// Offered utterances per second, whole fleet, open loop; 0 sends all at once (a
    /// saturating load). Default: 1, or 0 when several --workers are compared or with
    /// --scaling.
    #[arg(long)]
    rate: Option<f64>,
    /// Arrival process.
    #[arg(long, value_enum, default_value = "even")]
    arrival: Arrival,
    /// Seed of the Poisson arrivals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Codecs to cycle through.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "wav,flac,ogg,mp3,pcm_s16le"
    )]
    codecs: Vec<Codec>,
    /// espeak-ng voices to cycle through. Default: the fleet's two child-like and two adult voices.
    #[arg(long, value_delimiter = ',')]
    voices: Vec<String>,
    /// Chunk size in bytes.
    #[arg(long, default_value_t = 8192)]
    chunk_bytes: usize,
    /// Worker threads per process. A list (1,2) runs the same load once per count, on
    /// fresh topics, and prints the throughput ratio of the last over the first.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    workers: Vec<usize>,
    /// Processor processes (one timely cluster on loopback ports). Several are each
    /// pinned to their share of the cpus (`run --cpu-list`) unless --no-pin.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Leave the processes of a cluster unpinned (every thread may run on every cpu).
    #[arg(long)]
    no_pin: bool,
    /// The cpus the processors may use (`0-1`, `1`), shared out among --processes.
    /// Default: every cpu this bench may run on.
    #[arg(long, value_name = "CPUS")]
    cpu_list: Option<String>,
    /// Run the same load as one process pinned to one core, one process on every cpu
    /// with no tuning flags, and a cluster of one process per cpu, pinned and unpinned;
    /// print the throughput of each against one core.
    #[arg(long, conflicts_with = "processes")]
    scaling: bool,
    /// Threads of every model stage pool (asr.threads, understanding.threads,
    /// answering.threads). Default: not set, so derived from each process's core budget.
    #[arg(long)]
    stage_threads: Option<usize>,
    /// Partitions of the run's topics.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Utterances sent and answered before the clock starts (not measured).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Seconds to wait for the processors to load their models.
    #[arg(long, default_value_t = 300)]
    ready_timeout_s: u64,
    /// Seconds to wait for responses after the last utterance was sent.
    #[arg(long, default_value_t = 120)]
    response_timeout_s: u64,
    #[command(flatten)]
    processors: ProcessorArgs,
    /// Print one JSON object (for `teddyflow plan --from`).
    #[arg(long)]
    json: bool,
}

/// The whole bench: settings, one entry per worker count, and the scaling ratio.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub run_id: String,
    pub brokers: String,
    pub conversations: usize,
    pub utterances: usize,
    /// Offered utterances/s; 0 = all at once.
    pub rate: f64,
    pub arrival: String,
    pub codecs: Vec<Codec>,
    pub voices: Vec<String>,
    pub warmup: usize,
    /// CPUs of the machine the bench ran on.
    pub cores: usize,
    pub overhead_definition: String,
    pub runs: Vec<RunReport>,
    pub scaling: Option<Scaling>,
    /// With --scaling: each layout's throughput against the first (one core).
    #[serde(default)]
    pub core_scaling: Vec<ScalingRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScalingRow {
    pub label: String,
    pub processes: usize,
    pub cpu_lists: Vec<String>,
    pub utterances_per_s: f64,
    pub vs_one_core: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub workers: usize,
    pub processes: usize,
    /// How the processes sat on the cores.
    #[serde(default)]
    pub label: String,
    /// Per process, the cpus it was pinned to; empty = unpinned.
    #[serde(default)]
    pub cpu_lists: Vec<String>,
    /// `--stage-threads`; 0 = not set (each pool derived from the core budget: the
    /// counts are in `worker_metrics[].threads`).
    pub stage_threads: usize,
    /// The thread keys that were set (answering.threads only once the config has it).
    pub stage_thread_keys: Vec<String>,
    pub topic_prefix: String,
    pub sent: usize,
    pub matched: usize,
    pub missing: usize,
    pub duplicates: usize,
    pub deadletters: usize,
    /// Clock start (first send) → last response read: the throughput window.
    pub duration_s: f64,
    /// Clock start → when CPU was last read (after the last response, or the timeout):
    /// the window of `cpu_s_measured`.
    pub cpu_window_s: f64,
    pub utterances_per_s: f64,
    pub latency_ms: Latency,
    pub stages: BTreeMap<Stage, StageStat>,
    /// Mean utterances per call of the stages that batch (`asr`, `understand`): a stage's
    /// time is the whole batch's, its cost per utterance that time over the batch size.
    #[serde(default)]
    pub batch_mean: BTreeMap<Stage, f64>,
    pub overhead: Option<Overhead>,
    pub process_usage: Vec<ProcUsage>,
    /// Last metrics snapshot per worker (counters, lag, RSS; no ids).
    pub worker_metrics: Vec<MetricsSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scaling {
    pub workers: Vec<usize>,
    pub utterances_per_s: Vec<f64>,
    /// Throughput of the last worker count over the first.
    pub ratio: f64,
}

const OVERHEAD_DEFINITION: &str = "overhead = total - (decode + max(asr, acoustic) + understand + reply + tts), per utterance; reply and tts count their overlap once when both report spans; percent = sum(overhead) / sum(model) * 100; the second percent leaves the *_wait stages out (queueing, and the hand-off to the model pool). total runs from the final chunk reaching teddyflow to the response being produced; queue waits (*_wait) are overhead and are also shown alone.";

/// Everything a run needs that does not change between worker counts.
struct Bench {
    settings: KafkaSettings,
    run_id: String,
    load: Arc<Vec<Planned>>,
    warm: Vec<Planned>,
    stop: Arc<AtomicBool>,
    log_dir: PathBuf,
}

/// Stage thread pools, all set to `--stage-threads` when given.
const THREAD_KEYS: [&str; 3] = ["asr.threads", "understanding.threads", "answering.threads"];

pub fn run(args: E2eArgs) -> anyhow::Result<()> {
    validate(&args)?;
    let stop = stop_flag()?;
    let broker = broker::resolve(args.brokers.as_deref())?;
    let saturate = args.workers.len() > 1 || args.scaling;
    let rate = args.rate.unwrap_or(if saturate { 0.0 } else { 1.0 });
    let count = match args.duration_s {
        Some(d) => (rate * d).ceil() as usize,
        None => args.utterances.unwrap_or(20),
    };
    let bench = prepare(&args, &broker.addr, rate, count, stop)?;
    let mut runs = Vec::new();
    for (i, (workers, layout)) in runs_to_make(&args)?.into_iter().enumerate() {
        runs.push(one_run(&bench, &args, i, workers, &layout)?);
    }
    let core_scaling = match args.scaling {
        true => core_scaling(&runs),
        false => Vec::new(),
    };
    let report = Report {
        run_id: bench.run_id.clone(),
        brokers: broker.addr.clone(),
        conversations: args.conversations,
        utterances: count,
        rate,
        arrival: format!("{:?}", args.arrival).to_lowercase(),
        codecs: args.codecs.clone(),
        voices: voices(&args.voices).into_iter().map(|v| v.name).collect(),
        warmup: args.warmup,
        cores: cores(),
        overhead_definition: OVERHEAD_DEFINITION.into(),
        scaling: (!args.scaling).then(|| scaling(&runs)).flatten(),
        core_scaling,
        runs,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &bench.log_dir);
    }
    missing_error(&report, args.response_timeout_s)
}

fn validate(args: &E2eArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.conversations > 0, "--conversations must be at least 1");
    anyhow::ensure!(!args.codecs.is_empty(), "--codecs must name a codec");
    anyhow::ensure!(
        args.workers.iter().all(|w| *w > 0),
        "--workers must be at least 1"
    );
    anyhow::ensure!(args.processes > 0, "--processes must be at least 1");
    anyhow::ensure!(
        !args.scaling || args.workers.len() == 1,
        "--scaling compares core layouts at one --workers count"
    );
    if args.duration_s.is_some() {
        anyhow::ensure!(
            args.rate.is_some_and(|r| r > 0.0),
            "--duration-s needs a --rate above 0"
        );
    }
    Ok(())
}

/// Ctrl-C or SIGTERM ends the bench through its error path, so the processors' Drop guard
/// kills them instead of leaving them running.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Release))?;
    Ok(stop)
}

fn prepare(
    args: &E2eArgs,
    brokers: &str,
    rate: f64,
    count: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Bench> {
    let run_id = format!(
        "e2e-{:x}{:x}",
        teddyflow_dataflow::envelope::now_ms() % 0xffffff,
        std::process::id() % 0xfff
    );
    let spec = LoadSpec {
        conversations: args.conversations,
        codecs: args.codecs.clone(),
        voices: voices(&args.voices),
    };
    tracing::info!(utterances = count, "synthesizing and encoding the load");
    let times = load::schedule(count, rate, args.arrival, args.seed);
    let load = load::prepare(&spec, count, &times)?;
    let warm = load::prepare(&spec, args.warmup, &[])?;
    let log_dir = args
        .processors
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("teddyflow-bench-{run_id}")));
    Ok(Bench {
        settings: KafkaSettings {
            brokers: brokers.into(),
            ..Default::default()
        },
        run_id,
        load: Arc::new(load),
        warm,
        stop,
        log_dir,
    })
}

fn voices(names: &[String]) -> Vec<Voice> {
    let defaults = default_voices();
    if names.is_empty() {
        return defaults;
    }
    names
        .iter()
        .map(|n| {
            defaults
                .iter()
                .find(|v| &v.name == n)
                .cloned()
                .unwrap_or_else(|| Voice::new(n, 50, 160))
        })
        .collect()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The cpus the processors may use: --cpu-list, else this bench's own.
fn bench_cpus(args: &E2eArgs) -> anyhow::Result<(Vec<usize>, bool)> {
    match &args.cpu_list {
        Some(list) => {
            let cpus = teddyflow_dataflow::cores::parse_cpu_list(list)
                .with_context(|| format!("--cpu-list {list:?}: expected e.g. 0-1 or 2,3"))?;
            Ok((cpus, true))
        }
        None => {
            let all = (0..cores()).collect();
            Ok((teddyflow_dataflow::cores::affinity().unwrap_or(all), false))
        }
    }
}

/// Each run: its worker count and how its processes sit on the cores.
fn runs_to_make(args: &E2eArgs) -> anyhow::Result<Vec<(usize, Layout)>> {
    let (cpus, restricted) = bench_cpus(args)?;
    if args.scaling {
        let workers = args.workers[0];
        return Ok(Layout::scaling(&cpus)
            .into_iter()
            .map(|l| (workers, l))
            .collect());
    }
    let layout = Layout::new(args.processes, &cpus, !args.no_pin, restricted);
    Ok(args.workers.iter().map(|&w| (w, layout.clone())).collect())
}

/// The run's topics, all under one fresh prefix.
struct RunTopics {
    prefix: String,
    /// The run's place in the bench (names its log folder).
    index: usize,
    names: Vec<(&'static str, String)>,
}

impl RunTopics {
    fn new(prefix: &str) -> RunTopics {
        let kinds = [
            "audio",
            "responses",
            "metrics",
            "deadletter",
            "alerts",
            "speech",
            "profiles",
        ];
        RunTopics {
            prefix: prefix.into(),
            index: 0,
            names: kinds
                .into_iter()
                .map(|k| (k, format!("{prefix}.{k}")))
                .collect(),
        }
    }

    fn name(&self, kind: &str) -> &str {
        self.names
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or("", |(_, n)| n)
    }

    fn outputs(&self) -> OutputTopics<'_> {
        OutputTopics {
            responses: self.name("responses"),
            metrics: self.name("metrics"),
            deadletter: self.name("deadletter"),
        }
    }

    fn specs(&self, partitions: i32) -> Vec<TopicSpec> {
        self.names
            .iter()
            .map(|(kind, name)| TopicSpec {
                name: name.clone(),
                partitions,
                compacted: *kind == "profiles",
            })
            .collect()
    }
}

fn proc_spec(
    bench: &Bench,
    args: &E2eArgs,
    workers: usize,
    layout: &Layout,
    topics: &RunTopics,
) -> ProcSpec {
    let mut sets: Vec<String> = topics
        .names
        .iter()
        .map(|(kind, name)| format!("topics.{kind}=\"{name}\""))
        .collect();
    sets.push(format!("topics.partitions={}", args.partitions));
    sets.push(format!("kafka.group_id=\"{}\"", topics.prefix));
    sets.push("engine.metrics_interval_ms=1000".into());
    if let Some(threads) = args.stage_threads {
        sets.extend(THREAD_KEYS.iter().map(|k| format!("{k}={threads}")));
    }
    sets.extend(args.processors.set.iter().cloned());
    ProcSpec {
        brokers: bench.settings.brokers.clone(),
        workers,
        processes: layout.processes,
        config: args.processors.config.clone(),
        sets,
        log_dir: bench.log_dir.join(format!("r{}-w{workers}", topics.index)),
        cpu_lists: layout.cpu_lists.clone(),
    }
}

fn one_run(
    bench: &Bench,
    args: &E2eArgs,
    index: usize,
    workers: usize,
    layout: &Layout,
) -> anyhow::Result<RunReport> {
    let mut topics = RunTopics::new(&format!("{}-r{index}-w{workers}", bench.run_id));
    topics.index = index;
    ensure_topics(&bench.settings, &topics.specs(args.partitions))?;
    write_profiles(bench, args, &topics)?;
    let mut collector = Collector::open(&bench.settings, &topics.outputs())?;
    let spec = proc_spec(bench, args, workers, layout, &topics);
    tracing::info!(workers, layout = %layout.label, logs = %spec.log_dir.display(), "starting processors");
    let mut procs = Processors::start(&spec)?;
    let ready_timeout = Duration::from_secs(args.ready_timeout_s);
    procs.wait_ready(&mut collector, workers, ready_timeout, &bench.stop)?;
    warm_up(bench, args, &topics, &mut collector, &mut procs)?;
    tracing::info!(utterances = bench.load.len(), "sending the load");
    procs.mark();
    let start = Instant::now();
    let sender = spawn_sender(bench, args, topics.name("audio"), &topics.prefix, start);
    let finals = await_load(
        bench,
        args,
        &topics.prefix,
        &mut collector,
        &mut procs,
        sender,
    )?;
    let usage = procs.usage();
    let cpu_window_s = start.elapsed().as_secs_f64();
    drop(procs);
    let ctx = RunContext {
        workers,
        layout,
        args,
        bench,
        prefix: &topics.prefix,
        start,
        cpu_window_s,
    };
    Ok(run_report(&ctx, &collector, &finals, usage))
}

/// Every simulated child has a profile, as in a real fleet: replies carry a name and the
/// profile join does real work.
fn write_profiles(bench: &Bench, args: &E2eArgs, topics: &RunTopics) -> anyhow::Result<()> {
    let writer = AckedWriter::open(&bench.settings)?;
    for c in 0..args.conversations {
        let child = format!("{}-child-{c}", topics.prefix);
        let name = CHILD_NAMES[c % CHILD_NAMES.len()];
        let rec = profile_record(topics.name("profiles"), &child, name, 6, "en");
        crate::cmd::fleet::send_with_retry(&writer, c as u64 + 1, &rec)?;
    }
    crate::cmd::fleet::wait_acks(&writer)
}

fn warm_up(
    bench: &Bench,
    args: &E2eArgs,
    topics: &RunTopics,
    collector: &mut Collector,
    procs: &mut Processors,
) -> anyhow::Result<()> {
    if bench.warm.is_empty() {
        return Ok(());
    }
    let prefix = format!("{}-warm", topics.prefix);
    let (audio, chunk) = (topics.name("audio"), args.chunk_bytes);
    load::send(
        &bench.settings,
        audio,
        &prefix,
        chunk,
        &bench.warm,
        Instant::now(),
        &bench.stop,
    )?;
    let ids = id_set(&bench.warm, &prefix);
    let deadline = Instant::now() + Duration::from_secs(args.ready_timeout_s);
    let done = poll_until(collector, procs, &bench.stop, Some(deadline), |c| {
        c.answered(&ids) == ids.len()
    })?;
    anyhow::ensure!(
        done,
        "warm-up utterances not answered within {} s; processor logs: {}",
        args.ready_timeout_s,
        procs.log_list()
    );
    Ok(())
}

fn spawn_sender(
    bench: &Bench,
    args: &E2eArgs,
    topic: &str,
    prefix: &str,
    start: Instant,
) -> JoinHandle<anyhow::Result<Vec<Instant>>> {
    let settings = bench.settings.clone();
    let (topic, prefix) = (topic.to_string(), prefix.to_string());
    let (load, stop, chunk) = (bench.load.clone(), bench.stop.clone(), args.chunk_bytes);
    std::thread::spawn(move || load::send(&settings, &topic, &prefix, chunk, &load, start, &stop))
}

/// Collect responses while the sender runs, then until all are in or the timeout passes.
/// Returns when each utterance's final chunk was sent.
fn await_load(
    bench: &Bench,
    args: &E2eArgs,
    prefix: &str,
    collector: &mut Collector,
    procs: &mut Processors,
    sender: JoinHandle<anyhow::Result<Vec<Instant>>>,
) -> anyhow::Result<Vec<Instant>> {
    poll_until(collector, procs, &bench.stop, None, |_| {
        sender.is_finished()
    })?;
    let finals = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))??;
    let ids = id_set(&bench.load, prefix);
    let deadline = Instant::now() + Duration::from_secs(args.response_timeout_s);
    poll_until(collector, procs, &bench.stop, Some(deadline), |c| {
        c.answered(&ids) == ids.len()
    })?;
    Ok(finals)
}

/// Read the output topics until `done` (true) or the deadline (false). Errors when a
/// processor exits or the bench is asked to stop.
fn poll_until(
    collector: &mut Collector,
    procs: &mut Processors,
    stop: &AtomicBool,
    deadline: Option<Instant>,
    mut done: impl FnMut(&Collector) -> bool,
) -> anyhow::Result<bool> {
    loop {
        if done(collector) {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
        anyhow::ensure!(!stop.load(Ordering::Acquire), "stopped");
        procs.check_alive()?;
        collector.poll_for(Duration::from_millis(50));
    }
}

fn id_set(plan: &[Planned], prefix: &str) -> HashSet<(String, String)> {
    plan.iter().map(|p| p.ids(prefix)).collect()
}

struct RunContext<'a> {
    workers: usize,
    layout: &'a Layout,
    args: &'a E2eArgs,
    bench: &'a Bench,
    prefix: &'a str,
    start: Instant,
    cpu_window_s: f64,
}

fn run_report(
    ctx: &RunContext,
    collector: &Collector,
    finals: &[Instant],
    usage: Vec<ProcUsage>,
) -> RunReport {
    let mut observed = Vec::new();
    let mut last_seen = ctx.start;
    for (p, sent) in ctx.bench.load.iter().zip(finals) {
        if let Some(seen) = collector.responses.get(&p.ids(ctx.prefix)) {
            let e2e_ms = seen.at.saturating_duration_since(*sent).as_secs_f64() * 1e3;
            observed.push(Observed::from_response(&seen.body, e2e_ms));
            last_seen = last_seen.max(seen.at);
        }
    }
    let duration_s = last_seen.duration_since(ctx.start).as_secs_f64();
    let matched = observed.len();
    RunReport {
        workers: ctx.workers,
        processes: ctx.layout.processes,
        label: ctx.layout.label.clone(),
        cpu_lists: ctx.layout.cpu_lists.clone(),
        stage_threads: ctx.args.stage_threads.unwrap_or(0),
        stage_thread_keys: THREAD_KEYS.iter().map(|k| k.to_string()).collect(),
        topic_prefix: ctx.prefix.to_string(),
        sent: ctx.bench.load.len(),
        matched,
        missing: ctx.bench.load.len() - matched,
        duplicates: collector.duplicates,
        deadletters: collector.deadletters,
        duration_s,
        cpu_window_s: ctx.cpu_window_s,
        utterances_per_s: if duration_s > 0.0 {
            matched as f64 / duration_s
        } else {
            0.0
        },
        latency_ms: report::latency(&observed),
        stages: report::stage_stats(&observed),
        batch_mean: report::batch_means(&observed),
        overhead: report::overhead(&observed),
        process_usage: usage,
        worker_metrics: collector.metrics.values().cloned().collect(),
    }
}

fn scaling(runs: &[RunReport]) -> Option<Scaling> {
    let (first, last) = (runs.first()?, runs.last()?);
    (runs.len() > 1).then(|| Scaling {
        workers: runs.iter().map(|r| r.workers).collect(),
        utterances_per_s: runs.iter().map(|r| r.utterances_per_s).collect(),
        ratio: last.utterances_per_s / first.utterances_per_s.max(f64::EPSILON),
    })
}

/// Each run's throughput against the first (one process on one core).
fn core_scaling(runs: &[RunReport]) -> Vec<ScalingRow> {
    let one = runs.first().map_or(0.0, |r| r.utterances_per_s);
    runs.iter()
        .map(|r| ScalingRow {
            label: r.label.clone(),
            processes: r.processes,
            cpu_lists: r.cpu_lists.clone(),
            utterances_per_s: r.utterances_per_s,
            vs_one_core: r.utterances_per_s / one.max(f64::EPSILON),
        })
        .collect()
}

/// Missing responses fail the bench (after the figures are printed), naming the logs.
fn missing_error(report: &Report, timeout_s: u64) -> anyhow::Result<()> {
    if let Some(run) = report.runs.iter().find(|r| r.missing > 0) {
        let logs: Vec<&str> = run.process_usage.iter().map(|u| u.log.as_str()).collect();
        anyhow::bail!(
            "{} of {} responses missing {} s after the last send ({} worker(s), {} dead letters); processor logs: {}",
            run.missing,
            run.sent,
            timeout_s,
            run.workers,
            run.deadletters,
            logs.join(", ")
        );
    }
    Ok(())
}

fn print_report(report: &Report, log_dir: &std::path::Path) {
    let rate = if report.rate > 0.0 {
        format!("{:.2}/s ({})", report.rate, report.arrival)
    } else {
        "all at once (saturating)".into()
    };
    println!(
        "bench e2e {}: broker {}, {} conversations, {} utterances at {}, codecs {}, {} cpus",
        report.run_id,
        report.brokers,
        report.conversations,
        report.utterances,
        rate,
        report
            .codecs
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(","),
        report.cores
    );
    for run in &report.runs {
        print_run(run);
    }
    if let Some(s) = &report.scaling {
        let per: Vec<String> = s
            .workers
            .iter()
            .zip(&s.utterances_per_s)
            .map(|(w, u)| format!("{w} worker(s) {u:.2}/s"))
            .collect();
        println!(
            "\nscaling: {}; {} over {}: {:.2}x",
            per.join(", "),
            s.workers.last().unwrap_or(&0),
            s.workers.first().unwrap_or(&0),
            s.ratio
        );
    }
    if !report.core_scaling.is_empty() {
        println!("\n| how teddyflow ran | utterances/s | vs one core |\n|---|---|---|");
        for row in &report.core_scaling {
            println!(
                "| {} | {:.2} | {:.2} |",
                row.label, row.utterances_per_s, row.vs_one_core
            );
        }
    }
    println!("\nprocessor logs: {}", log_dir.display());
}

fn print_run(r: &RunReport) {
    println!(
        "\n{}: {} process(es) x {} worker(s), stage threads {}: matched {}/{} ({} missing, {} duplicates, {} dead letters) in {:.1} s -> {:.2} utterances/s",
        r.label, r.processes, r.workers, stage_threads(r), r.matched, r.sent, r.missing, r.duplicates,
        r.deadletters, r.duration_s, r.utterances_per_s
    );
    println!(
        "  {:<30} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "latency ms", "p50", "p95", "p99", "mean", "max"
    );
    let l = &r.latency_ms;
    match &l.first_audio {
        Some(d) => print_dist("first_audio (engine)", d),
        None => println!("  {:<30} {:>8}", "first_audio (engine)", "-"),
    }
    print_dist("total (engine)", &l.total);
    print_dist("end to end (bench)", &l.end_to_end);
    println!(
        "  {:<30} {:>8} {:>8} {:>8}",
        "stage", "count", "mean ms", "p50 ms"
    );
    for (stage, s) in &r.stages {
        println!(
            "  {:<30} {:>8} {:>8.1} {:>8.1}",
            stage, s.count, s.mean_ms, s.p50_ms
        );
    }
    if !r.batch_mean.is_empty() {
        let b: Vec<String> = r
            .batch_mean
            .iter()
            .map(|(s, n)| format!("{s} {n:.2}"))
            .collect();
        println!("  mean batch (utterances per call): {}", b.join(", "));
    }
    if let Some(o) = &r.overhead {
        print_overhead(o);
    }
    for u in &r.process_usage {
        println!(
            "  process {} (pid {}): cpu {:.1} s total, {:.1} s while measured ({:.2} cores), peak RSS {} MiB",
            u.process,
            u.pid,
            u.cpu_s,
            u.cpu_s_measured,
            u.cpu_s_measured / r.cpu_window_s.max(f64::EPSILON),
            u.peak_rss_bytes >> 20
        );
    }
}

/// The stage pools' threads: `--stage-threads`, else what the first process reported.
fn stage_threads(r: &RunReport) -> String {
    if r.stage_threads > 0 {
        return r.stage_threads.to_string();
    }
    let derived = r.worker_metrics.iter().find(|m| !m.threads.is_empty());
    derived.map_or("derived".into(), |m| {
        let t: Vec<String> = m
            .threads
            .iter()
            .map(|(p, n)| format!("{p:?} {n}").to_lowercase())
            .collect();
        format!("derived from {} cores: {}", m.cores, t.join(", "))
    })
}

fn print_dist(label: &str, d: &report::Dist) {
    println!(
        "  {:<30} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        label, d.p50, d.p95, d.p99, d.mean, d.max
    );
}

fn print_overhead(o: &Overhead) {
    println!(
        "  engine overhead: {:.1} ms mean (p50 {:.1}) = {:.2} % of {:.1} ms model time on the critical path; without the *_wait stages ({:.1} ms): {:.2} %",
        o.overhead_ms.mean,
        o.overhead_ms.p50,
        o.percent_of_model,
        o.model_ms.mean,
        o.queue_wait_ms_mean,
        o.percent_of_model_excluding_waits
    );
    println!(
        "  outside the engine (producer, broker, consumer): {:.1} ms mean",
        o.outside_engine_ms.mean
    );
}
