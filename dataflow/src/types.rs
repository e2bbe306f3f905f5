//! What flows between the stages of the graph. Everything is serde-serialisable because
//! records cross worker and process boundaries.

use serde::{Deserialize, Serialize};
use teddyflow_connectors::wire::ChunkHeaders;

/// The input offsets an utterance was assembled from, per partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRange {
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// Everything about an utterance except its audio, carried to the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub conversation: String,
    pub utterance: String,
    pub child: Option<String>,
    /// Headers of the first chunk, kept for dead letters.
    pub headers: ChunkHeaders,
    pub sources: Vec<SourceRange>,
    /// Closed by the idle timeout before its final chunk arrived.
    pub incomplete: bool,
    /// Wall-clock ms when the utterance became complete (its last chunk arrived).
    pub completed_ms: i64,
    /// Stage name → milliseconds, in pipeline order.
    pub timings: Vec<(String, f64)>,
    /// Stage name → (start, end) in ms after `completed_ms`, for stages that run side by
    /// side (speech-to-text and acoustic analysis), so their overlap is observable.
    #[serde(default)]
    pub spans: Vec<(String, f64, f64)>,
    /// Dataflow time by which everything keyed to this utterance's final chunk (its profile
    /// lookup) has been produced: the time of the chunk that completed it.
    #[serde(default)]
    pub ready_time: u64,
    /// Stage name → how many utterances it processed together with this one (dynamic
    /// batching), for the stages that batch.
    #[serde(default)]
    pub batches: Vec<(String, usize)>,
}

impl Meta {
    pub fn time(&mut self, stage: &str, ms: f64) {
        self.timings.push((stage.to_string(), ms));
    }

    /// Record that `stage` ran from `start` (a [`now_ms_f64`] reading) until now.
    pub fn span(&mut self, stage: &str, start: f64) {
        let base = self.completed_ms as f64;
        self.spans
            .push((stage.to_string(), start - base, now_ms_f64() - base));
    }
}

/// A complete utterance: the chunks' bytes concatenated in `seq` order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utterance {
    pub meta: Meta,
    pub bytes: Vec<u8>,
}

/// Decoded audio: mono, 16 kHz.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decoded {
    pub meta: Meta,
    pub pcm: Vec<f32>,
    /// The encoded audio, kept so a later failure can still dead-letter the original.
    pub bytes: Vec<u8>,
}

impl Decoded {
    pub fn audio_ms(&self) -> u64 {
        self.pcm.len() as u64 * 1000 / 16_000
    }
}

/// Speech-to-text result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcribed {
    pub meta: Meta,
    pub audio_ms: u64,
    pub transcript: String,
    pub language: String,
    pub model: String,
}

/// An utterance that cannot be processed; it becomes one dead-letter record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub meta: Meta,
    pub bytes: Vec<u8>,
    pub stage: String,
    pub error: String,
}

/// Wall-clock ms with sub-millisecond precision.
pub fn now_ms_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
