//! `teddyflow bench replies FILE`: every prompt (and every turn of every conversation) of a
//! JSONL file through the local reply model the way the pipeline answers it — input safety
//! check (unsafe ⇒ curated redirect), emotion, SmolLM2 with the child's profile, mood and
//! the last `answering.memory_turns` turns, each generated sentence judged by the reply
//! policy and the first violation replaced by a safe line — and prints:
//!
//! - compliance per category, for the raw model output and after enforcement, by two
//!   judges: the runtime policy checker, and the stricter evaluation-only judge
//!   (`policy::judge`, which also knows what each prompt probes);
//! - quality: relevance (MiniLM cosine of utterance and reply), openings repeated within a
//!   conversation and greetings after its first turn, sentences per reply, Flesch–Kincaid
//!   grade, the share ending with a question;
//! - cost: generation time per reply, policy check time per sentence.
//!
//! File rows: `{"id", "category", "text"}` or `{"id", "category", "turns": [...],
//! "probe_from": N}` (a conversation that probes `category` from its N-th turn, 1-based);
//! `category` is a policy category or `benign`; `"ci": true` marks the CI subset.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use teddyflow_dataflow::config::Config;
use teddyflow_dataflow::operators::stable_hash;
use teddyflow_models::embed::{cosine, Embedder};
use teddyflow_models::emotion::{EmotionModel, Label};
use teddyflow_models::eval::read_jsonl;
use teddyflow_models::llm::{prompt, Prompt, ReplyModel, Sampling};
use teddyflow_models::policy::{judge, AdversarialRow, PolicyCategory, PolicyContext, ReplyPolicy};
use teddyflow_models::reply_bank;
use teddyflow_models::reply_quality as quality;
use teddyflow_models::safety::{SafetyModel, Verdict};

#[derive(Args, Debug)]
pub struct RepliesArgs {
    /// JSONL file of prompts and conversations, e.g. data/reply_adversarial.jsonl
    file: PathBuf,
    /// TOML config (sampling, memory and model paths come from `[answering]`, `[asr]`,
    /// `[understanding]`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set answering.repeat_penalty=1.3` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Only the first N rows (prompts or conversations).
    #[arg(long)]
    limit: Option<usize>,
    /// Only rows marked `"ci": true`.
    #[arg(long)]
    ci: bool,
    /// Only rows of this category (a policy category or `benign`).
    #[arg(long)]
    category: Option<String>,
    /// The child's name in the profile (empty: no name).
    #[arg(long, default_value = "Mia")]
    name: String,
    /// The child's age in the profile.
    #[arg(long, default_value_t = 6)]
    age: u8,
    /// Print every turn, not only those the strict judge fails after enforcement.
    #[arg(long)]
    rows: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

/// Where the words the child heard came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Origin {
    /// The model's sentences, all within policy.
    Model,
    /// Some sentences, then a safe line instead of the first that broke the policy.
    Replaced,
    /// The input safety check said unsafe: a curated redirect, no generation.
    Redirect,
    /// The model said nothing usable: a curated reply.
    Bank,
}

/// One answered turn.
#[derive(Debug, Clone, Serialize)]
struct Row {
    id: String,
    turn: usize,
    /// The category this turn probes (`benign` when none).
    probe: String,
    utterance: String,
    input_verdict: Verdict,
    emotion: Label,
    raw: String,
    /// Runtime checker on every raw sentence.
    raw_policy: Vec<PolicyCategory>,
    raw_strict: Vec<PolicyCategory>,
    heard: String,
    origin: Origin,
    heard_policy: Vec<PolicyCategory>,
    heard_strict: Vec<PolicyCategory>,
    relevance: f32,
    grade: Option<f64>,
    sentences: usize,
    question: bool,
    opening: String,
    repeated_opening: bool,
    greets_again: bool,
    generate_ms: f64,
    first_sentence_ms: f64,
    /// Policy check per raw sentence, embedding included.
    policy_ms: Vec<f64>,
}

/// Compliance of one category's turns.
#[derive(Debug, Default, Clone, Serialize)]
struct Compliance {
    turns: usize,
    input_redirected: usize,
    replaced: usize,
    raw_ok_policy: f64,
    raw_ok_strict: f64,
    heard_ok_policy: f64,
    heard_ok_strict: f64,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Quality {
    replies: usize,
    relevance: f64,
    grade: f64,
    sentences: f64,
    ends_with_question: f64,
    /// Turns after a conversation's first whose opening (3 words) an earlier turn had.
    repeated_openings: f64,
    /// Turns after a conversation's first that greet again ("nice to meet you").
    greets_again: f64,
    /// Share of single-prompt replies that open with the most common opening.
    top_opening_share: f64,
    top_opening: String,
}

#[derive(Debug, Serialize)]
struct Cost {
    generate_ms_mean: f64,
    first_sentence_ms_mean: f64,
    policy_ms_mean: f64,
    policy_ms_p95: f64,
    sentences_checked: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    items: usize,
    turns: usize,
    sampling: String,
    compliance: BTreeMap<String, Compliance>,
    overall: Compliance,
    /// Drift conversations (≥ 2 turns, not benign) with a violation in any turn.
    conversations_violated_raw_strict: usize,
    conversations_violated_heard_strict: usize,
    conversations: usize,
    violations_raw_policy: BTreeMap<String, usize>,
    quality_all: Quality,
    quality_benign: Quality,
    cost: Cost,
    #[serde(skip)]
    print_rows: bool,
    rows: Vec<Row>,
}

struct Models {
    embedder: Embedder,
    safety: SafetyModel,
    emotion: EmotionModel,
    policy: ReplyPolicy,
    llm: ReplyModel,
}

pub fn run(args: RepliesArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), &args.set)?;
    let items = select(&args)?;
    let models = load(&config)?;
    let a = &config.answering;
    let sampling = Sampling {
        temperature: a.temperature,
        top_p: (a.top_p < 1.0).then_some(a.top_p),
        seed: a.seed,
        max_tokens: a.max_tokens,
        repeat_penalty: a.repeat_penalty,
    };
    let name = Some(args.name.trim().to_string()).filter(|n| !n.is_empty());
    let total: usize = items.iter().map(|i| i.turns().len()).sum();
    let mut rows = Vec::new();
    let started = Instant::now();
    for item in &items {
        let mut chat = Chat {
            models: &models,
            sampling: &sampling,
            name: name.clone(),
            age: args.age,
            memory_turns: a.memory_turns,
            seed: a.seed,
        };
        rows.extend(chat.run(item)?);
        let done = rows.len();
        let eta = started.elapsed().as_secs_f64() / done as f64 * (total - done) as f64;
        eprint!("\r[{done}/{total}] {:<16} eta {eta:.0} s   ", item.id);
    }
    eprintln!();
    let report = Report::from_rows(&args, &items, rows, format!("{sampling:?}"));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn select(args: &RepliesArgs) -> anyhow::Result<Vec<AdversarialRow>> {
    let mut items: Vec<AdversarialRow> = read_jsonl(&args.file)?;
    for item in &items {
        anyhow::ensure!(
            !item.turns().is_empty(),
            "{}: row {} has neither text nor turns",
            args.file.display(),
            item.id
        );
        item.probe(0)?; // an unknown category is an error, not a silent "benign"
    }
    items.retain(|i| !args.ci || i.ci);
    if let Some(c) = &args.category {
        items.retain(|i| &i.category == c);
    }
    if let Some(n) = args.limit {
        items.truncate(n);
    }
    anyhow::ensure!(!items.is_empty(), "no rows selected");
    Ok(items)
}

fn load(config: &Config) -> anyhow::Result<Models> {
    let t = Instant::now();
    let models_dir = &config.models.dir;
    let data_dir = &config.understanding.data_dir;
    let embedder = Embedder::load(models_dir)?;
    let safety = SafetyModel::with_embedder(embedder.clone(), models_dir, data_dir)?;
    let emotion = EmotionModel::with_embedder(embedder.clone(), data_dir)?;
    let policy = ReplyPolicy::with_safety(safety.clone(), data_dir)?;
    let llm = ReplyModel::load(models_dir)?;
    eprintln!("models loaded in {:.1} s", t.elapsed().as_secs_f64());
    Ok(Models {
        embedder,
        safety,
        emotion,
        policy,
        llm,
    })
}

/// One conversation with one child, answered as the pipeline answers it.
struct Chat<'a> {
    models: &'a Models,
    sampling: &'a Sampling,
    name: Option<String>,
    age: u8,
    memory_turns: usize,
    seed: u64,
}

impl Chat<'_> {
    fn run(&mut self, item: &AdversarialRow) -> anyhow::Result<Vec<Row>> {
        let mut history: Vec<(String, String)> = Vec::new();
        let mut rows: Vec<Row> = Vec::new();
        for (i, utterance) in item.turns().iter().enumerate() {
            let probe = item.probe(i)?;
            let mut row = self.turn(item, i, utterance, probe, &history)?;
            if i > 0 {
                row.repeated_opening = rows.iter().any(|r| r.opening == row.opening);
                row.greets_again = quality::greets(&row.heard);
            }
            // Unsafe turns are not remembered (`stages/answer/mod.rs`, `remember`).
            if row.input_verdict != Verdict::Unsafe {
                history.push((utterance.clone(), row.heard.clone()));
                let keep = history.len().saturating_sub(self.memory_turns);
                history.drain(..keep);
            }
            rows.push(row);
        }
        Ok(rows)
    }

    fn turn(
        &self,
        item: &AdversarialRow,
        i: usize,
        utterance: &str,
        probe: Option<PolicyCategory>,
        history: &[(String, String)],
    ) -> anyhow::Result<Row> {
        let m = self.models;
        let e = m.embedder.embed_one(utterance)?;
        let safety = m.safety.check_embedded(utterance, &e);
        let emotion = m.emotion.classify_embedded(&e, &Default::default()).label;
        let verdict = safety.verdict;
        let name = self.name.as_deref();
        let seed = self.seed ^ stable_hash(&format!("{}/{i}", item.id));
        let prompt = Prompt {
            child_name: self.name.clone(),
            age: Some(self.age),
            language: "en".into(),
            emotion: Some(emotion),
            verdict: Some(verdict),
            history: history.to_vec(),
            utterance: utterance.to_string(),
        };
        let t = Instant::now();
        let g = m.llm.generate(&prompt, self.sampling, &mut |_| {})?;
        let generate_ms = t.elapsed().as_secs_f64() * 1e3;
        let ctx = m.policy.context_embedded(utterance, Some(&e), history);
        let mut policy_ms = Vec::new();
        let verdicts: Vec<_> = g
            .sentences
            .iter()
            .map(|s| {
                let t = Instant::now();
                let v = m.policy.check_in(&ctx, s);
                policy_ms.push(t.elapsed().as_secs_f64() * 1e3);
                v
            })
            .collect();
        let mut raw_policy: Vec<PolicyCategory> =
            verdicts.iter().flat_map(|v| v.category).collect();
        raw_policy.sort();
        raw_policy.dedup();
        let kind = reply_bank::kind_for(
            Some(emotion),
            Some(verdict),
            &safety.categories,
            history.is_empty(),
        );
        let (heard, origin) = if verdict == Verdict::Unsafe {
            let text = m.policy.reply_to_unsafe(&ctx, kind, "en", name, seed);
            (text, Origin::Redirect)
        } else {
            self.enforce(&prompt, &g.sentences, &verdicts, kind, seed)
        };
        let heard_policy = self.judge_heard(&ctx, &heard);
        let reply_only = strip_name(&heard, name);
        let pair = m.embedder.embed(&[utterance, reply_only.as_str()])?;
        Ok(Row {
            id: item.id.clone(),
            turn: i + 1,
            probe: probe.map_or("benign".into(), |c| c.as_str().into()),
            utterance: utterance.to_string(),
            input_verdict: verdict,
            emotion,
            raw_strict: judge::judge(probe, &g.text),
            raw: g.text,
            raw_policy,
            heard_strict: judge::judge(probe, &heard),
            relevance: cosine(&pair[0], &pair[1]),
            grade: quality::flesch_kincaid_grade(&heard),
            sentences: quality::sentence_count(&heard),
            question: quality::ends_with_question(&heard),
            opening: quality::opening(&heard, name, 3),
            repeated_opening: false,
            greets_again: false,
            heard,
            origin,
            heard_policy,
            generate_ms,
            first_sentence_ms: g.first_sentence_ms,
            policy_ms,
        })
    }

    /// What the pipeline speaks: the sentences before the first violation, less a stale
    /// opening ([`quality::FreshStart`]), then the violation's safe line (or the curated
    /// redirect); the curated reply when the model said nothing (`dataflow/src/stages/answer/reply.rs`, `engine_reply`).
    fn enforce(
        &self,
        prompt: &Prompt,
        sentences: &[String],
        verdicts: &[teddyflow_models::policy::PolicyVerdict],
        kind: reply_bank::ReplyKind,
        seed: u64,
    ) -> (String, Origin) {
        let name = self.name.as_deref();
        let opening = prompt::reply_opening(prompt);
        let bad = verdicts.iter().position(|v| !v.ok);
        let earlier = prompt.history.iter().map(|(_, teddy)| teddy.as_str());
        let mut fresh = quality::FreshStart::new(earlier, name, opening.as_deref());
        let mut spoken: Vec<String> = sentences[..bad.unwrap_or(sentences.len())]
            .iter()
            .filter_map(|s| fresh.admit(s))
            .collect();
        if bad.is_none() {
            spoken.extend(fresh.finish());
        }
        let nothing_spoken = spoken.is_empty();
        let mut said: Vec<String> = match &opening {
            Some(o) if nothing_spoken && bad.is_none() => vec![o.clone()],
            _ => spoken,
        };
        let origin = match bad {
            Some(b) => {
                // The line carries the name when no sentence did ("Mia, that is …").
                let line_name = if nothing_spoken { name } else { None };
                let line = verdicts[b]
                    .safe_line(line_name)
                    .unwrap_or_else(|| reply_bank::fallback_reply("en", name, seed));
                said.push(line);
                Origin::Replaced
            }
            None if nothing_spoken => {
                said.push(
                    reply_bank::bank_reply("en", kind, name, seed)
                        .unwrap_or_else(|| reply_bank::fallback_reply("en", name, seed)),
                );
                Origin::Bank
            }
            None => Origin::Model,
        };
        (said.join(" "), origin)
    }

    /// The runtime checker on what the child heard, sentence by sentence.
    fn judge_heard(&self, ctx: &PolicyContext, heard: &str) -> Vec<PolicyCategory> {
        let mut out: Vec<PolicyCategory> = heard
            .split_inclusive(['.', '!', '?'])
            .map(str::trim)
            .filter(|s| s.chars().any(char::is_alphabetic))
            .filter_map(|s| self.models.policy.check_in(ctx, s).category)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The reply without a leading "Mia," (relevance is about what follows the name).
fn strip_name(text: &str, name: Option<&str>) -> String {
    let Some(n) = name else {
        return text.to_string();
    };
    text.strip_prefix(n)
        .map(|r| r.trim_start_matches([',', '!', '.', ' ']))
        .unwrap_or(text)
        .to_string()
}

fn share(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 / of as f64
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl Compliance {
    fn of(rows: &[&Row]) -> Self {
        let n = rows.len();
        let ok = |f: &dyn Fn(&Row) -> bool| share(rows.iter().filter(|r| f(r)).count(), n);
        Self {
            turns: n,
            input_redirected: rows.iter().filter(|r| r.origin == Origin::Redirect).count(),
            replaced: rows.iter().filter(|r| r.origin == Origin::Replaced).count(),
            raw_ok_policy: ok(&|r| r.raw_policy.is_empty()),
            raw_ok_strict: ok(&|r| r.raw_strict.is_empty()),
            heard_ok_policy: ok(&|r| r.heard_policy.is_empty()),
            heard_ok_strict: ok(&|r| r.heard_strict.is_empty()),
        }
    }
}

impl Quality {
    fn of(rows: &[&Row], singles: &[&Row]) -> Self {
        let later: Vec<&&Row> = rows.iter().filter(|r| r.turn > 1).collect();
        let mut openings: BTreeMap<&str, usize> = BTreeMap::new();
        for r in singles {
            *openings.entry(r.opening.as_str()).or_default() += 1;
        }
        let top = openings.iter().max_by_key(|(_, n)| **n);
        Self {
            replies: rows.len(),
            relevance: mean(rows.iter().map(|r| f64::from(r.relevance))),
            grade: mean(rows.iter().filter_map(|r| r.grade)),
            sentences: mean(rows.iter().map(|r| r.sentences as f64)),
            ends_with_question: share(rows.iter().filter(|r| r.question).count(), rows.len()),
            repeated_openings: share(
                later.iter().filter(|r| r.repeated_opening).count(),
                later.len(),
            ),
            greets_again: share(later.iter().filter(|r| r.greets_again).count(), later.len()),
            top_opening_share: top.map_or(0.0, |(_, n)| share(*n, singles.len())),
            top_opening: top.map_or(String::new(), |(o, _)| o.to_string()),
        }
    }
}

impl Report {
    fn from_rows(
        args: &RepliesArgs,
        items: &[AdversarialRow],
        rows: Vec<Row>,
        sampling: String,
    ) -> Self {
        let mut by: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
        for r in &rows {
            by.entry(r.probe.clone()).or_default().push(r);
        }
        let compliance = by
            .iter()
            .map(|(c, rs)| (c.clone(), Compliance::of(rs)))
            .collect();
        let all: Vec<&Row> = rows.iter().collect();
        let single_ids: Vec<&str> = items
            .iter()
            .filter(|i| i.text.is_some())
            .map(|i| i.id.as_str())
            .collect();
        let singles: Vec<&Row> = all
            .iter()
            .copied()
            .filter(|r| single_ids.contains(&r.id.as_str()))
            .collect();
        let benign: Vec<&Row> = all
            .iter()
            .copied()
            .filter(|r| r.probe == "benign")
            .collect();
        let benign_singles: Vec<&Row> = singles
            .iter()
            .copied()
            .filter(|r| r.probe == "benign")
            .collect();
        let drifts: Vec<&AdversarialRow> = items
            .iter()
            .filter(|i| i.text.is_none() && i.category != "benign")
            .collect();
        let violated = |f: &dyn Fn(&Row) -> bool| {
            drifts
                .iter()
                .filter(|i| rows.iter().any(|r| r.id == i.id && f(r)))
                .count()
        };
        let mut violations_raw_policy = BTreeMap::new();
        for c in rows.iter().flat_map(|r| &r.raw_policy) {
            *violations_raw_policy
                .entry(c.as_str().to_string())
                .or_default() += 1;
        }
        let mut policy_ms: Vec<f64> = rows.iter().flat_map(|r| r.policy_ms.clone()).collect();
        policy_ms.sort_by(f64::total_cmp);
        let p95 = policy_ms
            .get((policy_ms.len() as f64 * 0.95) as usize)
            .or(policy_ms.last())
            .copied()
            .unwrap_or(0.0);
        let cost = Cost {
            generate_ms_mean: mean(rows.iter().map(|r| r.generate_ms)),
            first_sentence_ms_mean: mean(rows.iter().map(|r| r.first_sentence_ms)),
            policy_ms_mean: mean(policy_ms.iter().copied()),
            policy_ms_p95: p95,
            sentences_checked: policy_ms.len(),
        };
        Self {
            file: args.file.display().to_string(),
            items: items.len(),
            turns: rows.len(),
            sampling,
            overall: Compliance::of(&all),
            compliance,
            conversations_violated_raw_strict: violated(&|r| !r.raw_strict.is_empty()),
            conversations_violated_heard_strict: violated(&|r| !r.heard_strict.is_empty()),
            conversations: drifts.len(),
            violations_raw_policy,
            quality_all: Quality::of(&all, &singles),
            quality_benign: Quality::of(&benign, &benign_singles),
            cost,
            print_rows: args.rows,
            rows,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} rows, {} turns; {}",
            self.file, self.items, self.turns, self.sampling
        )?;
        writeln!(
            f,
            "\ncompliant replies (share of turns), raw model output → heard after enforcement"
        )?;
        writeln!(
            f,
            "{:<18} {:>5} {:>9} {:>8} {:>10} {:>10} {:>11} {:>11}",
            "category",
            "turns",
            "redirect",
            "replaced",
            "raw:policy",
            "raw:strict",
            "heard:policy",
            "heard:strict"
        )?;
        let line = |f: &mut fmt::Formatter<'_>, name: &str, c: &Compliance| {
            writeln!(
                f,
                "{:<18} {:>5} {:>9} {:>8} {:>9.1}% {:>9.1}% {:>10.1}% {:>10.1}%",
                name,
                c.turns,
                c.input_redirected,
                c.replaced,
                100.0 * c.raw_ok_policy,
                100.0 * c.raw_ok_strict,
                100.0 * c.heard_ok_policy,
                100.0 * c.heard_ok_strict
            )
        };
        for (name, c) in &self.compliance {
            line(f, name, c)?;
        }
        line(f, "all", &self.overall)?;
        writeln!(
            f,
            "drift conversations with a violation (strict judge): raw {}/{}, heard {}/{}",
            self.conversations_violated_raw_strict,
            self.conversations,
            self.conversations_violated_heard_strict,
            self.conversations
        )?;
        writeln!(
            f,
            "raw violations found by the runtime checker: {:?}",
            self.violations_raw_policy
        )?;
        writeln!(f, "\nquality of what the child heard")?;
        writeln!(
            f,
            "{:<8} {:>7} {:>9} {:>6} {:>9} {:>9} {:>11} {:>13} {:>10}",
            "set",
            "replies",
            "relevance",
            "grade",
            "sentences",
            "question",
            "rep.opening",
            "greets again",
            "top open"
        )?;
        for (name, q) in [("all", &self.quality_all), ("benign", &self.quality_benign)] {
            writeln!(
                f,
                "{:<8} {:>7} {:>9.3} {:>6.2} {:>9.2} {:>8.1}% {:>10.1}% {:>12.1}% {:>9.1}%  ({:?})",
                name,
                q.replies,
                q.relevance,
                q.grade,
                q.sentences,
                100.0 * q.ends_with_question,
                100.0 * q.repeated_openings,
                100.0 * q.greets_again,
                100.0 * q.top_opening_share,
                q.top_opening
            )?;
        }
        let c = &self.cost;
        writeln!(
            f,
            "\ncost: generation {:.0} ms per reply (first sentence {:.0} ms); policy check {:.1} ms per sentence mean, {:.1} ms p95, embedding included ({} sentences)",
            c.generate_ms_mean, c.first_sentence_ms_mean, c.policy_ms_mean, c.policy_ms_p95, c.sentences_checked
        )?;
        let shown: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| self.print_rows || !r.heard_strict.is_empty())
            .collect();
        if !shown.is_empty() {
            writeln!(
                f,
                "\n{} (strict judge's categories after the reply):",
                if self.print_rows {
                    "every turn"
                } else {
                    "turns the strict judge fails after enforcement"
                }
            )?;
        }
        for r in shown {
            writeln!(
                f,
                "- {}#{} [{}] {:?}\n    raw:   {:?} policy={:?} strict={:?}\n    heard: {:?} ({:?}) strict={:?}",
                r.id, r.turn, r.probe, r.utterance, r.raw, r.raw_policy, r.raw_strict, r.heard, r.origin, r.heard_strict
            )?;
        }
        Ok(())
    }
}
