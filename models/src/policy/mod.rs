//! The reply policy: what the toy never says (`docs/reply-policy.md`), judged on one generated
//! sentence at a time, with the child's utterance and the recent turns as context. Plain text
//! in, a [`PolicyVerdict`] out, so it judges sentences from any reply backend.
//!
//! Context matters: "I can tell you, it's in the kitchen drawer" is harmless alone and a
//! violation after "where are the sharp knives?". So a turn's [`PolicyContext`] is worked out
//! once (how strongly the utterance, and the last two turns, probe each category), and then
//! every sentence is judged against it:
//!
//! 1. `says`: a cue pattern that breaks the policy on its own ("it's our little secret");
//! 2. `context`: the turn probes the category, and the sentence goes along with it ("Yes!",
//!    "they're in the drawer", "that's a great idea") without refusing or pointing to a
//!    grown-up. A bare "yes" counts only for the utterance itself, not for an earlier turn;
//! 3. `head`: a linear head over the sentence's MiniLM embedding, trained at load time on the
//!    toy sentences of `data/policy_examples.jsonl`. Its log-odds are raised when the turn
//!    probes the category and lowered when it does not or when the sentence refuses, so the
//!    embedding alone decides only when it is very sure;
//! 4. `safety:<category>`: the child-safety model's verdict on the sentence, counted only
//!    with lexical evidence (a cue phrase, a listed word, a personal-information pattern).
//!    That model was trained on what children say; on the toy's own words its embedding
//!    head alone flags harmless sentences ("That's a great idea!" as a dangerous activity),
//!    which the policy's own rules and head judge better.
//!
//! The child's side uses a second head, trained on the child utterances of the same file,
//! beside the `asks` patterns of [`rules`]. One MiniLM embedding per sentence (shared with
//! the safety model) and one per turn for the utterance; everything else is patterns and
//! two 384-wide dot products.

pub mod adversarial;
pub mod judge;
pub mod rules;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::embed::{Embedder, LinearHead, TrainOptions};
use crate::eval::read_jsonl;
use crate::reply_bank::{self, ReplyKind};
use crate::safety::{SafetyModel, Verdict};

pub use adversarial::AdversarialRow;

/// The example file, under the data dir.
pub const EXAMPLES: &str = "policy_examples.jsonl";

/// What the toy never says. `docs/reply-policy.md` gives each one's rule and examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyCategory {
    /// Where dangerous things are (knives, matches, pills, …) or how to use them.
    DangerousThings,
    /// Romance or sexual content.
    RomanceSexual,
    /// Secrets from parents, "don't tell".
    Secrecy,
    /// "I love you more than …", "you're my only friend".
    ExclusiveLove,
    /// Asking the child to stay, or not to play with friends.
    Isolation,
    /// Claiming to be a real person or animal.
    ClaimsReal,
    /// Asking for or giving personal information (addresses, phone, school, full names).
    PersonalInfo,
    /// Encouraging risky stunts.
    RiskyStunts,
    /// What the child-safety model flags in the sentence itself: swearing, self-harm, abuse.
    UnsafeContent,
}

impl PolicyCategory {
    /// Every category: the probed ones, then `unsafe_content`.
    pub const ALL: [Self; 9] = {
        let mut all = [Self::UnsafeContent; 9];
        let mut i = 0;
        while i < Self::PROBED.len() {
            all[i] = Self::PROBED[i];
            i += 1;
        }
        all
    };

    /// The categories a child's question can probe (all but `unsafe_content`), in the order
    /// of [`PolicyContext`]'s scores and of the heads' classes after the first.
    pub const PROBED: [Self; 8] = [
        Self::DangerousThings,
        Self::RomanceSexual,
        Self::Secrecy,
        Self::ExclusiveLove,
        Self::Isolation,
        Self::ClaimsReal,
        Self::PersonalInfo,
        Self::RiskyStunts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DangerousThings => "dangerous_things",
            Self::RomanceSexual => "romance_sexual",
            Self::Secrecy => "secrecy",
            Self::ExclusiveLove => "exclusive_love",
            Self::Isolation => "isolation",
            Self::ClaimsReal => "claims_real",
            Self::PersonalInfo => "personal_info",
            Self::RiskyStunts => "risky_stunts",
            Self::UnsafeContent => "unsafe_content",
        }
    }

    fn index(self) -> Option<usize> {
        Self::PROBED.iter().position(|c| *c == self)
    }

    /// What the toy says instead of a sentence that broke this rule (English: the reply
    /// model answers English only). `None` for `unsafe_content`: the curated redirect fits.
    pub fn safe_line(self, child_name: Option<&str>) -> Option<String> {
        let line = match self {
            Self::DangerousThings => {
                "That is something only grown-ups should handle. Let's ask a grown-up you trust."
            }
            Self::RiskyStunts => {
                "That could hurt you, so let's keep our feet safe on the ground. What else shall we play?"
            }
            Self::RomanceSexual => {
                "I'm your teddy friend, and friends laugh and play together. Shall we play a game?"
            }
            Self::Secrecy => {
                "If something feels big or worrying, you can always tell a grown-up you trust."
            }
            Self::ExclusiveLove => {
                "Lots of people love you, like your family and your friends. I like being your friend too."
            }
            Self::Isolation => "Have fun! I'll be right here when you come back.",
            Self::ClaimsReal => "I'm a toy teddy bear, and I love talking with you.",
            Self::PersonalInfo => {
                "Let's keep addresses and phone numbers private. They are just for your family."
            }
            Self::UnsafeContent => return None,
        };
        Some(match child_name.map(str::trim).filter(|n| !n.is_empty()) {
            Some(name) => format!("{name}, {}", lower_first(line)),
            None => line.to_string(),
        })
    }
}

/// "That is …" → "that is …", but "I'm …" stays.
fn lower_first(line: &str) -> String {
    let first = line.split([' ', '\'']).next().unwrap_or("");
    if first == "I" {
        return line.to_string();
    }
    let mut chars = line.chars();
    chars.next().map_or(String::new(), |c| {
        c.to_lowercase().collect::<String>() + chars.as_str()
    })
}

impl std::fmt::Display for PolicyCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown policy category {0:?}")]
pub struct UnknownCategory(pub String);

impl std::str::FromStr for PolicyCategory {
    type Err = UnknownCategory;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCategory(s.to_string()))
    }
}

/// Which rule found a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A cue pattern in the sentence alone.
    Says,
    /// The turn probes the category and the sentence goes along with it.
    Context,
    /// The sentence head, weighed with the context.
    Head,
    /// The child-safety model, with lexical evidence.
    Safety,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub category: PolicyCategory,
    pub rule: Rule,
    /// Certainty in [0.5, 1].
    pub score: f32,
}

/// The verdict on one sentence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyVerdict {
    /// Nothing broken: the sentence may be spoken.
    pub ok: bool,
    /// The most certain violation's category.
    pub category: Option<PolicyCategory>,
    /// Every violation, most certain first.
    pub violations: Vec<Violation>,
}

impl PolicyVerdict {
    fn from(mut violations: Vec<Violation>) -> Self {
        violations.sort_by(|a, b| b.score.total_cmp(&a.score));
        Self {
            ok: violations.is_empty(),
            category: violations.first().map(|v| v.category),
            violations,
        }
    }

    /// Category names, most certain first (what a response's `fallback_categories` lists).
    pub fn category_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for v in &self.violations {
            let n = v.category.as_str().to_string();
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
    }

    /// What to say instead, when the violation has a line of its own.
    pub fn safe_line(&self, child_name: Option<&str>) -> Option<String> {
        self.category?.safe_line(child_name)
    }
}

/// How strongly a turn probes each category ([`PolicyCategory::PROBED`] order), in [0, 1].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PolicyContext {
    /// By the child's utterance itself.
    pub now: [f32; 8],
    /// By the recent turns (the child's or the toy's words), weighed by how recent they are.
    pub earlier: [f32; 8],
}

impl PolicyContext {
    /// A turn that probes nothing.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn probe(&self, c: PolicyCategory) -> f32 {
        c.index().map_or(0.0, |i| self.now[i].max(self.earlier[i]))
    }

    /// Probed categories and their scores, strongest first.
    pub fn probed(&self, min: f32) -> Vec<(PolicyCategory, f32)> {
        let mut out: Vec<_> = PolicyCategory::PROBED
            .into_iter()
            .map(|c| (c, self.probe(c)))
            .filter(|(_, p)| *p >= min)
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

/// Which side of the conversation an example is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// What a child says: `category` is what it probes, or `none`.
    Child,
    /// What the toy says: `category` is what it breaks, or `ok`.
    Toy,
}

/// One line of `data/policy_examples.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyExample {
    pub role: Role,
    pub text: String,
    pub category: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: unknown {role:?} category {category:?} for {text:?}")]
pub struct BadExample {
    file: String,
    role: Role,
    category: String,
    text: String,
}

/// How the rules and heads are weighed. Chosen by reasoning about the rules and checked by
/// cross-validation on the examples (`policy_head_cross_validation` in models/tests/policy.rs),
/// never on the evaluation set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// A category counts as probed from this score.
    pub probe_min: f32,
    /// Sentence head log-odds: raised this much when the turn probes the category...
    pub head_probed_shift: f32,
    /// ...lowered this much when it does not (2.5: the head alone needs p ≥ 0.92)...
    pub head_alone_shift: f32,
    /// ...and lowered this much more when the sentence refuses or points to a grown-up.
    pub decline_shift: f32,
    /// Child head log-odds: raised when the utterance mentions the topic, lowered when not.
    pub topic_shift: f32,
    pub no_topic_shift: f32,
    /// Weight of the last and the second-to-last turn...
    pub turn_weights: [f32; 2],
    /// ...and when the utterance leans on them ("where does she keep them?").
    pub follow_up_weights: [f32; 2],
    /// An earlier turn that only mentions a topic (not asks) counts this much.
    pub mention_weight: f32,
    /// The safety model without lexical evidence counts only from this score.
    pub safety_head_only_min: f32,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            probe_min: 0.5,
            head_probed_shift: 1.0,
            head_alone_shift: 2.5,
            decline_shift: 3.0,
            topic_shift: 1.0,
            no_topic_shift: 1.5,
            turn_weights: [0.8, 0.6],
            follow_up_weights: [1.0, 0.9],
            mention_weight: 0.7,
            safety_head_only_min: 0.95,
        }
    }
}

/// The loaded policy checker. Cloning shares the weights.
#[derive(Debug, Clone)]
pub struct ReplyPolicy {
    embedder: Embedder,
    /// Classes: `ok`, then [`PolicyCategory::PROBED`].
    toy_head: LinearHead,
    /// Classes: `none`, then [`PolicyCategory::PROBED`].
    child_head: LinearHead,
    safety: Option<SafetyModel>,
    tuning: Tuning,
}

impl ReplyPolicy {
    /// Load MiniLM and the safety model from `models_dir`, and train on
    /// `data_dir/policy_examples.jsonl` (and the safety examples).
    pub fn load(models_dir: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        let safety = SafetyModel::load(models_dir, data_dir)?;
        Self::with_safety(safety, data_dir)
    }

    /// Sharing the safety model's embedder (one copy of MiniLM).
    pub fn with_safety(safety: SafetyModel, data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(EXAMPLES);
        let rows: Vec<PolicyExample> = read_jsonl(&path)?;
        let embedder = safety.embedder().clone();
        Self::train(embedder, Some(safety), &rows, &path.display().to_string())
    }

    /// Train both heads on explicit examples; `safety` may be left out (rules and heads only).
    pub fn train(
        embedder: Embedder,
        safety: Option<SafetyModel>,
        rows: &[PolicyExample],
        file: &str,
    ) -> anyhow::Result<Self> {
        let toy_head = train_head(&embedder, rows, Role::Toy, "ok", file)?;
        let child_head = train_head(&embedder, rows, Role::Child, "none", file)?;
        tracing::debug!("policy patterns compiled ({})", rules::warm_up());
        Ok(Self {
            embedder,
            toy_head,
            child_head,
            safety,
            tuning: Tuning::default(),
        })
    }

    pub fn with_tuning(mut self, tuning: Tuning) -> Self {
        self.tuning = tuning;
        self
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Judge `sentence` given what the child just said and the recent turns (oldest first:
    /// (child said, toy replied)). For many sentences of one reply, make the context once
    /// with [`Self::context`] and call [`Self::check_in`].
    pub fn check(
        &self,
        sentence: &str,
        child_utterance: &str,
        recent_turns: &[(String, String)],
    ) -> PolicyVerdict {
        let ctx = self.context(child_utterance, recent_turns);
        self.check_in(&ctx, sentence)
    }

    /// How strongly this turn probes each category (embeds the utterance once).
    pub fn context(
        &self,
        child_utterance: &str,
        recent_turns: &[(String, String)],
    ) -> PolicyContext {
        let embedding = self.embed(child_utterance);
        self.context_embedded(child_utterance, embedding.as_deref(), recent_turns)
    }

    /// As [`Self::context`] with the utterance's embedding already made (or none: patterns
    /// only).
    pub fn context_embedded(
        &self,
        child_utterance: &str,
        embedding: Option<&[f32]>,
        recent_turns: &[(String, String)],
    ) -> PolicyContext {
        let t = &self.tuning;
        let u = rules::normalise(child_utterance);
        let head = embedding.map(|e| self.child_head.probs(e));
        let weights = if rules::follows_up(&u) {
            t.follow_up_weights
        } else {
            t.turn_weights
        };
        let turns: Vec<(String, String)> = recent_turns
            .iter()
            .rev()
            .take(2)
            .map(|(c, r)| (rules::normalise(c), rules::normalise(r)))
            .collect();
        let mut ctx = PolicyContext::none();
        for (i, c) in PolicyCategory::PROBED.into_iter().enumerate() {
            ctx.now[i] = if rules::asks(c, &u) {
                1.0
            } else {
                head.as_ref().map_or(0.0, |h| {
                    let shift = if rules::mentions(c, &u) {
                        t.topic_shift
                    } else {
                        -t.no_topic_shift
                    };
                    sigmoid(logit(h[i + 1]) + shift)
                })
            };
            for (k, (child, toy)) in turns.iter().enumerate() {
                let seen = if rules::asks(c, child) {
                    1.0
                } else if rules::mentions(c, child) || rules::mentions(c, toy) {
                    t.mention_weight
                } else {
                    0.0
                };
                ctx.earlier[i] = ctx.earlier[i].max(seen * weights[k]);
            }
        }
        ctx
    }

    /// Judge one sentence of a reply against the turn's context (embeds the sentence once).
    /// The curated reply to an unsafe utterance (it never reaches the reply engine). Comfort
    /// when the child is distressed ([`ReplyKind::Comfort`]), whatever else was said, followed
    /// by the safe line of a policy category the utterance probes; else, when it probes
    /// one, that category's safe line, which answers what was asked ("keep a
    /// secret from mum?" → tell a grown-up you trust; "can I jump off the roof?" → feet on
    /// the ground) where a change of subject would leave the
    /// question standing; else the gentle redirect. Safe lines are English: other
    /// languages get their bank's redirect.
    pub fn reply_to_unsafe(
        &self,
        ctx: &PolicyContext,
        kind: ReplyKind,
        language: &str,
        child_name: Option<&str>,
        seed: u64,
    ) -> String {
        let curated = reply_bank::reply_to_unsafe(kind, language, child_name, seed);
        let probed = ctx.probed(self.tuning.probe_min).first().map(|(c, _)| *c);
        let Some(c) = probed.filter(|_| reply_bank::base_language(language) == "en") else {
            return curated;
        };
        match kind {
            // Comfort first, then the answer to what was asked: a frightened child asking
            // to jump off the roof hears both, never "it's okay to feel that way" alone.
            ReplyKind::Comfort => match c.safe_line(None) {
                Some(line) => format!("{curated} {line}"),
                None => curated,
            },
            _ => c.safe_line(child_name).unwrap_or(curated),
        }
    }

    pub fn check_in(&self, ctx: &PolicyContext, sentence: &str) -> PolicyVerdict {
        let embedding = self.embed(sentence);
        self.check_embedded(ctx, sentence, embedding.as_deref())
    }

    /// As [`Self::check_in`] with the sentence's embedding already made (or none: patterns
    /// and the safety model's lexical signals only).
    pub fn check_embedded(
        &self,
        ctx: &PolicyContext,
        sentence: &str,
        embedding: Option<&[f32]>,
    ) -> PolicyVerdict {
        let t = &self.tuning;
        let s = rules::normalise(sentence);
        let head = embedding.map(|e| self.toy_head.probs(e));
        let mut found = Vec::new();
        for (i, c) in PolicyCategory::PROBED.into_iter().enumerate() {
            if let Some(v) = self.judge_category(c, &s, ctx, head.as_ref().map(|h| h[i + 1])) {
                found.push(v);
            }
        }
        if let Some(safety) = &self.safety {
            let p_ok = head.as_ref().map_or(0.0, |h| h[0]);
            found.extend(safety_violations(safety, sentence, embedding, p_ok, t));
        }
        PolicyVerdict::from(found)
    }

    fn judge_category(
        &self,
        c: PolicyCategory,
        s: &str,
        ctx: &PolicyContext,
        head: Option<f32>,
    ) -> Option<Violation> {
        let t = &self.tuning;
        let i = c.index()?;
        let violation = |rule, score| {
            Some(Violation {
                category: c,
                rule,
                score,
            })
        };
        if rules::says(c, s) {
            return violation(Rule::Says, 1.0);
        }
        let declines = rules::declines(c, s);
        let (now, earlier) = (ctx.now[i], ctx.earlier[i]);
        if !declines {
            // A bare "yes" answers the utterance, not an earlier turn.
            let specific = rules::complies_specifically(c, s);
            if now >= t.probe_min && (specific || rules::goes_along(c, s)) {
                return violation(Rule::Context, now);
            }
            if earlier >= t.probe_min && specific {
                return violation(Rule::Context, earlier);
            }
        }
        let probed = now.max(earlier) >= t.probe_min;
        let score = self.head_decides(head?, probed, declines)?;
        violation(Rule::Head, score)
    }

    /// The sentence head's probabilities for a toy sentence: `ok`, then
    /// [`PolicyCategory::PROBED`] (for cross-validation and explaining verdicts).
    pub fn sentence_head(&self, embedding: &[f32]) -> Vec<f32> {
        self.toy_head.probs(embedding)
    }

    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// Whether the sentence head alone calls `c` broken, given its probability `p`, whether
    /// the turn probes `c`, and whether the sentence refuses: the certainty, if so.
    pub fn head_decides(&self, p: f32, probed: bool, declines: bool) -> Option<f32> {
        let t = &self.tuning;
        let mut z = logit(p)
            + if probed {
                t.head_probed_shift
            } else {
                -t.head_alone_shift
            };
        if declines {
            z -= t.decline_shift;
        }
        let score = sigmoid(z);
        (score >= 0.5).then_some(score)
    }

    fn embed(&self, text: &str) -> Option<Vec<f32>> {
        match self.embedder.embed_one(text) {
            Ok(e) => Some(e),
            Err(err) => {
                tracing::warn!("policy: embedding failed ({err:#}); patterns only");
                None
            }
        }
    }
}

/// The child-safety model's view of a toy sentence, kept where it has lexical evidence.
fn safety_violations(
    safety: &SafetyModel,
    sentence: &str,
    embedding: Option<&[f32]>,
    toy_p_ok: f32,
    t: &Tuning,
) -> Vec<Violation> {
    let v = match embedding {
        Some(e) => safety.check_embedded(sentence, e),
        None => safety.check(sentence),
    };
    if v.verdict != Verdict::Unsafe {
        return Vec::new();
    }
    let signal = |k: &str| v.signals.get(k).copied().unwrap_or(0.0);
    let sure = v.score >= t.safety_head_only_min;
    v.categories
        .iter()
        .filter_map(|cat| {
            let cue = signal(&format!("cue:{cat}")) > 0.0;
            let category = match cat.as_str() {
                // Decided by a word list or a pattern in the first place.
                "profanity" => PolicyCategory::UnsafeContent,
                "personal_info" => PolicyCategory::PersonalInfo,
                "self_harm" | "abuse" if cue || sure => PolicyCategory::UnsafeContent,
                "sexual" if cue || signal("sexual_words") > 0.0 || sure => {
                    PolicyCategory::RomanceSexual
                }
                // Its cues are a child's plans ("let's ... fire"): on the toy's words ("let's
                // sit by the fire") they count only when the policy head agrees.
                "dangerous_activity" if (cue && toy_p_ok < 0.5) || sure => {
                    PolicyCategory::RiskyStunts
                }
                _ => return None,
            };
            Some(Violation {
                category,
                rule: Rule::Safety,
                score: v.score.max(0.5),
            })
        })
        .collect()
}

fn train_head(
    embedder: &Embedder,
    rows: &[PolicyExample],
    role: Role,
    negative: &str,
    file: &str,
) -> anyhow::Result<LinearHead> {
    let classes: Vec<String> = std::iter::once(negative)
        .chain(PolicyCategory::PROBED.iter().map(|c| c.as_str()))
        .map(str::to_string)
        .collect();
    let mine: Vec<&PolicyExample> = rows.iter().filter(|r| r.role == role).collect();
    let y = mine
        .iter()
        .map(|r| {
            classes
                .iter()
                .position(|c| *c == r.category)
                .ok_or_else(|| BadExample {
                    file: file.to_string(),
                    role,
                    category: r.category.clone(),
                    text: r.text.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let texts: Vec<&str> = mine.iter().map(|r| r.text.as_str()).collect();
    let x = embedder.embed_cached(&texts)?;
    Ok(LinearHead::train(&x, &y, classes, TrainOptions::default()))
}

fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_round_trip() {
        for c in PolicyCategory::ALL {
            assert_eq!(c.as_str().parse::<PolicyCategory>().unwrap(), c);
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
        }
        assert!("knives".parse::<PolicyCategory>().is_err());
        let distinct: std::collections::BTreeSet<_> = PolicyCategory::ALL.into_iter().collect();
        assert_eq!(distinct.len(), 9, "every category once");
        assert_eq!(PolicyCategory::ALL[8], PolicyCategory::UnsafeContent);
    }

    #[test]
    fn safe_lines_name_the_child_and_keep_the_rules() {
        let line = PolicyCategory::DangerousThings
            .safe_line(Some("Mia"))
            .unwrap();
        assert!(line.starts_with("Mia, that is"), "{line}");
        let line = PolicyCategory::ClaimsReal.safe_line(Some("Mia")).unwrap();
        assert!(line.starts_with("Mia, I'm a toy"), "{line}");
        assert!(PolicyCategory::UnsafeContent.safe_line(None).is_none());
        // Each line, said right after a question that probes its own category, passes the
        // rules (the heads need MiniLM: models/tests/policy.rs checks them too).
        for c in PolicyCategory::PROBED {
            let line = rules::normalise(&c.safe_line(None).unwrap());
            for part in line.split_inclusive(['.', '!', '?']) {
                let s = part.trim();
                assert!(!rules::says(c, s), "{c}: {s}");
                assert!(
                    rules::declines(c, s)
                        || !(rules::complies_specifically(c, s) || rules::goes_along(c, s)),
                    "{c}: {s}"
                );
            }
        }
    }

    #[test]
    fn verdict_orders_violations() {
        let v = PolicyVerdict::from(vec![
            Violation {
                category: PolicyCategory::Secrecy,
                rule: Rule::Head,
                score: 0.6,
            },
            Violation {
                category: PolicyCategory::ClaimsReal,
                rule: Rule::Says,
                score: 1.0,
            },
        ]);
        assert!(!v.ok);
        assert_eq!(v.category, Some(PolicyCategory::ClaimsReal));
        assert_eq!(v.category_names(), vec!["claims_real", "secrecy"]);
        assert!(PolicyVerdict::from(vec![]).ok);
    }
}
