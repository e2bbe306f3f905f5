//! `teddyflow bench cores`: for each model stage, the two ways to put k cores to work,
//! on the same jobs:
//!
//! - **intra-op**: one job at a time, its model calls spread over k threads (a k-thread
//!   rayon pool; `--candle` also sizes candle's own pool, used by quantized matmuls and
//!   large element-wise ops, to k);
//! - **inter-op**: k stage threads, each running its model calls on one thread (a
//!   one-thread rayon pool, candle's pool off), jobs taken from one queue.
//!
//! Candle sizes its pool once per process, so every (stage, mode) runs in a child process
//! of its own; rounds alternate the modes so that a machine shared with other work
//! disturbs them alike. Each child reports jobs/s, the mean job latency, and CPU seconds
//! per job; CPU time beyond what the jobs need (the inter-op figure on one core is the
//! reference) is threads waiting on each other by spinning.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use teddyflow_connectors::fleet::{default_voices, synthesize, CHILD_NAMES, CHILD_PHRASES};
use teddyflow_dataflow::cores::CoreBudget;
use teddyflow_models::audio::{self, Codec, DecodeOptions};
use teddyflow_models::embed::Embedder;
use teddyflow_models::llm::{Prompt, ReplyModel, Sampling};
use teddyflow_models::whisper::{WhisperModel, WhisperVariant};

use super::bench_e2e::procs::cpu_seconds;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchStage {
    /// Whisper tiny.en on synthesized child phrases (30 s window, as shipped).
    Asr,
    /// MiniLM embedding of one transcript (the understanding stage's model).
    Understand,
    /// SmolLM2 reply to a child phrase (greedy, as shipped).
    Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// k stage threads, one core each (rayon pool of 1, candle's pool off).
    Inter,
    /// One job at a time on a k-thread rayon pool, candle's pool off.
    Intra,
    /// One job at a time on a k-thread rayon pool and candle's pool of k.
    IntraCandle,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Inter => "inter-op",
            Mode::Intra => "intra-op (rayon)",
            Mode::IntraCandle => "intra-op (rayon + candle)",
        }
    }
}

#[derive(Args, Debug)]
pub struct CoresArgs {
    /// Stages to measure.
    #[arg(long, value_delimiter = ',', default_value = "asr,understand,reply")]
    stages: Vec<BenchStage>,
    /// Ways to run them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "inter,intra,intra-candle"
    )]
    modes: Vec<Mode>,
    /// Cores to put to work (k). Default: this process's core budget.
    #[arg(long)]
    cores: Option<usize>,
    /// Jobs per run (asr and reply; understand runs 8× as many, they are short).
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// Rounds; each runs every mode once, alternating.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Folder with the installed models.
    #[arg(long, default_value = ".assets/models")]
    models_dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Internal: run one stage in one mode in this process and print its figures.
    #[arg(long, hide = true, requires = "mode")]
    child: Option<BenchStage>,
    /// Internal: the mode of `--child`.
    #[arg(long, hide = true)]
    mode: Option<Mode>,
}

/// One child's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figures {
    pub stage: BenchStage,
    pub mode: Mode,
    pub cores: usize,
    pub jobs: usize,
    pub wall_s: f64,
    pub jobs_per_s: f64,
    /// Mean time from a job's start to its end.
    pub latency_ms: f64,
    pub cpu_s_per_job: f64,
    /// CPU time over wall time × cores: below 1 is idle cores, CPU per job above the
    /// inter-op figure is waiting that burns CPU.
    pub utilization: f64,
}

/// Every child's figures, and per stage and mode the median over rounds.
#[derive(Debug, Serialize)]
struct Report {
    cores: usize,
    load_average: String,
    runs: Vec<Figures>,
}

pub fn run(args: CoresArgs) -> anyhow::Result<()> {
    let cores = args
        .cores
        .unwrap_or_else(|| CoreBudget::detect(0).cores)
        .max(1);
    if let (Some(stage), Some(mode)) = (args.child, args.mode) {
        let figures = child(&args, stage, mode, cores)?;
        println!("{}", serde_json::to_string(&figures)?);
        return Ok(());
    }
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut runs = Vec::new();
    for stage in &args.stages {
        for round in 0..args.rounds {
            // Alternate the order so neither mode always runs first.
            let mut modes = args.modes.clone();
            if round % 2 == 1 {
                modes.reverse();
            }
            for mode in modes {
                tracing::info!(?stage, mode = mode.name(), round, "measuring");
                runs.push(spawn_child(&args, *stage, mode, cores)?);
            }
        }
    }
    let report = Report {
        cores,
        load_average: load_average.trim().to_string(),
        runs,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &args);
    }
    Ok(())
}

fn spawn_child(
    args: &CoresArgs,
    stage: BenchStage,
    mode: Mode,
    cores: usize,
) -> anyhow::Result<Figures> {
    let exe = std::env::current_exe().context("locating the teddyflow binary")?;
    let stage_name = format!("{stage:?}").to_lowercase();
    let mode_name = mode.to_possible_value().map(|v| v.get_name().to_string());
    let candle = match mode {
        Mode::IntraCandle => cores,
        _ => 1,
    };
    let out = Command::new(exe)
        .args(["bench", "cores", "--child", &stage_name])
        .args(["--mode", &mode_name.unwrap_or_default()])
        .args(["--cores", &cores.to_string()])
        .args(["--jobs", &args.jobs.to_string()])
        .arg("--models-dir")
        .arg(&args.models_dir)
        // Read by candle when it first builds its pool, and by gemm for its split count.
        .env("CANDLE_NUM_THREADS", candle.to_string())
        .env("RAYON_NUM_THREADS", cores.to_string())
        .env("RUST_LOG", "warn")
        .output()
        .context("running a bench child")?;
    anyhow::ensure!(
        out.status.success(),
        "bench child {stage_name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("bench child printed {line:?}"))
}

/// A unit of work of one stage.
type Job = Box<dyn Fn() -> anyhow::Result<()> + Send + Sync>;

fn child(args: &CoresArgs, stage: BenchStage, mode: Mode, cores: usize) -> anyhow::Result<Figures> {
    let (jobs, work) = match stage {
        BenchStage::Asr => (args.jobs, asr_job(&args.models_dir)?),
        BenchStage::Understand => (args.jobs * 8, understand_job(&args.models_dir)?),
        BenchStage::Reply => (args.jobs, reply_job(&args.models_dir)?),
    };
    let work = Arc::new(work);
    let (threads, width) = match mode {
        Mode::Inter => (cores, 1),
        Mode::Intra | Mode::IntraCandle => (1, cores),
    };
    // Warm-up: page the weights in, size the allocator's arenas, on every thread.
    run_jobs(&work, threads, width, threads)?;
    let cpu0 = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let latencies = run_jobs(&work, threads, width, jobs)?;
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(std::process::id()).unwrap_or(0.0) - cpu0;
    Ok(Figures {
        stage,
        mode,
        cores,
        jobs,
        wall_s,
        jobs_per_s: jobs as f64 / wall_s,
        latency_ms: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
        cpu_s_per_job: cpu_s / jobs as f64,
        utilization: cpu_s / (wall_s * cores as f64),
    })
}

/// `jobs` calls of `work` over `threads` threads, each inside a rayon pool of `width`.
/// Returns each call's latency in ms.
fn run_jobs(
    work: &Arc<Job>,
    threads: usize,
    width: usize,
    jobs: usize,
) -> anyhow::Result<Vec<f64>> {
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (work, next) = (work.clone(), next.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(width).build()?;
                let mut latencies = Vec::new();
                while next.fetch_add(1, Ordering::AcqRel) < jobs {
                    let t = Instant::now();
                    pool.install(|| work())?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("bench thread panicked"))??,
        );
    }
    Ok(all)
}

/// Whisper on espeak-ng child phrases, voices cycled, as the e2e bench's load.
fn asr_job(models_dir: &std::path::Path) -> anyhow::Result<Job> {
    let model = WhisperModel::load(models_dir, WhisperVariant::TinyEn)?;
    let voices = default_voices();
    let mut clips = Vec::new();
    for (i, phrase) in CHILD_PHRASES.iter().enumerate().take(4) {
        let wav = synthesize(phrase, &voices[i % voices.len()])?;
        clips.push(audio::decode(&wav, &DecodeOptions::new(Codec::Wav))?.samples);
    }
    let turn = AtomicUsize::new(0);
    Ok(Box::new(move || {
        let clip = &clips[turn.fetch_add(1, Ordering::Relaxed) % clips.len()];
        let mut out = model.transcribe_batch(&[clip.as_slice()], Some("en"));
        out.pop().context("no transcript")?.map(|_| ())
    }))
}

fn understand_job(models_dir: &std::path::Path) -> anyhow::Result<Job> {
    let embedder = Embedder::load(models_dir)?;
    let turn = AtomicUsize::new(0);
    Ok(Box::new(move || {
        let text = CHILD_PHRASES[turn.fetch_add(1, Ordering::Relaxed) % CHILD_PHRASES.len()];
        embedder.embed(&[text]).map(|_| ())
    }))
}

fn reply_job(models_dir: &std::path::Path) -> anyhow::Result<Job> {
    let model = ReplyModel::load(models_dir)?;
    let sampling = Sampling::default();
    let turn = AtomicUsize::new(0);
    Ok(Box::new(move || {
        let n = turn.fetch_add(1, Ordering::Relaxed);
        let prompt = Prompt {
            child_name: Some(CHILD_NAMES[n % CHILD_NAMES.len()].into()),
            age: Some(6),
            language: "en".into(),
            emotion: None,
            verdict: None,
            history: vec![],
            utterance: CHILD_PHRASES[n % CHILD_PHRASES.len()].into(),
        };
        model.generate(&prompt, &sampling, &mut |_| {}).map(|_| ())
    }))
}

fn print_report(r: &Report, args: &CoresArgs) {
    println!(
        "bench cores: k = {} cores, {} jobs per run ({} for understand), {} rounds; load average at start {}",
        r.cores,
        args.jobs,
        args.jobs * 8,
        args.rounds,
        r.load_average
    );
    println!(
        "  {:<11} {:<26} {:>9} {:>11} {:>10} {:>6}",
        "stage", "mode", "jobs/s", "latency ms", "cpu s/job", "util"
    );
    for f in &r.runs {
        println!(
            "  {:<11} {:<26} {:>9.2} {:>11.1} {:>10.3} {:>6.2}",
            format!("{:?}", f.stage).to_lowercase(),
            f.mode.name(),
            f.jobs_per_s,
            f.latency_ms,
            f.cpu_s_per_job,
            f.utilization
        );
    }
}
