//! Speech-to-text, whichever engine does it: what a transcript is, and the trait the
//! pipeline's hearing stage calls. Engines live in their own modules (`whisper`, …) and
//! are chosen by `asr.engine` in the config.

/// What an engine heard in one clip.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transcript {
    /// Trimmed text of all windows, joined by spaces.
    pub text: String,
    /// Language code, e.g. "en": requested, detected, or "en" for English-only models.
    pub language: String,
    /// Text tokens generated (no prompt, no eot).
    pub tokens: usize,
    /// Token-weighted mean log-probability of the kept decodes.
    pub avg_logprob: f32,
    /// Highest temperature any window needed (0.0 = plain greedy everywhere).
    pub fallback_temperature: f32,
    /// Wall-clock milliseconds in each stage, summed over windows (and fallback retries).
    pub mel_ms: f64,
    pub encode_ms: f64,
    pub decode_ms: f64,
}

/// A speech-to-text engine: one loaded model, shared by every thread of the hearing stage.
pub trait SpeechToText: Send + Sync {
    /// The engine's name, as responses report it (`whisper`, …).
    fn engine(&self) -> &'static str;
    /// The model variant, e.g. `tiny.en`.
    fn model(&self) -> &str;
    /// Transcribe 16 kHz mono clips, one result per clip in order. `language` is a code
    /// like "en"; `None` lets a multilingual engine detect it.
    fn transcribe_batch(
        &self,
        clips: &[&[f32]],
        language: Option<&str>,
    ) -> Vec<anyhow::Result<Transcript>>;
}
