//! WER/RTF of Whisper options over local speech: LibriVox + cards clips from pocketsphinx's
//! test data, and espeak-ng phrases (toy-like utterances). Development aid.
//!
//! cargo run --release -p teddyflow-models --example whisper_eval -- MODELS_DIR [PAD[:MIN_FRAMES] ...]
use std::path::Path;
use std::time::Instant;

use teddyflow_models::audio::resample;
use teddyflow_models::wer;
use teddyflow_models::whisper::{WhisperModel, WhisperOptions, WhisperVariant};

const DATA: &str = "/usr/share/pocketsphinx/test/data";
const PHRASES: &[&str] = &[
    "hello teddy how are you today",
    "can you tell me a story about a dragon",
    "i want to play a game with you",
    "what is your favorite color",
    "my name is emma and i am five years old",
    "do you like chocolate ice cream",
    "good night teddy see you tomorrow",
    "why is the sky blue",
];

fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let mut r = hound::WavReader::open(path).unwrap();
    let spec = r.spec();
    let pcm = r
        .samples::<i16>()
        .map(|s| s.unwrap() as f32 / 32768.0)
        .collect();
    (pcm, spec.sample_rate)
}

fn clips() -> Vec<(String, String, Vec<f32>)> {
    let mut out = vec![];
    let lv = std::fs::read_to_string(format!("{DATA}/librivox/transcription")).unwrap();
    for l in lv.lines() {
        let (w, id) = l.rsplit_once('(').unwrap();
        let id = id.trim_end_matches(')');
        let (pcm, _) = read_wav(&Path::new(DATA).join(format!("librivox/{id}.wav")));
        out.push((
            format!("lv-{}", &id[id.len() - 4..]),
            w.replace("<s>", "").replace("</s>", ""),
            pcm,
        ));
    }
    let cards = std::fs::read_to_string(format!("{DATA}/cards/cards.transcription")).unwrap();
    for l in cards.lines() {
        let (w, id) = l.rsplit_once('(').unwrap();
        let id = id.trim_end_matches(')');
        let (pcm, _) = read_wav(&Path::new(DATA).join(format!("cards/{id}.wav")));
        out.push((
            format!("cards-{id}"),
            w.replace("<s>", "").replace("</s>", ""),
            pcm,
        ));
    }
    for (i, p) in PHRASES.iter().enumerate() {
        let wav = std::env::temp_dir().join(format!("eval-espeak-{i}.wav"));
        std::process::Command::new("espeak-ng")
            .arg("-w")
            .arg(&wav)
            .arg(p)
            .status()
            .unwrap();
        let (pcm, sr) = read_wav(&wav);
        out.push((
            format!("espeak-{i}"),
            p.to_string(),
            resample(&pcm, sr, 16000),
        ));
    }
    out
}

fn main() -> anyhow::Result<()> {
    teddyflow_models::pin_rayon_threads();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = WhisperModel::load(Path::new(&args[0]), WhisperVariant::TinyEn)?;
    let clips = clips();
    model.transcribe(&vec![0.0; 16000], None)?;
    for spec in &args[1..] {
        let (pad, min) = match spec.split_once(':') {
            Some((p, m)) => (p.parse()?, m.parse()?),
            None => (spec.parse()?, 0),
        };
        let m = model.clone().with_options(WhisperOptions {
            tail_pad_frames: pad,
            min_frames: min,
        });
        let (mut groups, mut audio, mut compute) = (std::collections::BTreeMap::new(), 0.0, 0.0);
        for (id, reference, pcm) in &clips {
            let t = Instant::now();
            let tr = m.transcribe(pcm, Some("en"))?;
            compute += t.elapsed().as_secs_f64();
            audio += pcm.len() as f64 / 16000.0;
            let (e, n) = wer::word_errors(reference, &tr.text);
            let g = groups
                .entry(id.split('-').next().unwrap().to_string())
                .or_insert((0, 0));
            g.0 += e;
            g.1 += n;
            if e > 0 {
                println!(
                    "  [{spec}] {id}: {e}/{n} {:?} (T {}, lp {:.2}, enc {:.0} dec {:.0} ms)",
                    tr.text, tr.fallback_temperature, tr.avg_logprob, tr.encode_ms, tr.decode_ms
                );
            }
        }
        let summary: Vec<String> = groups
            .iter()
            .map(|(k, (e, n))| format!("{k} {:.1}% ({e}/{n})", 100.0 * *e as f64 / *n as f64))
            .collect();
        println!(
            "pad {pad} min {min}: {} | RTF {:.3}",
            summary.join(", "),
            compute / audio
        );
    }
    Ok(())
}
