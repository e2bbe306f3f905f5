//! Generate teddy replies for typical child utterances and report speed; optionally speak them
//! and transcribe the speech back.
//!
//! cargo run --release -p teddyflow-models --example reply -- MODELS_DIR
//!     [--languages] [--speak] [--parallel] [--as-shipped] [--voices] [--rounds N] [--max-tokens N]
//!
//! `--languages` asks the model for Spanish/French/German/Arabic replies: the evidence for
//! `reply_bank::MODEL_LANGUAGES`. `--speak` runs espeak-ng on each reply and Whisper tiny.en on
//! the speech (WER against the reply). `--parallel` runs two replies on two threads at once.
//! `--voices` compares English espeak-ng voices by Whisper's WER on teddy-like sentences.
//! `--as-shipped` keeps the Q4_1 matrices instead of re-encoding them as Q8_0 (speed comparison).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use teddyflow_models::llm::{Generated, Prompt, ReplyModel, Sampling, WeightFormat};
use teddyflow_models::whisper::{WhisperModel, WhisperVariant};
use teddyflow_models::{tts, wer};

struct Args {
    models_dir: PathBuf,
    languages: bool,
    speak: bool,
    parallel: bool,
    max_tokens: usize,
    format: WeightFormat,
    voices: bool,
    rounds: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let usage = "usage: reply MODELS_DIR [--languages] [--speak] [--parallel] [--as-shipped] [--voices] [--rounds N] [--max-tokens N]";
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        models_dir: PathBuf::from(it.next().context(usage)?),
        languages: false,
        speak: false,
        parallel: false,
        max_tokens: Sampling::default().max_tokens,
        format: WeightFormat::default(),
        voices: false,
        rounds: 2,
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--languages" => args.languages = true,
            "--speak" => args.speak = true,
            "--parallel" => args.parallel = true,
            "--as-shipped" => args.format = WeightFormat::AsShipped,
            "--voices" => args.voices = true,
            "--rounds" => args.rounds = it.next().context(usage)?.parse()?,
            "--max-tokens" => args.max_tokens = it.next().context(usage)?.parse()?,
            _ => anyhow::bail!("{usage}"),
        }
    }
    Ok(args)
}

/// Resident memory of this process in MiB (Linux).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn prompt(name: &str, emotion: &str, verdict: &str, language: &str, utterance: &str) -> Prompt {
    Prompt {
        child_name: Some(name.into()),
        age: Some(6),
        language: language.into(),
        emotion: emotion.parse().ok(),
        verdict: verdict.parse().ok(),
        history: vec![],
        utterance: utterance.into(),
    }
}

fn english_prompts() -> Vec<Prompt> {
    let mut with_history = prompt("Leo", "happy", "safe", "en", "Now I am drawing a dinosaur.");
    with_history.history = vec![(
        "I got new crayons today!".into(),
        "Wow, Leo, new crayons are so exciting! What will you draw?".into(),
    )];
    vec![
        prompt(
            "Mia",
            "happy",
            "safe",
            "en",
            "Hi Teddy! Can you say my name?",
        ),
        prompt(
            "Mia",
            "sad",
            "needs_care",
            "en",
            "My dog is sick and I feel sad.",
        ),
        prompt(
            "Sam",
            "excited",
            "safe",
            "en",
            "Guess what, I lost my first tooth today!",
        ),
        prompt("Sam", "neutral", "safe", "en", "Why is the sky blue?"),
        prompt(
            "Ava",
            "scared",
            "needs_care",
            "en",
            "I am scared of the dark at night.",
        ),
        with_history,
    ]
}

fn language_prompts() -> Vec<Prompt> {
    vec![
        prompt(
            "Lucía",
            "happy",
            "safe",
            "es",
            "¡Hola Teddy! Hoy fui al parque con mi hermano.",
        ),
        prompt(
            "Léa",
            "happy",
            "safe",
            "fr",
            "Bonjour Teddy ! Aujourd'hui j'ai joué au parc.",
        ),
        prompt(
            "Lena",
            "happy",
            "safe",
            "de",
            "Hallo Teddy! Heute war ich mit meinem Bruder im Park.",
        ),
        prompt(
            "Maryam",
            "happy",
            "safe",
            "ar",
            "مرحبا تيدي! ذهبت اليوم إلى الحديقة.",
        ),
    ]
}

/// Timings over all replies.
#[derive(Default)]
struct Stats {
    prefill_ms: Vec<f64>,
    first_ms: Vec<f64>,
    total_ms: Vec<f64>,
    decode_tok_s: Vec<f64>,
}

impl Stats {
    fn add(&mut self, g: &Generated) {
        self.prefill_ms.push(g.prefill_ms);
        self.first_ms.push(g.first_sentence_ms);
        self.total_ms.push(g.total_ms);
        let decode_s = (g.total_ms - g.prefill_ms) / 1000.0;
        self.decode_tok_s.push(g.tokens as f64 / decode_s.max(1e-9));
    }

    fn print(&mut self) {
        let rows = [
            ("prefill ms", &mut self.prefill_ms),
            ("first sentence ms", &mut self.first_ms),
            ("total ms", &mut self.total_ms),
            ("decode tok/s", &mut self.decode_tok_s),
        ];
        for (name, v) in rows {
            v.sort_by(f64::total_cmp);
            let (min, med, max) = (v[0], v[v.len() / 2], v[v.len() - 1]);
            println!(
                "{name:18} n={:2} min {min:7.1} median {med:7.1} max {max:7.1}",
                v.len()
            );
        }
    }
}

fn report(p: &Prompt, g: &Generated) {
    let decode_s = (g.total_ms - g.prefill_ms) / 1000.0;
    println!(
        "[{} {}] prompt {} tok, prefill {:.0} ms, first sentence {:.0} ms, total {:.0} ms, {} tok at {:.1} tok/s",
        p.language,
        p.emotion.map_or("-", |e| e.as_str()),
        g.prompt_tokens,
        g.prefill_ms,
        g.first_sentence_ms,
        g.total_ms,
        g.tokens,
        g.tokens as f64 / decode_s.max(1e-9)
    );
    println!("  child: {}\n  teddy: {}", p.utterance, g.text);
}

fn speak_back(whisper: &WhisperModel, p: &Prompt, g: &Generated) -> anyhow::Result<()> {
    let voice = tts::voice_for(&p.language, None);
    let style = tts::style_for(p.emotion, p.verdict);
    let t = Instant::now();
    let pcm = tts::speak(&g.text, &voice, &style, 16_000)?;
    let tts_ms = t.elapsed().as_secs_f64() * 1000.0;
    let first = tts::speak(&g.sentences[0], &voice, &style, 16_000)?;
    let hyp = whisper.transcribe(&pcm, Some("en"))?.text;
    println!(
        "  speech: {:.2} s audio in {tts_ms:.0} ms (first sentence {:.2} s); heard {hyp:?}, WER {:.2}",
        tts::duration_s(&pcm, 16_000),
        tts::duration_s(&first, 16_000),
        wer::wer(&g.text, &hyp)
    );
    Ok(())
}

fn run_parallel(model: &ReplyModel, settings: &Sampling) -> anyhow::Result<()> {
    let prompts = english_prompts();
    let t = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = prompts[..2]
            .iter()
            .map(|p| s.spawn(move || model.clone().generate(p, settings, &mut |_| {})))
            .collect();
        for h in handles {
            let g = h.join().expect("thread")?;
            println!("parallel: {} tok in {:.0} ms", g.tokens, g.total_ms);
        }
        anyhow::Ok(())
    })?;
    println!("parallel wall {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);
    Ok(())
}

/// Mean WER of Whisper tiny.en on sentences spoken by each English voice variant.
fn compare_voices(models_dir: &Path) -> anyhow::Result<()> {
    let whisper = WhisperModel::load(models_dir, WhisperVariant::TinyEn)?;
    let sentences = [
        "Mia, hello! I'm so glad to meet you.",
        "Wow, Sam, a big sandcastle! That sounds like so much fun.",
        "Cats purr when they feel happy and cozy, Ava. It is like a little cat song!",
        "Let's talk about something else, Leo. What is your favourite animal?",
        "Oh Mia, I'm right here with you. It's okay to feel that way.",
    ];
    let style = tts::SpeechStyle::default();
    for voice in [
        "en-us", "en-us+f3", "en-us+f2", "en-us+f4", "en-us+m3", "en-gb", "en-gb+f3",
    ] {
        let mut total = 0.0;
        for s in sentences {
            let pcm = tts::speak(s, voice, &style, 16_000)?;
            let hyp = whisper.transcribe(&pcm, Some("en"))?.text;
            let w = wer::wer(s, &hyp);
            if w > 0.0 {
                println!("  {voice}: {hyp:?} ({w:.2})");
            }
            total += w;
        }
        println!("{voice:10} mean WER {:.3}", total / sentences.len() as f64);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.voices {
        return compare_voices(&args.models_dir);
    }
    let rss0 = rss_mib();
    let t = Instant::now();
    let model = ReplyModel::load_with(&args.models_dir, args.format)?;
    println!(
        "load {:.0} ms, RSS +{:.0} MiB",
        t.elapsed().as_secs_f64() * 1000.0,
        rss_mib() - rss0
    );
    let settings = Sampling {
        max_tokens: args.max_tokens,
        ..Sampling::default()
    };
    let whisper = args
        .speak
        .then(|| WhisperModel::load(Path::new(&args.models_dir), WhisperVariant::TinyEn))
        .transpose()?;
    let prompts = if args.languages {
        language_prompts()
    } else {
        english_prompts()
    };
    // Later rounds repeat the prompts: more samples on a machine shared with other work.
    let mut stats = Stats::default();
    for round in 1..=args.rounds {
        for p in &prompts {
            let g = model.generate(p, &settings, &mut |_| {})?;
            if round == 1 {
                report(p, &g);
            }
            stats.add(&g);
            if let (Some(w), true, false) = (&whisper, round == 1, g.sentences.is_empty()) {
                speak_back(w, p, &g)?;
            }
        }
    }
    stats.print();
    println!(
        "RSS now {:.0} MiB (+{:.0} since start)",
        rss_mib(),
        rss_mib() - rss0
    );
    if args.parallel {
        run_parallel(&model, &settings)?;
    }
    Ok(())
}
