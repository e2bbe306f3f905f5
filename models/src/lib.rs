//! Models of the teddyflow pipeline, as plain function pipelines.
//!
//! - [`audio`]: container/codec decode (symphonia), downmix, resample to 16 kHz.
//! - [`whisper`]: speech-to-text, CTranslate2 weights run on candle (pcm → mel → encoder → decoder).
//! - [`wer`]: word error rate, used by `teddyflow bench asr` and the tests.

pub mod audio;
pub mod embed;
pub mod emotion;
pub mod eval;
pub mod llm;
pub mod reply_bank;
pub mod safety;
pub mod tts;
mod vecmath;
pub mod wer;
pub mod whisper;
