//! Two lexical profanity signals:
//!
//! - [`ProfanitySvm`]: alt-profanity-check's TF-IDF + calibrated linear SVM, exported from
//!   its sklearn pickles to `MODELS_DIR/safety/profanity_svm.json` at set-up
//!   (`scripts/export_profanity.py`). Trained on adult web text, it scores any negative
//!   word high ("I hate broccoli" ≈ 0.9), so it only ever confirms other evidence.
//! - [`WordList`]: better-profanity's word list (`MODELS_DIR/safety/profanity_wordlist.txt`),
//!   split into swear words, sexual words, and words a child says innocently ("poop",
//!   "kill", "god", "stupid") that are never evidence on their own.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

pub const SVM_FILE: &str = "safety/profanity_svm.json";
pub const WORDLIST_FILE: &str = "safety/profanity_wordlist.txt";

#[derive(Debug, Deserialize)]
struct SvmExport {
    vocab: Vec<String>,
    idf: Vec<f32>,
    folds: Vec<Fold>,
}

/// One cross-validation fold of sklearn's CalibratedClassifierCV.
#[derive(Debug, Clone, Deserialize)]
struct Fold {
    coef: Vec<f32>,
    intercept: f32,
    a: f32,
    b: f32,
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {what}")]
pub struct ExportError {
    file: String,
    what: String,
}

/// The calibrated TF-IDF + linear SVM.
#[derive(Debug, Clone)]
pub struct ProfanitySvm {
    index: HashMap<String, usize>,
    idf: Vec<f32>,
    folds: Vec<Fold>,
}

impl ProfanitySvm {
    pub fn load(models_dir: &Path) -> anyhow::Result<Self> {
        let path = models_dir.join(SVM_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (run scripts/setup.sh)", path.display()))?;
        let export: SvmExport =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let n = export.vocab.len();
        let bad = export.idf.len() != n || export.folds.iter().any(|f| f.coef.len() != n);
        if bad || export.folds.is_empty() {
            return Err(ExportError {
                file: path.display().to_string(),
                what: "vocabulary, idf and coefficient lengths disagree".into(),
            }
            .into());
        }
        let index = export
            .vocab
            .into_iter()
            .enumerate()
            .map(|(i, w)| (w, i))
            .collect();
        Ok(Self {
            index,
            idf: export.idf,
            folds: export.folds,
        })
    }

    /// Probability that `text` is profane, exactly as `profanity_check.predict_prob`:
    /// l2-normalised tf-idf → each fold's SVM margin → its sigmoid → mean over folds.
    pub fn probability(&self, text: &str) -> f32 {
        let features = self.tfidf(text);
        let total: f32 = self
            .folds
            .iter()
            .map(|f| {
                let margin =
                    f.intercept + features.iter().map(|(i, v)| v * f.coef[*i]).sum::<f32>();
                1.0 / (1.0 + (f.a * margin + f.b).exp())
            })
            .sum();
        total / self.folds.len() as f32
    }

    fn tfidf(&self, text: &str) -> Vec<(usize, f32)> {
        let mut counts: HashMap<usize, f32> = HashMap::new();
        for tok in sklearn_tokens(text) {
            if let Some(&i) = self.index.get(&tok) {
                *counts.entry(i).or_default() += 1.0;
            }
        }
        let weighted: Vec<(usize, f32)> = counts
            .into_iter()
            .map(|(i, c)| (i, c * self.idf[i]))
            .collect();
        let norm = weighted.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
        let norm = if norm > 0.0 { norm } else { 1.0 };
        weighted.into_iter().map(|(i, v)| (i, v / norm)).collect()
    }
}

/// sklearn's default analyzer: lower case, then `(?u)\b\w\w+\b`.
fn sklearn_tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|t| t.chars().count() >= 2)
        .map(|t| t.to_lowercase())
}

/// Words of the list a child says innocently, or that are mild ("stupid", "poop",
/// "kill" as in a game): reported, never evidence of profanity.
const INNOCENT: &[&str] = &[
    "kill", "god", "fat", "pee", "poop", "fart", "stupid", "crap", "jerk", "suck", "screw", "hell",
    "damn", "omg", "gay", "gae", "gai", "gey", "queer", "homo", "lez", "pot", "rum", "weed",
    "strip", "hiv", "pms", "uzi", "lust", "bloody", "bum", "butt", "knob", "nob", "ho", "hoe",
    "balls", "ball", "pcp", "len", "wad", "nad", "tit", "muff", "bimbo", "bimbos", "aryan",
    "arian", "jap", "kum", "cum", "junkie", "crack", "meth", "sadist", "willies", "wtf", "booty",
    "drunk", "dummy", "ugly", "moron", "murder", "heroin", "vodka", "virgin", "pube",
];

/// Words of the list about sex and bodies: evidence for the `sexual` category (with the
/// topic head), not for `profanity`.
const SEXUAL: &[&str] = &[
    "sex",
    "sexy",
    "naked",
    "nude",
    "nudes",
    "penis",
    "vagina",
    "boob",
    "boobs",
    "breasts",
    "willy",
    "nipple",
    "nipples",
    "porn",
    "porno",
    "pornography",
    "horny",
    "orgasm",
    "dildo",
    "blowjob",
    "blow job",
    "handjob",
    "masturbate",
    "erotic",
    "xxx",
    "kinky",
    "bdsm",
    "boner",
    "clit",
    "anal",
    "hump",
    "humped",
    "humping",
    "rape",
    "raped",
    "topless",
];

/// Lexical hits of one text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WordHits {
    /// Swear words and slurs.
    pub swear: Vec<String>,
    /// Sexual words.
    pub sexual: Vec<String>,
}

/// better-profanity's list, matched on whole words and phrases after undoing the common
/// character swaps (`@`→a, `$`→s, `0`→o, `1`→i, `3`→e, `!`→i, `*` as a wildcard is not
/// handled: a censored word is already harmless).
#[derive(Debug, Clone)]
pub struct WordList {
    words: HashSet<String>,
    /// Longest entry, in words, so phrase lookup stays bounded.
    max_words: usize,
}

impl WordList {
    pub fn load(models_dir: &Path) -> anyhow::Result<Self> {
        let path = models_dir.join(WORDLIST_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (run scripts/setup.sh)", path.display()))?;
        let mut words: HashSet<String> = text
            .lines()
            .map(|l| l.trim().to_lowercase())
            .filter(|l| !l.is_empty())
            .collect();
        // The sexual words count even where the list lacks them (it has "nude", not "nudes").
        words.extend(SEXUAL.iter().map(|w| w.to_string()));
        let max_words = words
            .iter()
            .map(|w| w.split(' ').count())
            .max()
            .unwrap_or(1);
        Ok(Self { words, max_words })
    }

    pub fn hits(&self, text: &str) -> WordHits {
        let tokens = normalised_words(text);
        let mut hits = WordHits::default();
        for start in 0..tokens.len() {
            for len in 1..=self.max_words.min(tokens.len() - start) {
                let phrase = tokens[start..start + len].join(" ");
                if self.words.contains(&phrase) {
                    classify_hit(phrase, &mut hits);
                }
            }
        }
        hits
    }
}

fn classify_hit(word: String, hits: &mut WordHits) {
    if SEXUAL.contains(&word.as_str()) {
        hits.sexual.push(word);
    } else if !INNOCENT.contains(&word.as_str()) {
        hits.swear.push(word);
    }
}

/// Lower-case words with leetspeak undone inside words that have letters ("sh1t" → "shit",
/// "a$$" → "ass"; "42" stays a number and is dropped); apostrophes removed.
fn normalised_words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || ",.;:?\"()[]{}".contains(c))
        .map(|w| w.trim_matches(|c: char| !(c.is_alphanumeric() || c == '@' || c == '$')))
        .filter(|w| w.chars().any(char::is_alphabetic))
        .map(|w| {
            w.chars()
                .filter(|c| *c != '\'' && *c != '’')
                .map(|c| match c {
                    '@' | '4' => 'a',
                    '$' | '5' => 's',
                    '0' => 'o',
                    '1' | '!' => 'i',
                    '3' => 'e',
                    '7' => 't',
                    c => c.to_ascii_lowercase(),
                })
                .collect::<String>()
        })
        .collect()
}
