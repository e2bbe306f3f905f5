//! Speech-to-text, whichever engine does it: what a transcript is, how sure the engine is
//! of it, and the trait the pipeline's hearing stage calls. Engines live in their own
//! modules (`whisper`, `moonshine`) and implement the trait there; `asr.engine` in the
//! config chooses one.

/// What an engine heard in one clip.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transcript {
    /// Trimmed text of all windows, joined by spaces.
    pub text: String,
    /// Other readings of the same audio the engine found likely (a beam search's other
    /// endings, best first, each the whole clip's text); empty when it decoded greedily.
    /// The safety check screens them beside `text`.
    pub alternatives: Vec<String>,
    /// Language code, e.g. "en": requested, detected, or "en" for English-only models.
    pub language: String,
    /// Text tokens generated (no prompt, no eot).
    pub tokens: usize,
    /// Token-weighted mean log-probability of the kept decodes (end token included).
    pub avg_logprob: f32,
    /// How sure the engine is that the text is what was said, in [0, 1]; 0 for an empty
    /// text. See [`confidence`].
    pub confidence: f32,
    /// Whisper: probability of the no-speech token at the first decoding step (token-weighted
    /// over kept windows; the highest window's if every window was silence). 0 for engines
    /// without such a token (Moonshine).
    pub no_speech_prob: f32,
    /// Highest temperature any window needed (0.0 = plain greedy everywhere).
    pub fallback_temperature: f32,
    /// Wall-clock milliseconds in each stage, summed over windows (and fallback retries);
    /// `mel_ms` is Whisper's log-mel front end (Moonshine's convolutions count as encoding).
    pub mel_ms: f64,
    pub encode_ms: f64,
    pub decode_ms: f64,
}

/// A speech-to-text engine: 16 kHz mono clips in, transcripts out.
pub trait SpeechToText: Send + Sync {
    /// "whisper" or "moonshine".
    fn engine(&self) -> &'static str;
    /// The model within the engine, e.g. "tiny.en", "base".
    fn model(&self) -> &str;
    /// One result per clip, in order. `language` is a code like "en"; `None` lets the
    /// engine detect it (multilingual Whisper) or use its only language.
    fn transcribe_batch(
        &self,
        clips: &[&[f32]],
        language: Option<&str>,
    ) -> Vec<anyhow::Result<Transcript>>;

    /// The transcript of one clip and, where the engine can make one, an English translation
    /// of the same audio (`None` for English, or for engines that cannot translate).
    fn transcribe_with_translation(
        &self,
        clip: &[f32],
        language: Option<&str>,
    ) -> anyhow::Result<(Transcript, Option<Transcript>)> {
        let transcript = self.transcribe_batch(&[clip], language).remove(0)?;
        Ok((transcript, None))
    }
}

/// How sure the engine is that `text` is what was said, in [0, 1]:
///
/// `exp(avg_logprob) × (1 − no_speech_prob)`, where `avg_logprob` is the mean natural-log
/// probability the decoder gave each chosen token, the end-of-text token included (so the
/// geometric mean of the token probabilities: 1 when every token was certain, lower with every
/// token the model hesitated on), and `no_speech_prob` is Whisper's probability of its
/// no-speech token at the first decoding step (0 for engines without one, e.g. Moonshine).
/// An empty text has confidence 0: nothing was heard, so there is nothing to be sure of.
pub fn confidence(text: &str, avg_logprob: f32, no_speech_prob: f32) -> f32 {
    if text.trim().is_empty() || avg_logprob.is_nan() {
        return 0.0;
    }
    let c = avg_logprob.min(0.0).exp() * (1.0 - no_speech_prob.clamp(0.0, 1.0));
    if c.is_finite() {
        c.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moonshine::MoonshineModel;
    use crate::whisper::WhisperModel;

    #[test]
    fn confidence_is_a_probability() {
        assert_eq!(confidence("", 0.0, 0.0), 0.0);
        assert_eq!(confidence("  ", -0.1, 0.0), 0.0);
        assert!((confidence("hi", 0.0, 0.0) - 1.0).abs() < 1e-6);
        assert!((confidence("hi", (0.5f32).ln(), 0.5) - 0.25).abs() < 1e-6);
        assert_eq!(confidence("hi", f32::NEG_INFINITY, 0.0), 0.0);
        assert_eq!(confidence("hi", f32::NAN, 0.0), 0.0);
        assert!(confidence("hi", -0.05, 0.0) > confidence("hi", -1.0, 0.0));
    }

    #[test]
    fn engines_are_trait_objects() {
        fn boxed<T: SpeechToText + 'static>(engine: T) -> Box<dyn SpeechToText> {
            Box::new(engine)
        }
        // Compiles only if both engines implement the trait.
        let _ = boxed::<WhisperModel>;
        let _ = boxed::<MoonshineModel>;
    }
}
