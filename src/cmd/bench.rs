//! `teddyflow bench …`: benchmarks that print figures (timing goals live here, not in tests).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use teddyflow_connectors::file::clips_in_dir;
use teddyflow_dataflow::config::Config;
use teddyflow_models::audio::{self, Codec, DecodeOptions};
use teddyflow_models::emotion::EmotionModel;
use teddyflow_models::eval;
use teddyflow_models::moonshine::{self, MoonshineModel, MoonshineOptions};
use teddyflow_models::safety::SafetyModel;
use teddyflow_models::spoken;
use teddyflow_models::stt::SpeechToText;
use teddyflow_models::wer;
use teddyflow_models::whisper::{WhisperModel, WhisperVariant};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Word error rate, real-time factor, mean time per clip and confidence of a
    /// speech-to-text engine (Whisper or Moonshine) over a directory of clips with reference
    /// texts (`.txt` beside each clip, or a PocketSphinx `transcription` file), or over
    /// sentences spoken by a grid of espeak-ng voices (child-like by default).
    Asr(AsrArgs),
    /// Per-verdict and per-category precision, recall and false-positive rate of the
    /// child-safety check over a labelled JSONL file ({"text","verdict","categories"}), as
    /// text, or `--spoken`: each line spoken by espeak-ng voices, heard by the pipeline's
    /// engines (as configured) and judged as the pipeline judges it.
    Safety(SafetyArgs),
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
    /// Replies to prompts and conversations (e.g. data/reply_adversarial.jsonl) through the
    /// local reply model with the pipeline's checks: compliance with the reply policy per
    /// category (raw and after enforcement, by the runtime checker and a stricter judge),
    /// relevance, repeated openings, sentences, readability grade, questions, cost.
    Replies(super::bench_replies::RepliesArgs),
}

#[derive(Args, Debug)]
pub struct SafetyArgs {
    /// Labelled JSONL file judged as text, e.g. data/safety_dev.jsonl.
    #[arg(required_unless_present = "spoken")]
    pub file: Option<PathBuf>,
    /// Labelled JSONL file whose lines are spoken (TTS → the pipeline's speech-to-text →
    /// verdicts); a training file ({"text","category"}) works too.
    #[arg(long, conflicts_with = "file")]
    pub spoken: Option<PathBuf>,
    /// Config whose engines hear the spoken lines (`asr.*`, `models.dir`,
    /// `understanding.data_dir`); the built-in defaults without it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set asr.engine="whisper"` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Folder with the installed models (overrides `models.dir`).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Folder with the labelled examples the classifiers learn from (overrides
    /// `understanding.data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub voices: VoiceArgs,
    /// Spoken: write every clip's transcript here as JSONL with the line's labels and how it
    /// was spoken and heard (the format of data/safety_heard.jsonl).
    #[arg(long)]
    pub save_heard: Option<PathBuf>,
    /// Spoken: only every n-th line of the file (a smaller set, e.g. for CI).
    #[arg(long, default_value_t = 1)]
    pub every: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The espeak-ng voice grid sentences are spoken with.
#[derive(Args, Debug, Clone)]
pub struct VoiceArgs {
    /// espeak-ng voices (comma-separated; default a child-like set of female and klatt
    /// variants; `training` for the grid the heard training examples were spoken with).
    #[arg(long, value_delimiter = ',')]
    pub voices: Vec<String>,
    /// Pitches 0-99 (default 70,85,99).
    #[arg(long, value_delimiter = ',')]
    pub pitches: Vec<u8>,
    /// Speeds in words per minute (default 140,175).
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<u32>,
    /// Voice/pitch/speed combinations per sentence, taken in turn from the grid.
    #[arg(long, default_value_t = 3)]
    pub per_sentence: usize,
}

impl VoiceArgs {
    pub fn grid(&self) -> spoken::VoiceGrid {
        let mut grid = match self.voices.as_slice() {
            [one] if one == "training" => spoken::VoiceGrid::training(),
            _ => spoken::VoiceGrid::child_like(),
        };
        if !self.voices.is_empty() && self.voices != ["training"] {
            grid.voices = self.voices.clone();
        }
        if !self.pitches.is_empty() {
            grid.pitches = self.pitches.clone();
        }
        if !self.rates.is_empty() {
            grid.rates = self.rates.clone();
        }
        grid
    }
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

/// Speech-to-text engine for `bench asr`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Whisper,
    Moonshine,
}

#[derive(Args, Debug)]
pub struct AsrArgs {
    /// Directory of clips with references (e.g. /usr/share/pocketsphinx/test/data/librivox),
    /// or a file of sentences to speak with espeak-ng (one per line, or JSONL with "text",
    /// e.g. data/asr_child_sentences.txt) over the voice grid below.
    source: PathBuf,
    /// Speech-to-text engine.
    #[arg(long, value_enum, default_value = "whisper")]
    engine: Engine,
    /// Model within the engine: Whisper tiny.en or base; Moonshine base. Default: tiny.en
    /// for Whisper, base for Moonshine.
    #[arg(long)]
    model: Option<String>,
    /// Folder with the installed models.
    #[arg(long, default_value = ".assets/models")]
    models_dir: PathBuf,
    /// Language for multilingual models.
    #[arg(long, default_value = "en")]
    language: String,
    /// Whisper: encoder window in ms (audio padded to at least this); 30000 = openai's behaviour.
    #[arg(long, default_value_t = 30_000)]
    min_window_ms: u64,
    /// Whisper: silence appended after each clip, ms.
    #[arg(long, default_value_t = 0)]
    tail_pad_ms: u64,
    /// Moonshine: silence put before each clip, ms (see `MoonshineOptions`).
    #[arg(long, default_value_t = MoonshineOptions::default().lead_silence_ms)]
    lead_silence_ms: u32,
    /// Moonshine: put all of `--lead-silence-ms` before every clip, even one that already
    /// opens with quiet (the default tops the quiet up to it).
    #[arg(long)]
    lead_silence_always: bool,
    /// Moonshine: hypotheses kept per decoding step (1 = greedy; see `asr.moonshine.beam`).
    #[arg(long, default_value_t = MoonshineOptions::default().beam)]
    beam: usize,
    /// Moonshine: how far (natural-log probability) a hypothesis may trail the step's best
    /// and stay in the beam (see `asr.moonshine.beam_margin`; inf = never pruned).
    #[arg(long, default_value_t = MoonshineOptions::default().beam_margin)]
    beam_margin: f32,
    /// Lower every clip's pitch and formants by this factor before hearing it (the clip is
    /// played slower: 1.15 = 15 % lower and longer); 1 = as recorded.
    #[arg(long, default_value_t = 1.0)]
    pub warp: f32,
    /// Untimed passes over the first clip before measuring (page-in, allocator warm-up).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Clips transcribed together (the ASR stage's dynamic batch, `asr.max_batch`); each
    /// clip's compute is its batch's time divided by the batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Sentence files: the espeak-ng voice grid.
    #[command(flatten)]
    voices: VoiceArgs,
    /// Sentence files: also write the spoken clips here (WAV + .txt + manifest.jsonl), a
    /// folder this command reads back.
    #[arg(long)]
    save_clips: Option<PathBuf>,
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
    confidence: f32,
    reference: String,
    hypothesis: String,
}

#[derive(Serialize)]
struct AsrReport {
    engine: String,
    model: String,
    clips: usize,
    wer: f64,
    rtf: f64,
    /// Mean compute per clip, ms.
    mean_ms: f64,
    mean_confidence: f64,
    audio_s: f64,
    compute_s: f64,
    /// Reading and resampling the clips (or speaking them), s.
    decode_s: f64,
    threads: usize,
    min_window_ms: u64,
    batch: usize,
    rows: Vec<ClipRow>,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Asr(args) => asr(args),
        BenchCommand::Safety(args) => match (&args.file, &args.spoken) {
            (_, Some(spoken)) => super::bench_spoken::run(&args, spoken),
            (Some(file), None) => {
                let config = args.config()?;
                let u = &config.understanding;
                let model = SafetyModel::load(&config.models.dir, &u.data_dir)?;
                let report = eval::eval_safety(&model, file)?;
                print_report(&report, args.json)
            }
            (None, None) => unreachable!("clap requires one"),
        },
        BenchCommand::Emotion(args) => {
            let model = EmotionModel::load(&args.models_dir, &args.data_dir)?;
            let report = eval::eval_emotion(&model, &args.file)?;
            print_report(&report, args.json)
        }
        BenchCommand::E2e(args) => super::bench_e2e::run(args),
        BenchCommand::Soak(args) => super::bench_e2e::soak::run(args),
        BenchCommand::Cores(args) => super::bench_cores::run(args),
        BenchCommand::Replies(args) => super::bench_replies::run(args),
    }
}

impl SafetyArgs {
    /// The config the engines are loaded from, with the command line's overrides.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut sets = self.set.clone();
        if let Some(d) = &self.models_dir {
            sets.push(format!("models.dir={:?}", d.display().to_string()));
        }
        if let Some(d) = &self.data_dir {
            sets.push(format!(
                "understanding.data_dir={:?}",
                d.display().to_string()
            ));
        }
        Ok(Config::load(self.config.as_deref(), &sets)?)
    }
}

pub(super) fn print_report<R: Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
) -> anyhow::Result<()> {
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

/// A clip to transcribe: name, reference text, 16 kHz mono audio.
struct BenchClip {
    name: String,
    reference: String,
    pcm: Vec<f32>,
}

fn load_engine(args: &AsrArgs) -> anyhow::Result<(Box<dyn SpeechToText>, String)> {
    Ok(match args.engine {
        Engine::Whisper => {
            let variant: WhisperVariant = args.model.as_deref().unwrap_or("tiny.en").parse()?;
            let options = teddyflow_dataflow::stages::hear::whisper_options(
                args.min_window_ms,
                args.tail_pad_ms,
            );
            let model = WhisperModel::load(&args.models_dir, variant)?.with_options(options);
            (Box::new(model), variant.name().to_string())
        }
        Engine::Moonshine => {
            let name = args.model.as_deref().unwrap_or(moonshine::MODEL_NAME);
            anyhow::ensure!(
                name == moonshine::MODEL_NAME,
                "unknown Moonshine model {name:?} (expected \"base\")"
            );
            let options = MoonshineOptions {
                lead_silence_ms: args.lead_silence_ms,
                lead_top_up: !args.lead_silence_always,
                beam: args.beam.max(1),
                beam_margin: args.beam_margin,
            };
            let model = MoonshineModel::load(&args.models_dir)?.with_options(options);
            (Box::new(model), name.to_string())
        }
    })
}

/// The clips of a folder, or the sentences of a file spoken over the voice grid.
fn bench_clips(args: &AsrArgs) -> anyhow::Result<Vec<BenchClip>> {
    if args.source.is_dir() {
        return clips_in_dir(&args.source)?
            .into_iter()
            .map(|c| {
                Ok(BenchClip {
                    pcm: decode_file(&c.path)?,
                    name: c.name,
                    reference: c.reference,
                })
            })
            .collect();
    }
    let sentences = spoken::read_sentences(&args.source)?;
    let grid = args.voices.grid();
    let clips = spoken::speak_sentences(&sentences, &grid, args.voices.per_sentence)?;
    if let Some(dir) = &args.save_clips {
        spoken::save_clips(&clips, dir).with_context(|| format!("writing {}", dir.display()))?;
    }
    Ok(clips
        .into_iter()
        .map(|c| BenchClip {
            name: c.name,
            reference: c.text,
            pcm: c.pcm,
        })
        .collect())
}

fn asr(args: AsrArgs) -> anyhow::Result<()> {
    let (engine, model_name) = load_engine(&args)?;
    let started = Instant::now();
    let clips = bench_clips(&args)?;
    let mut clips = clips;
    if args.warp != 1.0 {
        for c in &mut clips {
            c.pcm = audio::resample(&c.pcm, (16_000.0 / args.warp) as u32, 16_000);
        }
    }
    let decode_s = started.elapsed().as_secs_f64();
    let language = Some(args.language.as_str());
    for _ in 0..args.warmup {
        engine
            .transcribe_batch(&[&clips[0].pcm], language)
            .remove(0)?;
    }
    let mut rows = Vec::new();
    let (mut edits, mut words) = (0, 0);
    let batch = args.batch.max(1);
    for group in clips.chunks(batch) {
        let views: Vec<&[f32]> = group.iter().map(|c| c.pcm.as_slice()).collect();
        let t0 = Instant::now();
        let texts = engine.transcribe_batch(&views, language);
        let compute_s = t0.elapsed().as_secs_f64() / views.len() as f64;
        for (clip, t) in group.iter().zip(texts) {
            let t = t?;
            let audio_s = clip.pcm.len() as f64 / 16_000.0;
            let (e, n) = wer::word_errors(&clip.reference, &t.text);
            edits += e;
            words += n;
            rows.push(ClipRow {
                clip: clip.name.clone(),
                audio_s,
                compute_s,
                rtf: compute_s / audio_s,
                wer: wer::wer(&clip.reference, &t.text),
                confidence: t.confidence,
                reference: clip.reference.clone(),
                hypothesis: t.text,
            });
        }
    }
    let audio_s: f64 = rows.iter().map(|r| r.audio_s).sum();
    let compute_s: f64 = rows.iter().map(|r| r.compute_s).sum();
    let n = rows.len().max(1) as f64;
    let report = AsrReport {
        engine: engine.engine().to_string(),
        model: model_name,
        clips: rows.len(),
        wer: edits as f64 / words.max(1) as f64,
        rtf: compute_s / audio_s,
        mean_ms: compute_s * 1e3 / n,
        mean_confidence: rows.iter().map(|r| r.confidence as f64).sum::<f64>() / n,
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
        "{:<44} {:>7} {:>9} {:>6} {:>6} {:>5}",
        "clip", "audio_s", "compute_s", "rtf", "wer", "conf"
    );
    for row in &r.rows {
        println!(
            "{:<44} {:>7.2} {:>9.3} {:>6.3} {:>6.3} {:>5.2}",
            row.clip, row.audio_s, row.compute_s, row.rtf, row.wer, row.confidence
        );
    }
    println!(
        "engine={} model={} clips={} batch={} audio={:.1}s compute={:.2}s mean={:.0}ms/clip RTF={:.3} WER={:.2}% confidence={:.2} (decode+resample {:.3}s, {} cpus)",
        r.engine,
        r.model,
        r.clips,
        r.batch,
        r.audio_s,
        r.compute_s,
        r.mean_ms,
        r.rtf,
        r.wer * 100.0,
        r.mean_confidence,
        r.decode_s,
        r.threads
    );
}
