//! `teddyflow run`: one process of a timely cluster.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use teddyflow_connectors::http::{HttpServer, Telemetry};
use teddyflow_connectors::kafka::{ensure_topics, TopicSpec};
use teddyflow_dataflow::config::Config;
use teddyflow_dataflow::cores::{self, CoreBudget};
use teddyflow_dataflow::graph::{run_worker, ProcessShared};
use teddyflow_dataflow::threads::ThreadPlan;

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// TOML config file (see configs/teddyflow.toml for every key).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Override kafka.brokers.
    #[arg(long)]
    brokers: Option<String>,
    /// Override engine.workers: worker threads in this process (default: derived from
    /// the core budget).
    #[arg(long, short = 'w')]
    workers: Option<usize>,
    /// Pin this process to these CPUs (`0-1`, `2,3`): its core budget follows. Use it to
    /// give each process of a cluster on one host its own cores.
    #[arg(long, value_name = "CPUS")]
    cpu_list: Option<String>,
    /// Timely cluster: number of processes.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    processes: usize,
    /// Timely cluster: index of this process (0-based).
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    process: usize,
    /// Timely cluster: file with one host:port per line, one per process.
    #[arg(short = 'h', long = "hostfile")]
    hostfile: Option<PathBuf>,
    /// Override any config key: `--set section.key=value` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    // First, while this is the only thread: every thread started later inherits the mask.
    if let Some(list) = &args.cpu_list {
        let cpus = cores::parse_cpu_list(list)
            .with_context(|| format!("--cpu-list {list:?}: expected e.g. 0-1 or 2,3"))?;
        cores::pin(&cpus).with_context(|| format!("pinning to cpus {list}"))?;
    }
    let mut overrides = args.set.clone();
    if let Some(b) = &args.brokers {
        overrides.push(format!("kafka.brokers=\"{b}\""));
    }
    if let Some(w) = args.workers {
        overrides.push(format!("engine.workers={w}"));
    }
    let config = Config::load(args.config.as_deref(), &overrides)?;
    let plan = ThreadPlan::derive(CoreBudget::detect(config.engine.cores), &config);
    // Before any model loads and before rdkafka starts its threads.
    plan.export_env();
    if config.topics.create {
        ensure_topics(&config.kafka, &topic_specs(&config)).context("creating topics")?;
    }
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // Served before the models load, so an orchestrator sees a live process that is not
    // ready yet rather than no process.
    let (telemetry, http) = serve_telemetry(&config)?;
    let mut shared =
        ProcessShared::load(&config, &plan, args.process, stop.clone()).with_context(|| {
            format!(
                "loading the models from {} (run `make setup` to install them)",
                config.models.dir.display()
            )
        })?;
    telemetry.health().models_loaded();
    shared.telemetry = Some(telemetry);
    let listeners = shared.hearing.listeners();
    let other = listeners.other.as_ref();
    tracing::info!(
        asr = listeners.english.engine(),
        model = listeners.english.model(),
        other_languages = other.map_or("none", |o| o.model()),
        second_opinion = listeners.second.as_ref().map_or("none", |s| s.model()),
        understanding = shared.understanding.is_some(),
        answering = shared.answering.is_some(),
        load_ms = started.elapsed().as_millis() as u64,
        "models loaded"
    );
    tracing::info!("core budget: {}", shared.threads_summary());
    for note in &plan.notes {
        tracing::warn!("oversubscribed: {note}");
    }
    ctrlc::set_handler(move || {
        tracing::info!("stop requested: draining in-flight work");
        stop.store(true, Ordering::Release);
    })?;
    let timely_config = timely_config(&args, plan.workers)?;
    let guards = timely::execute(timely_config, move |worker| {
        run_worker(worker, &config, shared.clone())
    })
    .map_err(|e| anyhow::anyhow!("starting timely: {e}"))?;
    for result in guards.join() {
        result.map_err(|e| anyhow::anyhow!("worker panicked: {e}"))??;
    }
    if let Some(server) = http {
        server.stop();
    }
    Ok(())
}

/// This process's Prometheus families, and the server for `/metrics`, `/healthz` and
/// `/readyz` on `engine.http_addr` (none when it is empty).
fn serve_telemetry(config: &Config) -> anyhow::Result<(Arc<Telemetry>, Option<HttpServer>)> {
    let e = &config.engine;
    let telemetry = Telemetry::new(e.workers, config.answering.enabled);
    if e.http_addr.is_empty() {
        return Ok((telemetry, None));
    }
    let stall = Duration::from_millis(e.health_stall_ms);
    let server = HttpServer::telemetry(&e.http_addr, telemetry.clone(), stall)
        .with_context(|| format!("serving metrics on engine.http_addr = {:?}", e.http_addr))?;
    tracing::info!(addr = %server.local_addr(), "serving /metrics, /healthz and /readyz");
    Ok((telemetry, Some(server)))
}

fn topic_specs(config: &Config) -> Vec<TopicSpec> {
    let t = &config.topics;
    let streams = [
        &t.audio,
        &t.responses,
        &t.metrics,
        &t.deadletter,
        &t.alerts,
        &t.speech,
    ];
    let mut specs: Vec<TopicSpec> = streams
        .into_iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions: t.partitions,
            compacted: false,
        })
        .collect();
    if config.answering.enabled {
        // Profiles are state: compacted, so the latest profile of every child is kept.
        specs.push(TopicSpec {
            name: t.profiles.clone(),
            partitions: t.partitions,
            compacted: true,
        });
    }
    specs
}

fn timely_config(args: &RunArgs, workers: usize) -> anyhow::Result<timely::Config> {
    let communication = if args.processes > 1 {
        let addresses = match &args.hostfile {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading hostfile {}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
            None => (0..args.processes)
                .map(|i| format!("localhost:{}", 2101 + i))
                .collect(),
        };
        let addresses: Vec<String> = addresses;
        anyhow::ensure!(
            addresses.len() == args.processes,
            "hostfile lists {} hosts for {} processes",
            addresses.len(),
            args.processes
        );
        anyhow::ensure!(args.process < args.processes, "process index out of range");
        timely::CommunicationConfig::Cluster {
            threads: workers,
            process: args.process,
            addresses,
            report: false,
            zerocopy: false,
        }
    } else if workers > 1 {
        timely::CommunicationConfig::Process(workers)
    } else {
        timely::CommunicationConfig::Thread
    };
    Ok(timely::Config {
        communication,
        worker: timely::WorkerConfig::default(),
    })
}
