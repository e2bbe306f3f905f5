//! Emotion of one utterance: what the child said (text branch, [`text`]) fused with how it
//! was said (acoustic branch, [`acoustic`]).
//!
//! The text decides the emotion; the voice only nudges it along arousal: loud, fast,
//! lively speech lends weight to angry/happy/scared, quiet, slow, monotone speech to sad.
//! Prosody without a per-child baseline is too coarse to do more (a shy child and a loud
//! one differ more than one child's happy and sad), so the nudge is bounded and a
//! confident text prediction is never overturned by it.

pub mod acoustic;
pub mod text;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::embed::Embedder;
pub use acoustic::{analyze, AcousticFeatures};
use text::{TextEmotion, LABELS};

/// How strongly arousal (in [-1, 1]) reweights the text scores: a factor of at most
/// e^0.6 ≈ 1.8 between the most and least aroused labels.
const AROUSAL_WEIGHT: f32 = 0.3;

/// An emotion the classifier emits. Curious questions and plain statements are both
/// `neutral`: a reply to either needs no emotional adjustment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
// Declared alphabetically: maps keyed by label keep the order (and tie-breaks) they had as
// strings.
pub enum Label {
    Angry,
    Happy,
    Neutral,
    Sad,
    Scared,
}

impl Label {
    /// In the text head's class order.
    pub const ALL: [Label; 5] = [
        Label::Happy,
        Label::Sad,
        Label::Angry,
        Label::Scared,
        Label::Neutral,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Label::Happy => "happy",
            Label::Sad => "sad",
            Label::Angry => "angry",
            Label::Scared => "scared",
            Label::Neutral => "neutral",
        }
    }

    /// Emotions that call for comfort before anything else (the reply, its voice, the bank).
    pub fn is_distress(self) -> bool {
        matches!(self, Label::Sad | Label::Scared | Label::Angry)
    }

    /// Where the label sits on the arousal axis (Russell's circumplex, coarsely).
    fn arousal(self) -> f32 {
        match self {
            Label::Angry => 1.0,
            Label::Scared => 0.7,
            Label::Happy => 0.5,
            Label::Neutral => -0.3,
            Label::Sad => -1.0,
        }
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Label {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Label::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown emotion label {s:?}"))
    }
}

/// The fused emotion of one utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emotion {
    /// The most likely label.
    pub label: Label,
    /// Probability per label, summing to 1.
    pub scores: BTreeMap<Label, f32>,
    /// Prosody the fusion used (all zeros for text-only classification).
    pub acoustic: AcousticFeatures,
}

/// The loaded model. Cloning shares the embedder's weights.
#[derive(Debug, Clone)]
pub struct EmotionModel {
    embedder: Embedder,
    text: TextEmotion,
}

impl EmotionModel {
    /// Load MiniLM from `models_dir` and train the text head on
    /// `data_dir/emotion_examples.jsonl`.
    pub fn load(models_dir: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        Self::with_embedder(Embedder::load(models_dir)?, data_dir)
    }

    /// As [`Self::load`], sharing an already loaded embedder.
    pub fn with_embedder(embedder: Embedder, data_dir: &Path) -> anyhow::Result<Self> {
        let text = TextEmotion::load(&embedder, data_dir)?;
        Ok(Self { embedder, text })
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// Emotion from the transcript and the utterance's prosody.
    pub fn classify(&self, text: &str, acoustic: &AcousticFeatures) -> Emotion {
        match self.embedder.embed_one(text) {
            Ok(e) => self.classify_embedded(&e, acoustic),
            Err(err) => {
                tracing::warn!("emotion: embedding failed ({err:#}); prosody only");
                fuse(uniform(), acoustic)
            }
        }
    }

    /// Emotion from the transcript alone.
    pub fn classify_text(&self, text: &str) -> Emotion {
        self.classify(text, &AcousticFeatures::default())
    }

    /// Emotion from a transcript embedding the caller already has (shared with safety).
    pub fn classify_embedded(&self, embedding: &[f32], acoustic: &AcousticFeatures) -> Emotion {
        fuse(self.text.scores(embedding), acoustic)
    }
}

fn uniform() -> BTreeMap<Label, f32> {
    let p = 1.0 / LABELS.len() as f32;
    LABELS.into_iter().map(|l| (l, p)).collect()
}

/// Text scores reweighted by arousal, renormalised.
fn fuse(text: BTreeMap<Label, f32>, acoustic: &AcousticFeatures) -> Emotion {
    let a = arousal(acoustic);
    let mut scores: BTreeMap<Label, f32> = text
        .into_iter()
        .map(|(label, p)| {
            let w = (AROUSAL_WEIGHT * a * label.arousal()).exp();
            (label, p * w)
        })
        .collect();
    let total: f32 = scores.values().sum();
    scores
        .values_mut()
        .for_each(|p| *p /= total.max(f32::MIN_POSITIVE));
    let label = scores
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(l, _)| *l)
        .unwrap_or(Label::Neutral);
    Emotion {
        label,
        scores,
        acoustic: acoustic.clone(),
    }
}

/// Arousal in [-1, 1] from prosody, 0 when there is no voiced speech. Each cue is
/// centred on typical conversational speech: pitch variability ~2.5 semitones, ~4
/// syllables per second, a level of ~-24 dBFS (espeak-ng measures -21; microphones
/// differ, hence the wide ±10 dB scale); long pauses pull towards sad.
pub fn arousal(f: &AcousticFeatures) -> f32 {
    if f.speech_ms < 300 || f.pitch_hz <= 0.0 {
        return 0.0;
    }
    let pitch = ((f.pitch_variability_st - 2.5) / 2.5).clamp(-1.0, 1.0);
    let energy = ((f.energy_db + 24.0) / 10.0).clamp(-1.0, 1.0);
    let rate = ((f.speaking_rate - 4.0) / 2.0).clamp(-1.0, 1.0);
    let pausing = (f.pause_ms as f32 / f.duration_ms.max(1) as f32 * 4.0).clamp(0.0, 1.0);
    ((pitch + energy + rate) / 3.0 - 0.5 * pausing).clamp(-1.0, 1.0)
}
