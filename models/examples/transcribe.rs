//! Transcribe 16 kHz WAV files and report speed.
//!
//! cargo run --release -p teddyflow-models --example transcribe -- MODELS_DIR [--variant tiny.en|base]
//!     [--language CODE] [--pad FRAMES] [--min-frames N] WAV...

mod common;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use teddyflow_models::whisper::{WhisperModel, WhisperOptions, WhisperVariant};

struct Args {
    models_dir: PathBuf,
    variant: WhisperVariant,
    language: Option<String>,
    options: WhisperOptions,
    wavs: Vec<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let usage = "usage: transcribe MODELS_DIR [--variant tiny.en|base] [--language CODE] [--pad FRAMES] [--min-frames N] WAV...";
    let models_dir = PathBuf::from(it.next().context(usage)?);
    let mut args = Args {
        models_dir,
        variant: WhisperVariant::TinyEn,
        language: None,
        options: WhisperOptions::default(),
        wavs: vec![],
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--variant" => args.variant = it.next().context(usage)?.parse()?,
            "--language" => args.language = Some(it.next().context(usage)?),
            "--pad" => args.options.tail_pad_frames = it.next().context(usage)?.parse()?,
            "--min-frames" => args.options.min_frames = it.next().context(usage)?.parse()?,
            _ => args.wavs.push(PathBuf::from(a)),
        }
    }
    if args.wavs.is_empty() {
        bail!(usage);
    }
    Ok(args)
}

/// 16 kHz mono f32 from a WAV file (multi-channel is averaged; other rates are refused).
fn read_wav(path: &PathBuf) -> anyhow::Result<Vec<f32>> {
    let mut r =
        hound::WavReader::open(path).with_context(|| format!("opening {}", path.display()))?;
    let spec = r.spec();
    if spec.sample_rate != 16_000 {
        bail!(
            "{}: {} Hz; resample to 16 kHz first",
            path.display(),
            spec.sample_rate
        );
    }
    let raw: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.map(|s| s as f32 / scale))
                .collect::<Result<_, _>>()?
        }
    };
    let ch = spec.channels as usize;
    Ok(raw
        .chunks(ch)
        .map(|f| f.iter().sum::<f32>() / ch as f32)
        .collect())
}

fn main() -> anyhow::Result<()> {
    teddyflow_models::pin_rayon_threads();
    let args = parse_args()?;
    let t = Instant::now();
    let model = WhisperModel::load(&args.models_dir, args.variant)?.with_options(args.options);
    println!(
        "loaded {} in {:.2} s ({:?})",
        args.variant,
        t.elapsed().as_secs_f64(),
        args.options
    );
    // Warm-up (excluded from timings): first-touch page faults, thread pool start.
    model.transcribe(&vec![0.0; 16_000], None)?;
    let (mut audio_s, mut compute_s, cpu0) = (0.0, 0.0, common::cpu_s());
    for wav in &args.wavs {
        let pcm = read_wav(wav)?;
        let t = Instant::now();
        let tr = model.transcribe(&pcm, args.language.as_deref())?;
        let secs = t.elapsed().as_secs_f64();
        let dur = pcm.len() as f64 / 16_000.0;
        audio_s += dur;
        compute_s += secs;
        println!("{}: {:?}", wav.display(), tr.text);
        println!(
            "  {:.2} s audio, RTF {:.3} (mel {:.0} ms, encode {:.0} ms, decode {:.0} ms), {} tokens, avg_logprob {:.3}, lang {}, T {}",
            dur,
            secs / dur,
            tr.mel_ms,
            tr.encode_ms,
            tr.decode_ms,
            tr.tokens,
            tr.avg_logprob,
            tr.language,
            tr.fallback_temperature
        );
    }
    let cpu = common::cpu_s() - cpu0;
    println!(
        "total: {audio_s:.2} s audio, {compute_s:.2} s compute, RTF {:.3}; {cpu:.2} CPU-s ({:.3} CPU-s per audio-s)",
        compute_s / audio_s,
        cpu / audio_s
    );
    Ok(())
}
