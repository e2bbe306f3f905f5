//! Models of the teddyflow pipeline, as plain function pipelines.
//!
//! - [`audio`]: container/codec decode (symphonia), downmix, resample to 16 kHz.
//! - [`whisper`]: speech-to-text, CTranslate2 weights run on candle (pcm → mel → encoder → decoder).
//! - [`moonshine`]: speech-to-text, Moonshine base on candle (pcm → conv encoder → decoder).
//! - [`reply`]: the reply-engine trait (the local SmolLM2 engine is [`llm`]; any
//!   OpenAI-compatible server is [`openai`]).
//! - [`stt`]: the [`stt::SpeechToText`] trait every engine implements, what a transcript is,
//!   and its confidence.
//! - [`wer`]: word error rate, used by `teddyflow bench asr` and the tests.

pub mod audio;
pub mod embed;
pub mod emotion;
pub mod eval;
pub mod jsonl;
pub mod llm;
pub mod moonshine;
pub mod openai;
pub mod policy;
pub mod q8;
pub mod reply;
pub mod reply_bank;
pub mod reply_quality;
pub mod safety;
pub mod spoken;
pub mod stt;
pub mod tts;
mod vecmath;
pub mod wer;
pub mod whisper;

/// candle asks rayon for its thread count on every matrix product; without
/// `RAYON_NUM_THREADS` that means re-reading /proc/cpuinfo each time. Call this once, before
/// any other thread starts.
pub fn pin_rayon_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
