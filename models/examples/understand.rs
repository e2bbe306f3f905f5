//! Print emotion and safety for texts given on the command line.
//!
//! cargo run --release -p teddyflow-models --example understand -- [--models DIR] [--data DIR] [--json] TEXT...

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use teddyflow_models::embed::Embedder;
use teddyflow_models::emotion::EmotionModel;
use teddyflow_models::safety::{redact, SafetyModel};

struct Args {
    models: PathBuf,
    data: PathBuf,
    json: bool,
    texts: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = Args {
        models: root.join(".assets/models"),
        data: root.join("data"),
        json: false,
        texts: vec![],
    };
    let usage = "usage: understand [--models DIR] [--data DIR] [--json] TEXT...";
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--models" => args.models = PathBuf::from(it.next().context(usage)?),
            "--data" => args.data = PathBuf::from(it.next().context(usage)?),
            "--json" => args.json = true,
            _ => args.texts.push(a),
        }
    }
    anyhow::ensure!(!args.texts.is_empty(), usage);
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let t = Instant::now();
    let embedder = Embedder::load(&args.models)?;
    let emotion = EmotionModel::with_embedder(embedder.clone(), &args.data)?;
    let safety = SafetyModel::with_embedder(embedder.clone(), &args.models, &args.data)?;
    eprintln!("loaded in {:.2} s", t.elapsed().as_secs_f32());
    for text in &args.texts {
        let t = Instant::now();
        // One embedding serves both models.
        let embedding = embedder.embed_one(text)?;
        let verdict = safety.check_embedded(text, &embedding);
        let feeling = emotion.classify_embedded(&embedding, &Default::default());
        let ms = t.elapsed().as_secs_f32() * 1000.0;
        let (redacted, changed) = redact(text);
        if args.json {
            let out = serde_json::json!({
                "text": text,
                "redacted": changed.then_some(&redacted),
                "emotion": {"label": feeling.label, "scores": feeling.scores},
                "safety": verdict,
                "ms": ms,
            });
            println!("{out}");
            continue;
        }
        println!("{text}");
        let scores: Vec<String> = feeling
            .scores
            .iter()
            .map(|(l, p)| format!("{l} {p:.2}"))
            .collect();
        println!("  emotion: {} ({})", feeling.label, scores.join(", "));
        println!(
            "  safety:  {} {:?} score {:.2}   ({ms:.0} ms)",
            verdict.verdict, verdict.categories, verdict.score
        );
        let shown: Vec<String> = verdict
            .signals
            .iter()
            .filter(|(_, x)| **x >= 0.05)
            .map(|(k, x)| format!("{k}={x:.2}"))
            .collect();
        println!("  signals: {}", shown.join(" "));
        if changed {
            println!("  redacted: {redacted}");
        }
    }
    Ok(())
}
