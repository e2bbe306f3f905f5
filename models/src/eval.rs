//! Labelled data files and the evaluation of the emotion and safety models on them
//! (`teddyflow bench safety|emotion FILE`): per-class precision, recall and false-positive
//! rate, a confusion matrix and the misses, as a table (`Display`) or JSON (`Serialize`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::emotion::EmotionModel;
pub use crate::jsonl::{read_jsonl, DataError};
use crate::safety::{verdict_of, SafetyModel, Verdict, CATEGORIES};

/// Precision, recall and false-positive rate of one class, one-vs-rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClassStats {
    /// Items whose gold label is this class.
    pub support: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    /// Items whose gold label is not this class.
    pub negatives: usize,
    pub precision: f32,
    pub recall: f32,
    pub false_positive_rate: f32,
}

impl ClassStats {
    fn from_pairs(pairs: impl Iterator<Item = (bool, bool)>) -> Self {
        let mut s = Self::default();
        for (gold, pred) in pairs {
            s.support += usize::from(gold);
            s.negatives += usize::from(!gold);
            s.true_positives += usize::from(gold && pred);
            s.false_positives += usize::from(!gold && pred);
        }
        let predicted = s.true_positives + s.false_positives;
        s.precision = ratio(s.true_positives, predicted);
        s.recall = ratio(s.true_positives, s.support);
        s.false_positive_rate = ratio(s.false_positives, s.negatives);
        s
    }
}

/// 1.0 for 0/0: nothing to find and nothing found is not a failure.
fn ratio(a: usize, b: usize) -> f32 {
    if b == 0 {
        1.0
    } else {
        a as f32 / b as f32
    }
}

// ---------------------------------------------------------------------------------------
// Safety

/// One labelled utterance. Accepts `verdict` (or `label`) and `categories` (a list, or a
/// single `category`), with common spellings normalised ("needs care", "self-harm"). Without
/// a verdict (a training file: `{"text","category"}`) the categories imply it.
#[derive(Debug, Clone, Deserialize)]
pub struct SafetyCase {
    pub text: String,
    #[serde(alias = "label", default)]
    pub verdict: String,
    #[serde(default, alias = "category", deserialize_with = "one_or_many")]
    pub categories: Vec<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
        None(()),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) if s.is_empty() => vec![],
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
        OneOrMany::None(()) => vec![],
    })
}

fn normalise_label(s: &str) -> String {
    s.trim().to_lowercase().replace(['-', ' '], "_")
}

/// Category spellings other label sets use, mapped onto ours.
fn normalise_category(s: &str) -> String {
    let n = normalise_label(s);
    let mapped = match n.as_str() {
        "selfharm" | "suicide" | "self_injury" => "self_harm",
        "violence" | "abuse_or_violence" | "violence_against_child" | "physical_abuse" => "abuse",
        "sexual_content" | "sex" | "grooming" => "sexual",
        "personal_information" | "pii" | "personal_information_disclosure" | "privacy" => {
            "personal_info"
        }
        "dangerous" | "dangerous_activities" | "danger" => "dangerous_activity",
        "swearing" | "profane" | "swear" => "profanity",
        "bully" | "bullied" => "bullying",
        "sadness" | "loneliness" | "emotional_distress" => "distress",
        other => other,
    };
    mapped.to_string()
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: line with text {text:?} has unknown verdict {verdict:?}")]
pub struct BadVerdict {
    path: PathBuf,
    text: String,
    verdict: String,
}

/// One wrong verdict, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct SafetyMiss {
    pub text: String,
    pub expected: Verdict,
    pub expected_categories: Vec<String>,
    pub got: Verdict,
    pub got_categories: Vec<String>,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SafetyReport {
    pub file: String,
    pub utterances: usize,
    /// Unsafe + needs_care detected as either (anything but safe), over all of them.
    pub flagged_recall: f32,
    /// Safe utterances given any other verdict, over all safe ones.
    pub safe_false_positive_rate: f32,
    /// Exact verdict matches, over all utterances.
    pub verdict_accuracy: f32,
    /// One-vs-rest per verdict.
    pub verdicts: BTreeMap<String, ClassStats>,
    /// One-vs-rest per category (an utterance may carry several).
    pub categories: BTreeMap<String, ClassStats>,
    /// gold verdict → predicted verdict → count.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
    pub misses: Vec<SafetyMiss>,
    /// Mean time per check (embedding included), ms.
    pub mean_ms: f32,
}

/// Run the model on every line of a labelled JSONL file.
pub fn eval_safety(model: &SafetyModel, path: &Path) -> anyhow::Result<SafetyReport> {
    let cases: Vec<SafetyCase> = read_jsonl(path)?;
    let start = std::time::Instant::now();
    let got: Vec<_> = cases.iter().map(|c| model.check(&c.text)).collect();
    let mean_ms = start.elapsed().as_secs_f32() * 1000.0 / cases.len().max(1) as f32;
    safety_report(&path.display().to_string(), &cases, &got, mean_ms)
}

/// The gold verdicts of a labelled file (checked: an unknown verdict is an error).
pub fn gold_verdicts(cases: &[SafetyCase], path: &Path) -> Result<Vec<Verdict>, BadVerdict> {
    cases.iter().map(|c| gold_verdict(c, path)).collect()
}

/// The report on verdicts `got` for labelled `cases` (one each, in order), however they were
/// reached (text, or what the engines heard when the lines were spoken).
pub fn safety_report(
    file: &str,
    cases: &[SafetyCase],
    got: &[crate::safety::SafetyVerdict],
    mean_ms: f32,
) -> anyhow::Result<SafetyReport> {
    anyhow::ensure!(cases.len() == got.len(), "one verdict per case");
    let path = Path::new(file);
    let gold = gold_verdicts(cases, path)?;
    let gold_cats: Vec<Vec<String>> = cases
        .iter()
        .map(|c| c.categories.iter().map(|s| normalise_category(s)).collect())
        .collect();
    let pairs = || gold.iter().zip(got).map(|(g, p)| (*g, p.verdict));
    let flagged =
        ClassStats::from_pairs(pairs().map(|(g, p)| (g != Verdict::Safe, p != Verdict::Safe)));
    let verdicts = [Verdict::Unsafe, Verdict::NeedsCare, Verdict::Safe]
        .iter()
        .map(|v| {
            let s = ClassStats::from_pairs(pairs().map(|(g, p)| (g == *v, p == *v)));
            (v.as_str().to_string(), s)
        })
        .collect();
    let categories = CATEGORIES
        .iter()
        .map(|(c, _)| {
            let s = ClassStats::from_pairs(gold_cats.iter().zip(got).map(|(g, p)| {
                (
                    g.iter().any(|x| x == c),
                    p.categories.iter().any(|x| x == c),
                )
            }));
            (c.to_string(), s)
        })
        .collect();
    let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (g, p) in pairs() {
        *confusion
            .entry(g.as_str().into())
            .or_default()
            .entry(p.as_str().into())
            .or_default() += 1;
    }
    let misses = cases
        .iter()
        .zip(&gold)
        .zip(gold_cats.iter().zip(got))
        .filter(|((_, g), (_, p))| **g != p.verdict)
        .map(|((c, g), (gc, p))| SafetyMiss {
            text: c.text.clone(),
            expected: *g,
            expected_categories: gc.clone(),
            got: p.verdict,
            got_categories: p.categories.clone(),
            score: p.score,
        })
        .collect();
    let exact = pairs().filter(|(g, p)| g == p).count();
    Ok(SafetyReport {
        file: file.to_string(),
        utterances: cases.len(),
        flagged_recall: flagged.recall,
        safe_false_positive_rate: flagged.false_positive_rate,
        verdict_accuracy: ratio(exact, cases.len()),
        verdicts,
        categories,
        confusion,
        misses,
        mean_ms,
    })
}

fn gold_verdict(c: &SafetyCase, path: &Path) -> Result<Verdict, BadVerdict> {
    if c.verdict.trim().is_empty() {
        let implied = c
            .categories
            .iter()
            .map(|s| verdict_of(&normalise_category(s)));
        return Ok(implied.max().unwrap_or(Verdict::Safe));
    }
    normalise_label(&c.verdict).parse().map_err(|_| BadVerdict {
        path: path.to_path_buf(),
        text: c.text.clone(),
        verdict: c.verdict.clone(),
    })
}

fn stats_table(
    f: &mut fmt::Formatter<'_>,
    title: &str,
    rows: &BTreeMap<String, ClassStats>,
) -> fmt::Result {
    writeln!(
        f,
        "{title:<20} {:>7} {:>9} {:>7} {:>6}",
        "support", "precision", "recall", "FPR"
    )?;
    for (name, s) in rows {
        writeln!(
            f,
            "{name:<20} {:>7} {:>8.1}% {:>6.1}% {:>5.1}%",
            s.support,
            s.precision * 100.0,
            s.recall * 100.0,
            s.false_positive_rate * 100.0
        )?;
    }
    Ok(())
}

impl fmt::Display for SafetyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "safety: {} ({} utterances, {:.1} ms each)",
            self.file, self.utterances, self.mean_ms
        )?;
        writeln!(
            f,
            "unsafe + needs_care recall {:.1}%, false positives on safe {:.1}%, exact verdict {:.1}%",
            self.flagged_recall * 100.0,
            self.safe_false_positive_rate * 100.0,
            self.verdict_accuracy * 100.0
        )?;
        writeln!(f)?;
        stats_table(f, "verdict", &self.verdicts)?;
        writeln!(f)?;
        stats_table(f, "category", &self.categories)?;
        writeln!(f)?;
        writeln!(f, "confusion (rows: expected, columns: got)")?;
        let names = ["safe", "needs_care", "unsafe"];
        writeln!(
            f,
            "{:<12} {:>10} {:>10} {:>10}",
            "", names[0], names[1], names[2]
        )?;
        for g in names {
            let row = self.confusion.get(g);
            let n = |p: &str| row.and_then(|r| r.get(p)).copied().unwrap_or(0);
            writeln!(
                f,
                "{g:<12} {:>10} {:>10} {:>10}",
                n(names[0]),
                n(names[1]),
                n(names[2])
            )?;
        }
        if !self.misses.is_empty() {
            writeln!(f)?;
            writeln!(f, "wrong verdicts:")?;
            for m in &self.misses {
                writeln!(
                    f,
                    "  {} {:?} -> {} {:?} ({:.2}): {}",
                    m.expected, m.expected_categories, m.got, m.got_categories, m.score, m.text
                )?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Emotion

#[derive(Debug, Clone, Deserialize)]
pub struct EmotionCase {
    pub text: String,
    #[serde(alias = "emotion")]
    pub label: String,
}

/// Label spellings other sets use, mapped onto ours; `curious` is `neutral` here.
pub fn normalise_emotion(s: &str) -> String {
    let n = normalise_label(s);
    let mapped = match n.as_str() {
        "curious" | "calm" | "curiosity" | "none" | "neutral_curious" => "neutral",
        "joy" | "joyful" | "excited" | "happiness" | "glad" => "happy",
        "sadness" | "unhappy" | "upset" => "sad",
        "anger" | "mad" | "frustrated" | "annoyed" => "angry",
        "fear" | "afraid" | "fearful" | "frightened" | "anxious" | "worried" | "nervous" => {
            "scared"
        }
        other => other,
    };
    mapped.to_string()
}

#[derive(Debug, Clone, Serialize)]
pub struct EmotionMiss {
    pub text: String,
    pub expected: String,
    pub got: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmotionReport {
    pub file: String,
    pub utterances: usize,
    pub accuracy: f32,
    pub labels: BTreeMap<String, ClassStats>,
    /// gold label → predicted label → count.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
    pub misses: Vec<EmotionMiss>,
    pub mean_ms: f32,
}

/// Text-only emotion on every line of a labelled JSONL file (`text`, `label`).
pub fn eval_emotion(model: &EmotionModel, path: &Path) -> anyhow::Result<EmotionReport> {
    let cases: Vec<EmotionCase> = read_jsonl(path)?;
    let start = std::time::Instant::now();
    let got: Vec<String> = cases
        .iter()
        .map(|c| model.classify_text(&c.text).label.to_string())
        .collect();
    let mean_ms = start.elapsed().as_secs_f32() * 1000.0 / cases.len() as f32;
    let gold: Vec<String> = cases.iter().map(|c| normalise_emotion(&c.label)).collect();
    let mut names: Vec<String> = gold.iter().chain(&got).cloned().collect();
    names.sort();
    names.dedup();
    let labels = names
        .iter()
        .map(|l| {
            let s = ClassStats::from_pairs(gold.iter().zip(&got).map(|(g, p)| (g == l, p == l)));
            (l.clone(), s)
        })
        .collect();
    let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (g, p) in gold.iter().zip(&got) {
        *confusion
            .entry(g.clone())
            .or_default()
            .entry(p.clone())
            .or_default() += 1;
    }
    let misses = cases
        .iter()
        .zip(gold.iter().zip(&got))
        .filter(|(_, (g, p))| g != p)
        .map(|(c, (g, p))| EmotionMiss {
            text: c.text.clone(),
            expected: g.clone(),
            got: p.clone(),
        })
        .collect();
    let correct = gold.iter().zip(&got).filter(|(g, p)| g == p).count();
    Ok(EmotionReport {
        file: path.display().to_string(),
        utterances: cases.len(),
        accuracy: ratio(correct, cases.len()),
        labels,
        confusion,
        misses,
        mean_ms,
    })
}

impl fmt::Display for EmotionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "emotion: {} ({} utterances, {:.1} ms each)",
            self.file, self.utterances, self.mean_ms
        )?;
        writeln!(f, "accuracy {:.1}%", self.accuracy * 100.0)?;
        writeln!(f)?;
        stats_table(f, "label", &self.labels)?;
        writeln!(f)?;
        let names: Vec<&String> = self.labels.keys().collect();
        write!(f, "{:<10}", "exp\\got")?;
        for n in &names {
            write!(f, " {n:>8}")?;
        }
        writeln!(f)?;
        for g in &names {
            write!(f, "{g:<10}")?;
            for p in &names {
                let n = self
                    .confusion
                    .get(*g)
                    .and_then(|r| r.get(*p))
                    .copied()
                    .unwrap_or(0);
                write!(f, " {n:>8}")?;
            }
            writeln!(f)?;
        }
        if !self.misses.is_empty() {
            writeln!(f)?;
            writeln!(f, "wrong labels:")?;
            for m in &self.misses {
                writeln!(f, "  {} -> {}: {}", m.expected, m.got, m.text)?;
            }
        }
        Ok(())
    }
}
