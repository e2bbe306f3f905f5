//! Continuous batching of replies against one reply at a time, back to back in one run.
//!
//! cargo run --release -p teddyflow-models --example reply_batch -- [MODELS_DIR]
//!     [--sizes 1,2,4,8] [--max-tokens N] [--prefill-chunk N] [--stagger-ms MS] [--rounds N]
//!     [--engines own|candle|both]
//!
//! For each size N, N replies for N different conversations (greedy, no prepared history)
//! are answered one at a time (`ReplyModel::generate`, as one reply thread does today) and
//! in one `BatchGenerator`. They all arrive at once, or one every `--stagger-ms`. Latencies
//! count from each reply's arrival, so a reply answered one at a time waits for the ones
//! before it. Printed per mode: wall and CPU seconds (all threads, from /proc), tokens
//! generated per wall second, first sentence and whole reply (mean, max), and for the batch
//! its longest forward pass (how long a speaking reply waits for its next token while
//! another's prompt runs).
//!
//! `--engines own|candle|both` instead times the project's forward and/or candle's
//! `quantized_llama` on the same prompt, one sequence (prefill and decode tokens/s).
//!
//! The thread count candle uses comes from RAYON_NUM_THREADS (set to the visible cores when
//! unset, as the binary does); RAYON_NUM_THREADS=1 runs everything on the calling thread.

#[path = "common/mod.rs"]
mod common;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use teddyflow_models::llm::llama::{Input, KvCache, Llama};
use teddyflow_models::llm::{
    prompt, weights, BatchGenerator, BatchSettings, Generated, Prompt, ReplyModel, ReplySink,
    Request, Sampling, WeightFormat, MODEL_DIR, MODEL_FILE,
};

struct Args {
    sizes: Vec<usize>,
    max_tokens: usize,
    prefill_chunk: usize,
    rounds: usize,
    stagger_ms: u64,
    engines: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let usage = "usage: reply_batch [MODELS_DIR] [--sizes 1,2,4,8] [--max-tokens N] [--prefill-chunk N] [--rounds N] [--stagger-ms MS] [--engines own|candle|both]";
    let mut args = Args {
        sizes: vec![1, 2, 4, 8],
        max_tokens: Sampling::default().max_tokens,
        prefill_chunk: BatchSettings::default().prefill_chunk,
        rounds: 1,
        stagger_ms: 0,
        engines: None,
    };
    let mut it = std::env::args().skip(1).peekable();
    if it.peek().is_some_and(|a| !a.starts_with("--")) {
        it.next(); // the models dir, read by common::models_dir
    }
    while let Some(a) = it.next() {
        let mut value = || it.next().context(usage);
        match a.as_str() {
            "--sizes" => {
                args.sizes = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--max-tokens" => args.max_tokens = value()?.parse()?,
            "--prefill-chunk" => args.prefill_chunk = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse()?,
            "--stagger-ms" => args.stagger_ms = value()?.parse()?,
            "--engines" => args.engines = Some(value()?),
            _ => anyhow::bail!("{usage}"),
        }
    }
    Ok(args)
}

/// Eight conversations, two with a turn of history.
fn burst() -> Vec<Prompt> {
    let p = |name: &str, emotion: &str, utterance: &str| Prompt {
        child_name: Some(name.into()),
        age: Some(6),
        language: "en".into(),
        emotion: Some(emotion.parse().expect("an emotion label")),
        verdict: Some(teddyflow_models::safety::Verdict::Safe),
        history: vec![],
        utterance: utterance.into(),
    };
    let mut leo = p("Leo", "happy", "Now I am drawing a dinosaur.");
    leo.history = vec![(
        "I got new crayons today!".into(),
        "Wow, Leo, new crayons are so exciting! What will you draw?".into(),
    )];
    let mut zoe = p("Zoe", "neutral", "Can we play a game?");
    zoe.history = vec![(
        "I am bored.".into(),
        "Oh Zoe, let's find something fun to do!".into(),
    )];
    vec![
        p("Mia", "happy", "Hi Teddy! Can you say my name?"),
        p("Sam", "happy", "Guess what, I lost my first tooth today!"),
        leo,
        p("Ava", "scared", "I am scared of the dark at night."),
        p("Noah", "neutral", "Why is the sky blue?"),
        zoe,
        p("Ella", "sad", "My dog is sick and I feel sad."),
        p("Finn", "happy", "I built a big sandcastle at the beach."),
    ]
}

/// When a reply's first sentence and its end came, from the child's utterance (its arrival).
#[derive(Default)]
struct Timeline {
    first_ms: Option<f64>,
    done_ms: f64,
    tokens: usize,
}

struct Recorder {
    arrival: Instant,
    timeline: Arc<Mutex<Timeline>>,
}

impl ReplySink for Recorder {
    fn sentence(&mut self, _: &str) -> bool {
        let t = ms(self.arrival);
        self.timeline.lock().unwrap().first_ms.get_or_insert(t);
        true
    }

    fn finished(&mut self, result: anyhow::Result<Generated>) {
        let mut tl = self.timeline.lock().unwrap();
        tl.done_ms = ms(self.arrival);
        tl.tokens = result.map(|g| g.tokens).unwrap_or(0);
    }
}

struct Figures {
    wall_s: f64,
    cpu_s: f64,
    replies: Vec<Timeline>,
    /// Forward passes (batched): the longest (how long a speaking reply waits for its next
    /// token), wall and CPU time of this thread.
    passes: Option<Passes>,
}

#[derive(Default)]
struct Passes {
    count: usize,
    longest_ms: f64,
    longest_cpu_ms: f64,
    cpu_ms: f64,
}

impl Figures {
    fn print(&self, n: usize, mode: &str) {
        let tokens: usize = self.replies.iter().map(|r| r.tokens).sum();
        let firsts: Vec<f64> = self
            .replies
            .iter()
            .map(|r| r.first_ms.unwrap_or(r.done_ms))
            .collect();
        let dones: Vec<f64> = self.replies.iter().map(|r| r.done_ms).collect();
        let pass = self.passes.as_ref().map_or(String::new(), |p| {
            format!(
                "\n   {} passes, mean {:.0} ms CPU; longest {:.0} ms CPU, {:.0} ms wall",
                p.count,
                p.cpu_ms / p.count.max(1) as f64,
                p.longest_cpu_ms,
                p.longest_ms
            )
        });
        println!(
            "{n:>2} {mode:<10} wall {:6.2} s  cpu {:6.2} s  {tokens:4} tok {:5.1} tok/s  first sentence mean {:5.0} max {:5.0} ms  reply mean {:5.0} max {:5.0} ms{pass}",
            self.wall_s,
            self.cpu_s,
            tokens as f64 / self.wall_s,
            mean(&firsts),
            max(&firsts),
            mean(&dones),
            max(&dones),
        );
    }
}

/// Reply `i` arrives `i * stagger` after the start.
fn arrivals(start: Instant, n: usize, stagger: Duration) -> Vec<Instant> {
    (0..n).map(|i| start + stagger * i as u32).collect()
}

/// One reply at a time, in arrival order, as one reply thread works today.
fn one_at_a_time(
    model: &ReplyModel,
    prompts: &[Prompt],
    s: &Sampling,
    stagger: Duration,
) -> anyhow::Result<Figures> {
    let (start, cpu0) = (Instant::now(), common::cpu_s());
    let mut replies = Vec::new();
    for (p, arrival) in prompts.iter().zip(arrivals(start, prompts.len(), stagger)) {
        std::thread::sleep(arrival.saturating_duration_since(Instant::now()));
        let mut tl = Timeline::default();
        let g = model.generate(p, s, &mut |_| {
            tl.first_ms.get_or_insert(ms(arrival));
        })?;
        tl.done_ms = ms(arrival);
        tl.tokens = g.tokens;
        replies.push(tl);
    }
    Ok(Figures {
        wall_s: start.elapsed().as_secs_f64(),
        cpu_s: common::cpu_s() - cpu0,
        replies,
        passes: None,
    })
}

/// All replies in one batch generator, each joining when it arrives.
fn batched(
    model: &ReplyModel,
    prompts: &[Prompt],
    s: &Sampling,
    settings: BatchSettings,
    stagger: Duration,
) -> Figures {
    let (start, cpu0) = (Instant::now(), common::cpu_s());
    let mut batch = BatchGenerator::new(model.clone(), settings);
    let mut due = prompts
        .iter()
        .zip(arrivals(start, prompts.len(), stagger))
        .peekable();
    let mut timelines = Vec::new();
    let mut passes = Passes::default();
    loop {
        while let Some((p, arrival)) = due.next_if(|(_, t)| *t <= Instant::now()) {
            let timeline = Arc::new(Mutex::new(Timeline::default()));
            let sink = Recorder {
                arrival,
                timeline: timeline.clone(),
            };
            batch.submit(Request::new(None, p.clone(), s.clone(), Box::new(sink)));
            timelines.push(timeline);
        }
        if batch.is_idle() {
            match due.peek() {
                Some((_, t)) => std::thread::sleep(t.saturating_duration_since(Instant::now())),
                None => break,
            }
            continue;
        }
        let (t, cpu) = (Instant::now(), thread_cpu_ms());
        batch.step();
        let cpu = thread_cpu_ms() - cpu;
        passes.count += 1;
        passes.cpu_ms += cpu;
        passes.longest_cpu_ms = passes.longest_cpu_ms.max(cpu);
        passes.longest_ms = passes.longest_ms.max(ms(t));
    }
    let replies = timelines
        .into_iter()
        .map(|t| std::mem::take(&mut *t.lock().unwrap()))
        .collect();
    Figures {
        wall_s: start.elapsed().as_secs_f64(),
        cpu_s: common::cpu_s() - cpu0,
        replies,
        passes: Some(passes),
    }
}

/// Prefill and decode speed of one sequence: the project's forward and candle's.
fn compare_engines(
    models_dir: &Path,
    model: &ReplyModel,
    decode: usize,
    which: &str,
) -> anyhow::Result<()> {
    let text = format!("{}{}", prompt::preamble(), prompt::current(&burst()[0]));
    let ids = model
        .tokenizer()
        .encode(text, false)
        .map_err(anyhow::Error::msg)?
        .get_ids()
        .to_vec();
    let path = models_dir.join(MODEL_DIR).join(MODEL_FILE);
    println!(
        "one sequence, {} prompt + {decode} decoded tokens:",
        ids.len()
    );
    if matches!(which, "own" | "both") {
        let (prefill, dec) = own_engine(&path, &ids, decode)?;
        print_engine("own forward", ids.len(), decode, prefill, dec);
    }
    if matches!(which, "candle" | "both") {
        let (prefill, dec) = candle_engine(&path, &ids, decode)?;
        print_engine("candle quantized_llama", ids.len(), decode, prefill, dec);
    }
    Ok(())
}

fn print_engine(name: &str, prompt: usize, decode: usize, prefill_s: f64, decode_s: f64) {
    println!(
        "  {name:<24} prefill {:6.1} tok/s  decode {:5.1} tok/s",
        prompt as f64 / prefill_s,
        decode as f64 / decode_s
    );
}

fn read_gguf(path: &Path) -> anyhow::Result<(gguf_file::Content, BufReader<File>)> {
    let mut reader = BufReader::new(File::open(path)?);
    let ct = gguf_file::Content::read(&mut reader)?;
    Ok((ct, reader))
}

/// Seconds to run the prompt and to decode `decode` greedy tokens after it.
fn own_engine(path: &Path, ids: &[u32], decode: usize) -> anyhow::Result<(f64, f64)> {
    let device = Device::Cpu;
    let (ct, mut reader) = read_gguf(path)?;
    let tensors = weights::tensors(&ct, &mut reader, &device, WeightFormat::default())?;
    let own = Llama::new(&ct, tensors, &device)?;
    let t = Instant::now();
    let mut cache = KvCache::default();
    let mut input = [Input {
        cache: &mut cache,
        tokens: ids,
        logits: true,
    }];
    let mut logits = own.forward(&mut input)?.context("logits")?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..decode {
        let next = logits.get(0)?.argmax(0)?.to_scalar::<u32>()?;
        let mut input = [Input {
            cache: &mut cache,
            tokens: &[next],
            logits: true,
        }];
        logits = own.forward(&mut input)?.context("logits")?;
    }
    Ok((prefill, t.elapsed().as_secs_f64()))
}

fn candle_engine(path: &Path, ids: &[u32], decode: usize) -> anyhow::Result<(f64, f64)> {
    let device = Device::Cpu;
    let (ct, mut reader) = read_gguf(path)?;
    let mut model = weights::model_weights(ct, &mut reader, &device, WeightFormat::default())?;
    let t = Instant::now();
    let x = Tensor::new(ids, &device)?.unsqueeze(0)?;
    let mut logits = model.forward(&x, 0)?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for step in 0..decode {
        let next = logits.get(0)?.argmax(0)?.to_scalar::<u32>()?;
        let x = Tensor::new(&[next], &device)?.unsqueeze(0)?;
        logits = model.forward(&x, ids.len() + step)?;
    }
    Ok((prefill, t.elapsed().as_secs_f64()))
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    teddyflow_models::pin_rayon_threads();
    let models_dir = common::models_dir();
    let models_dir = if models_dir.starts_with("--") {
        ".assets/models".to_string()
    } else {
        models_dir
    };
    let models_dir = Path::new(&models_dir);
    let model = ReplyModel::load(models_dir)?;
    println!(
        "RAYON_NUM_THREADS={} (candle's CPU threads); {} cores visible; shared machine: wall figures are noisy, compare rows of one run",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if let Some(which) = &args.engines {
        return compare_engines(models_dir, &model, args.max_tokens, which);
    }
    let sampling = Sampling {
        max_tokens: args.max_tokens,
        ..Sampling::default()
    };
    let settings = BatchSettings {
        prefill_chunk: args.prefill_chunk,
        ..BatchSettings::default()
    };
    let prompts = burst();
    let stagger = Duration::from_millis(args.stagger_ms);
    for round in 1..=args.rounds {
        println!(
            "round {round}: greedy, max {} tokens, prefill chunk {}, one reply every {} ms",
            args.max_tokens, args.prefill_chunk, args.stagger_ms
        );
        for &n in &args.sizes {
            let burst: Vec<Prompt> = prompts.iter().cycle().take(n).cloned().collect();
            let settings = BatchSettings {
                max_sequences: n.max(1),
                ..settings
            };
            one_at_a_time(&model, &burst, &sampling, stagger)?.print(n, "one-by-one");
            batched(&model, &burst, &sampling, settings, stagger).print(n, "batched");
        }
    }
    Ok(())
}

/// CPU time of the calling thread (Linux schedstat, nanoseconds), else 0. With
/// RAYON_NUM_THREADS=1 a pass runs entirely on it, so this is its cost whatever else runs.
fn thread_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns: f64 = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    ns / 1e6
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}
