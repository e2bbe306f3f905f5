//! Text emotion: a linear head over MiniLM embeddings, trained at load time from the
//! labelled example sentences in `data/emotion_examples.jsonl`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::Label;
use crate::embed::{Embedder, LinearHead, TrainOptions};
use crate::jsonl::read_jsonl;

/// Labels the text branch predicts, in the head's class order.
pub const LABELS: [Label; 5] = Label::ALL;
/// The example file, under the data dir.
pub const EXAMPLES: &str = "emotion_examples.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum TextEmotionError {
    #[error("{file}: unknown emotion label {label:?} for {text:?} (expected happy, sad, angry, scared or neutral)")]
    UnknownLabel {
        file: String,
        label: String,
        text: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
pub struct LabelledText {
    pub text: String,
    pub label: String,
}

/// Trained text classifier.
#[derive(Debug, Clone)]
pub struct TextEmotion {
    head: LinearHead,
}

impl TextEmotion {
    /// Read `data_dir/emotion_examples.jsonl`, embed it and train the head.
    pub fn load(embedder: &Embedder, data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(EXAMPLES);
        let rows: Vec<LabelledText> = read_jsonl(&path)?;
        Self::train(embedder, &rows, &path.display().to_string())
    }

    pub fn train(embedder: &Embedder, rows: &[LabelledText], file: &str) -> anyhow::Result<Self> {
        let y = rows
            .iter()
            .map(|r| label_index(&r.label, &r.text, file))
            .collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
        let x = embedder.embed_cached(&texts)?;
        let classes = LABELS.iter().map(|l| l.as_str().to_string()).collect();
        let head = LinearHead::train(&x, &y, classes, TrainOptions::default());
        Ok(Self { head })
    }

    /// Probability per label for one embedded text.
    pub fn scores(&self, embedding: &[f32]) -> BTreeMap<Label, f32> {
        let p = self.head.probs(embedding);
        LABELS.into_iter().zip(p).collect()
    }
}

fn label_index(label: &str, text: &str, file: &str) -> Result<usize, TextEmotionError> {
    LABELS
        .iter()
        .position(|l| l.as_str() == label)
        .ok_or_else(|| TextEmotionError::UnknownLabel {
            file: file.to_string(),
            label: label.to_string(),
            text: text.to_string(),
        })
}
