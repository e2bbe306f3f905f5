//! Child-safety verdicts for one transcript: `safe`, `needs_care` or `unsafe`.
//!
//! Signals, each reported in [`SafetyVerdict::signals`]:
//! - `head:<class>`: a linear head over MiniLM embeddings, trained at load time from the
//!   labelled examples in `data/safety_examples.jsonl` (safe talk + each topic);
//! - `cue:<category>`: cue phrases per topic ([`cues`]);
//! - `profanity_svm`: alt-profanity-check's calibrated TF-IDF + linear SVM;
//! - `profanity_words` / `sexual_words`: hits in better-profanity's word list;
//! - `pii:<kind>`: personal-information patterns ([`pii`]).
//!
//! How they combine: a topic is flagged when the head's log-odds, raised by one of its
//! cues or lowered by their absence, pass 0 (so neither the embedding nor a keyword
//! decides alone); profanity needs a swear word *and* the SVM or the head to agree (the
//! SVM alone scores "I hate broccoli" 0.9); personal information is decided by its
//! patterns (a phone number is one whatever the sentence means), the head's view reported
//! beside them. `data/README.md` says what each verdict means and lists the documented
//! borderline cases.

pub mod cues;
pub mod pii;
pub mod profanity;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::embed::{Embedder, LinearHead, TrainOptions};
use crate::jsonl::read_jsonl;
use pii::PiiHit;
use profanity::{ProfanitySvm, WordHits, WordList};

pub use pii::redact;

/// The example file, under the data dir.
pub const EXAMPLES: &str = "safety_examples.jsonl";
/// The same examples as the speech-to-text engines heard them when espeak-ng spoke them
/// (`teddyflow bench safety --spoken data/safety_examples.jsonl --save-heard ...`), with the
/// label of the line spoken; read beside [`EXAMPLES`] when present, so the head can learn what
/// "my uncle hits me" sounds like once misheard. None is shipped: the one set tried raised
/// false positives without lifting recall (docs/performance.md § Spoken safety).
pub const HEARD_EXAMPLES: &str = "safety_heard.jsonl";

/// Categories a verdict can name, with the verdict each one implies.
pub const CATEGORIES: [(&str, Verdict); 8] = [
    ("self_harm", Verdict::Unsafe),
    ("abuse", Verdict::Unsafe),
    ("sexual", Verdict::Unsafe),
    ("dangerous_activity", Verdict::Unsafe),
    ("personal_info", Verdict::Unsafe),
    ("profanity", Verdict::Unsafe),
    ("bullying", Verdict::NeedsCare),
    ("distress", Verdict::NeedsCare),
];

/// Topics judged by head + cues (the others have their own lexical evidence).
const TOPICS: [&str; 6] = [
    "self_harm",
    "abuse",
    "sexual",
    "dangerous_activity",
    "bullying",
    "distress",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing a parent needs to hear about.
    Safe,
    /// Distress: the reply must comfort, and a parent is told.
    NeedsCare,
    /// Never reaches reply generation: a gentle redirect is used, and a parent is told.
    Unsafe,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Safe => "safe",
            Self::NeedsCare => "needs_care",
            Self::Unsafe => "unsafe",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Verdict {
    type Err = UnknownVerdict;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "safe" => Ok(Self::Safe),
            "needs_care" => Ok(Self::NeedsCare),
            "unsafe" => Ok(Self::Unsafe),
            _ => Err(UnknownVerdict(s.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown verdict {0:?} (expected safe, needs_care or unsafe)")]
pub struct UnknownVerdict(String);

#[derive(Debug, thiserror::Error)]
#[error("{file}: unknown safety category {category:?} for {text:?}")]
pub struct UnknownCategory {
    file: String,
    category: String,
    text: String,
}

/// The verdict on one transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyVerdict {
    pub verdict: Verdict,
    /// Flagged categories, most certain first; empty when safe.
    pub categories: Vec<String>,
    /// Risk in [0, 1]: the highest category score (≥ 0.5 exactly when flagged).
    pub score: f32,
    pub signals: BTreeMap<String, f32>,
}

/// One training example: `category` is `safe` or one of [`CATEGORIES`].
#[derive(Debug, Clone, Deserialize)]
pub struct SafetyExample {
    pub text: String,
    pub category: String,
}

/// How the head and the cues are weighed against each other. The defaults were chosen by
/// 5-fold cross-validation on the training examples, never on an evaluation set
/// (`lab_safety_cv` in models/tests/understanding.rs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// A topic's log-odds rise by this much when one of its cues is present...
    pub cue_shift: f32,
    /// ...and fall by this much when none is: with 2.0 and 1.5 a topic with a cue is
    /// flagged from a head probability of 0.12, one without only from 0.82.
    pub no_cue_shift: f32,
    /// Share of the other topics' head probability a topic with a cue borrows: the head
    /// often knows that a sentence is not safe talk before it knows which topic it is
    /// (abuse or distress? bullying or abuse?).
    pub mass_share: f32,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            cue_shift: 2.0,
            no_cue_shift: 1.5,
            mass_share: 1.0,
        }
    }
}

/// The loaded model. Cloning shares the embedder's weights.
#[derive(Debug, Clone)]
pub struct SafetyModel {
    embedder: Embedder,
    head: LinearHead,
    svm: ProfanitySvm,
    words: WordList,
    tuning: Tuning,
}

impl SafetyModel {
    /// Load MiniLM, the profanity model and word list from `models_dir`, and train the
    /// head on `data_dir/safety_examples.jsonl`.
    pub fn load(models_dir: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        Self::with_embedder(Embedder::load(models_dir)?, models_dir, data_dir)
    }

    /// As [`Self::load`], sharing an already loaded embedder (one copy of the weights).
    pub fn with_embedder(
        embedder: Embedder,
        models_dir: &Path,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        let path = data_dir.join(EXAMPLES);
        let mut rows: Vec<SafetyExample> = read_jsonl(&path)?;
        let heard = data_dir.join(HEARD_EXAMPLES);
        if heard.exists() {
            rows.extend(read_jsonl::<SafetyExample>(&heard)?);
        }
        Self::train(embedder, models_dir, &rows, &path.display().to_string())
    }

    /// Train on explicit examples (cross-validation uses this).
    pub fn train(
        embedder: Embedder,
        models_dir: &Path,
        rows: &[SafetyExample],
        file: &str,
    ) -> anyhow::Result<Self> {
        Self::train_with(embedder, models_dir, rows, file, head_options())
    }

    /// As [`Self::train`] with explicit head options.
    pub fn train_with(
        embedder: Embedder,
        models_dir: &Path,
        rows: &[SafetyExample],
        file: &str,
        opts: TrainOptions,
    ) -> anyhow::Result<Self> {
        let classes = head_classes();
        let y = rows
            .iter()
            .map(|r| class_index(&classes, r, file))
            .collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        let x = embedder.embed_cached(&texts)?;
        let head = LinearHead::train(&x, &y, classes, opts);
        // Compile the cue and personal-information patterns now (~0.5 s on two cores), not
        // on a child's first utterance.
        let warmed = TOPICS.iter().map(|t| cues::count(t, "")).sum::<usize>();
        let warmed = warmed + pii::detect("").len();
        tracing::debug!("safety patterns compiled ({warmed} matches on empty text)");
        Ok(Self {
            svm: ProfanitySvm::load(models_dir)?,
            words: WordList::load(models_dir)?,
            embedder,
            head,
            tuning: Tuning::default(),
        })
    }

    /// Override the [`Tuning`] (cross-validation does).
    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Judge one transcript.
    pub fn check(&self, text: &str) -> SafetyVerdict {
        match self.embedder.embed_one(text) {
            Ok(e) => self.check_embedded(text, &e),
            Err(err) => {
                // Without the embedding only the lexical signals remain; better than nothing.
                tracing::warn!("safety: embedding failed ({err:#}); lexical signals only");
                self.judge(text, None)
            }
        }
    }

    /// Judge a transcript whose MiniLM embedding the caller already has (emotion and
    /// safety share one embedding per utterance).
    pub fn check_embedded(&self, text: &str, embedding: &[f32]) -> SafetyVerdict {
        self.judge(text, Some(embedding))
    }

    fn judge(&self, text: &str, embedding: Option<&[f32]>) -> SafetyVerdict {
        let head: BTreeMap<String, f32> = match embedding {
            Some(e) => self
                .head
                .classes()
                .iter()
                .cloned()
                .zip(self.head.probs(e))
                .collect(),
            None => BTreeMap::new(),
        };
        let evidence = Evidence {
            head,
            svm: self.svm.probability(text),
            words: self.words.hits(text),
            pii: pii::detect(text),
            cues: TOPICS.iter().map(|t| (*t, cues::count(t, text))).collect(),
        };
        evidence.verdict(&self.tuning)
    }
}

/// Balanced classes: every topic gets the same prior as safe talk, so a topic with few
/// examples is not drowned; the missing-cue shift then keeps false alarms down. (Tried by
/// cross-validation: unbalanced training lost 2–4 points of recall for 1–2 points of FPR.)
pub fn head_options() -> TrainOptions {
    TrainOptions::default()
}

fn head_classes() -> Vec<String> {
    std::iter::once("safe")
        .chain(CATEGORIES.iter().map(|(c, _)| *c))
        .map(str::to_string)
        .collect()
}

fn class_index(
    classes: &[String],
    r: &SafetyExample,
    file: &str,
) -> Result<usize, UnknownCategory> {
    classes
        .iter()
        .position(|c| *c == r.category)
        .ok_or_else(|| UnknownCategory {
            file: file.to_string(),
            category: r.category.clone(),
            text: r.text.clone(),
        })
}

/// Everything measured about one transcript.
struct Evidence {
    head: BTreeMap<String, f32>,
    svm: f32,
    words: WordHits,
    pii: Vec<PiiHit>,
    cues: BTreeMap<&'static str, usize>,
}

impl Evidence {
    fn verdict(&self, tuning: &Tuning) -> SafetyVerdict {
        let scores: Vec<(&str, f32)> = CATEGORIES
            .iter()
            .map(|(c, _)| (*c, self.score(c, tuning)))
            .collect();
        let mut flagged: Vec<(&str, f32)> =
            scores.iter().copied().filter(|(_, s)| *s >= 0.5).collect();
        self.prefer_peer_reading(&mut flagged);
        flagged.sort_by(|a, b| b.1.total_cmp(&a.1));
        let verdict = flagged
            .iter()
            .map(|(c, _)| verdict_of(c))
            .max()
            .unwrap_or(Verdict::Safe);
        SafetyVerdict {
            verdict,
            categories: flagged.iter().map(|(c, _)| c.to_string()).collect(),
            score: scores.iter().map(|(_, s)| *s).fold(0.0, f32::max),
            signals: self.signals(),
        }
    }

    /// "They hit me" is abuse from a grown-up and bullying from other children; parents
    /// shouting at each other is distress more than abuse. The cues cannot tell who "they"
    /// are, so when abuse is flagged beside bullying or distress and the head prefers the
    /// other reading, abuse is dropped (the child is still flagged, as needs_care).
    fn prefer_peer_reading(&self, flagged: &mut Vec<(&str, f32)>) {
        let has = |c: &str, f: &[(&str, f32)]| f.iter().any(|(x, _)| *x == c);
        let peer = ["bullying", "distress"]
            .iter()
            .any(|c| has(c, flagged) && self.p(c) > self.p("abuse"));
        if has("abuse", flagged) && peer {
            flagged.retain(|(c, _)| *c != "abuse");
        }
    }

    fn p(&self, class: &str) -> f32 {
        self.head.get(class).copied().unwrap_or(0.0)
    }

    fn score(&self, category: &str, tuning: &Tuning) -> f32 {
        match category {
            "personal_info" => self.personal_info_score(),
            "profanity" => self.profanity_score(),
            topic => {
                let cue = self.cues.get(topic).copied().unwrap_or(0) > 0
                    || (topic == "sexual" && !self.words.sexual.is_empty());
                if !cue {
                    return sigmoid(logit(self.p(topic)) - tuning.no_cue_shift);
                }
                // With a cue, the head's "not safe talk" counts even when it leans to a
                // neighbouring topic (abuse or distress? bullying or abuse?).
                let others: f32 = TOPICS
                    .iter()
                    .filter(|t| **t != topic)
                    .map(|t| self.p(t))
                    .sum();
                sigmoid(logit(self.p(topic) + tuning.mass_share * others) + tuning.cue_shift)
            }
        }
    }

    /// A pattern is the evidence; the head's agreement only raises the score.
    fn personal_info_score(&self) -> f32 {
        let p = self.p("personal_info");
        if self.pii.is_empty() {
            0.49 * p
        } else {
            1.0 - 0.2 * (1.0 - p)
        }
    }

    /// A swear word, confirmed by the SVM or the head; the SVM alone fires on any negative
    /// word, the list alone on "hell" in a story, so neither decides.
    fn profanity_score(&self) -> f32 {
        let confirm = self.svm.max(self.p("profanity"));
        if self.words.swear.is_empty() {
            0.49 * self.svm.min(self.p("profanity"))
        } else {
            confirm
        }
    }

    fn signals(&self) -> BTreeMap<String, f32> {
        let mut s = BTreeMap::new();
        for (class, p) in &self.head {
            s.insert(format!("head:{class}"), *p);
        }
        for (topic, n) in &self.cues {
            s.insert(format!("cue:{topic}"), *n as f32);
        }
        s.insert("profanity_svm".into(), self.svm);
        s.insert("profanity_words".into(), self.words.swear.len() as f32);
        s.insert("sexual_words".into(), self.words.sexual.len() as f32);
        for h in &self.pii {
            *s.entry(format!("pii:{}", h.kind.as_str())).or_insert(0.0) += 1.0;
        }
        s
    }
}

/// The verdict a category implies.
pub fn verdict_of(category: &str) -> Verdict {
    CATEGORIES
        .iter()
        .find(|(c, _)| *c == category)
        .map_or(Verdict::Safe, |(_, v)| *v)
}

fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}
