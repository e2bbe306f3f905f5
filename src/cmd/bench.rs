//! `teddyflow bench …`: benchmarks that print figures (timing goals live here, not in tests).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use teddyflow_connectors::file::clips_in_dir;
use teddyflow_models::audio::{self, Codec, DecodeOptions};
use teddyflow_models::emotion::EmotionModel;
use teddyflow_models::eval;
use teddyflow_models::safety::SafetyModel;
use teddyflow_models::wer;
use teddyflow_models::whisper::{WhisperModel, WhisperVariant};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Word error rate and real-time factor of Whisper over a directory of clips with
    /// reference texts (`.txt` beside each clip, or a PocketSphinx `transcription` file).
    Asr(AsrArgs),
    /// Per-verdict and per-category precision, recall and false-positive rate of the
    /// child-safety check over a labelled JSONL file ({"text","verdict","categories"}).
    Safety(LabelledArgs),
    /// Accuracy and per-label precision/recall of the emotion classifier over a labelled
    /// JSONL file ({"text","label"}).
    Emotion(LabelledArgs),
    /// End to end: a simulated fleet through the real broker against `teddyflow run`
    /// processes started by the bench; latency percentiles, throughput, per-stage time,
    /// engine overhead, CPU and peak RSS per process, and scaling between worker counts.
    E2e(super::bench_e2e::E2eArgs),
    /// Hours of mixed valid and hostile input at a steady rate against a real processor:
    /// answered, dead-lettered and lost counts, in-flight, RSS and lag printed over time;
    /// fails if a valid utterance is lost or a bad record is not dead-lettered once.
    Soak(super::bench_e2e::soak::SoakArgs),
    /// Per model stage: intra-op threads (one utterance on k cores) against inter-op (k
    /// stage threads, one core each) on the same jobs; jobs/s, latency, CPU per job.
    Cores(super::bench_cores::CoresArgs),
}

#[derive(Args, Debug)]
pub struct LabelledArgs {
    /// JSONL file, e.g. data/safety_dev.jsonl or data/emotion_dev.jsonl
    file: PathBuf,
    /// Folder with the installed models.
    #[arg(long, default_value = ".assets/models")]
    models_dir: PathBuf,
    /// Folder with the labelled examples the classifiers learn from.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct AsrArgs {
    /// Directory of clips, e.g. /usr/share/pocketsphinx/test/data/librivox
    dir: PathBuf,
    /// Whisper variant: tiny.en or base.
    #[arg(long, default_value = "tiny.en")]
    model: String,
    /// Folder with the installed models.
    #[arg(long, default_value = ".assets/models")]
    models_dir: PathBuf,
    /// Language for multilingual models.
    #[arg(long, default_value = "en")]
    language: String,
    /// Encoder window in ms (audio padded to at least this); 30000 = openai's behaviour.
    #[arg(long, default_value_t = 30_000)]
    min_window_ms: u64,
    /// Silence appended after each clip, ms.
    #[arg(long, default_value_t = 0)]
    tail_pad_ms: u64,
    /// Untimed passes over the first clip before measuring (page-in, allocator warm-up).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Clips transcribed together (the ASR stage's dynamic batch, `asr.max_batch`); each
    /// clip's compute is its batch's time divided by the batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ClipRow {
    clip: String,
    audio_s: f64,
    compute_s: f64,
    rtf: f64,
    wer: f64,
    reference: String,
    hypothesis: String,
}

#[derive(Serialize)]
struct AsrReport {
    model: String,
    clips: usize,
    wer: f64,
    rtf: f64,
    audio_s: f64,
    compute_s: f64,
    decode_s: f64,
    threads: usize,
    min_window_ms: u64,
    batch: usize,
    rows: Vec<ClipRow>,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Asr(args) => asr(args),
        BenchCommand::Safety(args) => {
            let model = SafetyModel::load(&args.models_dir, &args.data_dir)?;
            let report = eval::eval_safety(&model, &args.file)?;
            print_report(&report, args.json)
        }
        BenchCommand::Emotion(args) => {
            let model = EmotionModel::load(&args.models_dir, &args.data_dir)?;
            let report = eval::eval_emotion(&model, &args.file)?;
            print_report(&report, args.json)
        }
        BenchCommand::E2e(args) => super::bench_e2e::run(args),
        BenchCommand::Soak(args) => super::bench_e2e::soak::run(args),
        BenchCommand::Cores(args) => super::bench_cores::run(args),
    }
}

fn print_report<R: Serialize + std::fmt::Display>(report: &R, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn decode_file(path: &Path) -> anyhow::Result<Vec<f32>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let codec: Codec = ext
        .parse()
        .with_context(|| format!("unsupported clip {}", path.display()))?;
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    let mut opts = DecodeOptions::new(codec);
    opts.max_seconds = 3600.0;
    Ok(audio::decode(&bytes, &opts)?.samples)
}

fn asr(args: AsrArgs) -> anyhow::Result<()> {
    let variant: WhisperVariant = args.model.parse()?;
    let options =
        teddyflow_dataflow::stages::hear::whisper_options(args.min_window_ms, args.tail_pad_ms);
    let model = WhisperModel::load(&args.models_dir, variant)?.with_options(options);
    let clips = clips_in_dir(&args.dir)?;
    let mut audio = Vec::new();
    let started = Instant::now();
    for clip in &clips {
        audio.push(decode_file(&clip.path)?);
    }
    let decode_s = started.elapsed().as_secs_f64();
    for _ in 0..args.warmup {
        model.transcribe(&audio[0], Some(&args.language))?;
    }
    let mut rows = Vec::new();
    let (mut edits, mut words) = (0, 0);
    let batch = args.batch.max(1);
    for (clips, pcms) in clips.chunks(batch).zip(audio.chunks(batch)) {
        let views: Vec<&[f32]> = pcms.iter().map(Vec::as_slice).collect();
        let t0 = Instant::now();
        let texts = model.transcribe_batch(&views, Some(&args.language));
        let compute_s = t0.elapsed().as_secs_f64() / views.len() as f64;
        for ((clip, pcm), t) in clips.iter().zip(pcms).zip(texts) {
            let text = t?.text;
            let audio_s = pcm.len() as f64 / 16_000.0;
            let (e, n) = wer::word_errors(&clip.reference, &text);
            edits += e;
            words += n;
            rows.push(ClipRow {
                clip: clip.name.clone(),
                audio_s,
                compute_s,
                rtf: compute_s / audio_s,
                wer: wer::wer(&clip.reference, &text),
                reference: clip.reference.clone(),
                hypothesis: text,
            });
        }
    }
    let audio_s: f64 = rows.iter().map(|r| r.audio_s).sum();
    let compute_s: f64 = rows.iter().map(|r| r.compute_s).sum();
    let report = AsrReport {
        model: args.model.clone(),
        clips: rows.len(),
        wer: edits as f64 / words.max(1) as f64,
        rtf: compute_s / audio_s,
        audio_s,
        compute_s,
        decode_s,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        min_window_ms: args.min_window_ms,
        batch,
        rows,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &AsrReport) {
    println!(
        "{:<44} {:>7} {:>9} {:>6} {:>6}",
        "clip", "audio_s", "compute_s", "rtf", "wer"
    );
    for row in &r.rows {
        println!(
            "{:<44} {:>7.2} {:>9.3} {:>6.3} {:>6.3}",
            row.clip, row.audio_s, row.compute_s, row.rtf, row.wer
        );
    }
    println!(
        "model={} clips={} batch={} audio={:.1}s compute={:.2}s RTF={:.3} WER={:.2}% (decode+resample {:.3}s, {} cpus)",
        r.model,
        r.clips,
        r.batch,
        r.audio_s,
        r.compute_s,
        r.rtf,
        r.wer * 100.0,
        r.decode_s,
        r.threads
    );
}
