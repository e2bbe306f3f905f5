//! The same prompts answered by the local SmolLM2 and by an OpenAI-compatible server,
//! back to back: first-sentence latency and whole-reply time per backend.
//!
//! .assets/venv-llm-server/bin/python scripts/llm_server.py --port 8080 \
//!     --model .assets/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 &
//! cargo run --release -p teddyflow-models --example reply_server -- MODELS_DIR \
//!     http://127.0.0.1:8080/v1 [--rounds N]
//!
//! Each round asks every prompt of both backends, alternating, so load from elsewhere on
//! the machine falls on both alike. Greedy decoding, 60 tokens at most, as shipped.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use teddyflow_models::llm::{Generated, Prompt, Query, ReplyModel, Sampling};
use teddyflow_models::openai::{OpenAiEngine, OpenAiSettings};
use teddyflow_models::reply::ReplyEngine;

fn prompt(name: &str, emotion: &str, utterance: &str) -> Prompt {
    Prompt {
        child_name: Some(name.into()),
        age: Some(6),
        language: "en".into(),
        emotion: emotion.parse().ok(),
        verdict: "safe".parse().ok(),
        history: vec![],
        utterance: utterance.into(),
    }
}

/// Typical things a child says to a toy (not from the labelled sets).
fn prompts() -> Vec<Prompt> {
    let mut later = prompt("Leo", "happy", "Now I am drawing a dinosaur.");
    later.history = vec![(
        "I got new crayons today!".into(),
        "Wow, Leo, new crayons are so exciting! What will you draw?".into(),
    )];
    vec![
        prompt("Mia", "happy", "Hi Teddy! Can you say my name?"),
        prompt("Sam", "happy", "Guess what, I lost my first tooth today!"),
        prompt("Sam", "neutral", "Why is the sky blue?"),
        prompt("Ava", "sad", "My fish is sick and I feel sad."),
        later,
    ]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn main() -> anyhow::Result<()> {
    let usage = "usage: reply_server MODELS_DIR BASE_URL [--rounds N]";
    let mut it = std::env::args().skip(1);
    let models = PathBuf::from(it.next().context(usage)?);
    let base_url = it.next().context(usage)?;
    let rounds: usize = match (it.next().as_deref(), it.next()) {
        (Some("--rounds"), Some(n)) => n.parse()?,
        (None, _) => 3,
        _ => anyhow::bail!("{usage}"),
    };
    let local: Arc<dyn ReplyEngine> = Arc::new(ReplyModel::load(&models)?);
    let settings = OpenAiSettings {
        base_url,
        timeout_ms: 20_000,
        reply_timeout_ms: 60_000,
        ..OpenAiSettings::default()
    };
    // No fallback: a failed request must show as a failure here, not as a local reply.
    let server = OpenAiEngine::new(settings, None)?;
    let engines: [&dyn ReplyEngine; 2] = [local.as_ref(), &server];
    let sampling = Sampling::default();
    let mut figures: [(Vec<f64>, Vec<f64>); 2] = Default::default();
    let mut failures = 0;
    for round in 0..rounds {
        for p in prompts() {
            for (i, engine) in engines.iter().enumerate() {
                let query = Query {
                    session: None,
                    prompt: &p,
                    sampling: &sampling,
                };
                let g: Generated = engine.generate(query, &mut |_| {})?;
                if g.provenance.fallback.is_some() {
                    failures += 1;
                    eprintln!("{}: failed ({:?})", engine.name(), g.provenance.fallback);
                    continue;
                }
                if round == 0 {
                    println!("{:>6}: {:?} → {:?}", engine.name(), p.utterance, g.text);
                }
                figures[i].0.push(g.first_sentence_ms);
                figures[i].1.push(g.total_ms);
            }
        }
    }
    println!("\nbackend  replies  first sentence p50 / p95 ms   whole reply p50 / p95 ms");
    for (engine, (first, total)) in engines.iter().zip(figures) {
        let n = first.len();
        anyhow::ensure!(n > 0, "{}: no reply", engine.name());
        println!(
            "{:>7}  {n:>7}  {:>10.0} / {:<10.0}        {:>8.0} / {:<8.0}",
            engine.name(),
            percentile(first.clone(), 0.5),
            percentile(first, 0.95),
            percentile(total.clone(), 0.5),
            percentile(total, 0.95),
        );
    }
    println!("server failures: {failures}");
    Ok(())
}
