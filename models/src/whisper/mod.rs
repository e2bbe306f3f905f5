//! Whisper speech-to-text on candle, from CTranslate2 `model.bin` weights.
//!
//! Pipeline per 30 s window: pcm (16 kHz mono) → [`mel`] (STFT only where there is
//! audio) → [`model::Encoder`] → kv-cached [`decoder`], greedy with openai's
//! temperature fallback ([`decode`]) → text.
//!
//! By default every window is padded to the full 30 s, as openai-whisper does. Running
//! the encoder on the real length is 3-10x cheaper but, measured on LibriVox, the
//! pocketsphinx "cards" commands and espeak phrases, it makes tiny.en loop and
//! hallucinate on short clips (1-3 s): see [`WhisperOptions`] to choose otherwise.

pub mod ct2;
pub mod decode;
pub mod decoder;
pub mod kernels;
pub mod mel;
pub mod model;
mod weights;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::Tensor;
use candle_transformers::models::whisper::Config;
use tokenizers::Tokenizer;

use decode::{Decoded, Rules};
use decoder::DecoderState;
use mel::{MelFrontend, MAX_FRAMES, SAMPLE_RATE};

/// Samples in one 30 s window, the most the encoder can see at once.
pub const WINDOW_SAMPLES: usize = MAX_FRAMES * mel::HOP;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhisperVariant {
    TinyEn,
    Base,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown Whisper variant {0:?} (expected \"tiny.en\" or \"base\")")]
pub struct UnknownVariant(String);

impl FromStr for WhisperVariant {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tiny.en" => Ok(Self::TinyEn),
            "base" => Ok(Self::Base),
            _ => Err(UnknownVariant(s.to_string())),
        }
    }
}

impl std::fmt::Display for WhisperVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl WhisperVariant {
    /// "tiny.en" or "base", as parsed.
    pub fn name(&self) -> &'static str {
        match self {
            Self::TinyEn => "tiny.en",
            Self::Base => "base",
        }
    }

    pub fn dir_name(&self) -> &'static str {
        match self {
            Self::TinyEn => "whisper-tiny.en",
            Self::Base => "whisper-base",
        }
    }

    pub fn is_multilingual(&self) -> bool {
        matches!(self, Self::Base)
    }
}

/// What the decoder is asked to write: the words as spoken, or their English translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Transcribe,
    Translate,
}

/// Knobs that trade accuracy for speed; the defaults are what the tests measured best.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhisperOptions {
    /// Silent frames (10 ms each) appended after the audio; trailing silence helps
    /// the decoder see that the utterance has ended.
    pub tail_pad_frames: usize,
    /// Pad with silence to at least this many frames. Whisper was trained on 30 s windows
    /// (3000 frames, openai's behaviour); the encoder costs less on fewer frames.
    pub min_frames: usize,
}

impl WhisperOptions {
    /// openai-whisper's behaviour: every window padded to 30 s.
    pub const FULL_WINDOW: Self = Self {
        tail_pad_frames: 0,
        min_frames: MAX_FRAMES,
    };
}

/// Full 30 s windows: on short clips (1-3 s commands, toy-like phrases) the encoder on
/// the real length makes tiny.en hallucinate and loop, see the crate's test notes.
impl Default for WhisperOptions {
    fn default() -> Self {
        Self::FULL_WINDOW
    }
}

use crate::stt::SpeechToText;
pub use crate::stt::Transcript;

/// Special token ids, looked up by their text in the tokenizer.
#[derive(Debug, Clone)]
pub struct SpecialTokens {
    pub sot: u32,
    pub eot: u32,
    pub transcribe: u32,
    /// `<|translate|>`: the task token that makes a multilingual model write English.
    pub translate: u32,
    pub no_timestamps: u32,
    pub no_speech: Option<u32>,
    /// (id, code) of every language token, e.g. (50259, "en") for multilingual models.
    pub languages: Vec<(u32, String)>,
}

/// The parts of CTranslate2's `config.json` that decoding needs.
#[derive(serde::Deserialize)]
struct Ct2Config {
    suppress_ids: Vec<u32>,
    suppress_ids_begin: Vec<u32>,
    lang_ids: Vec<u32>,
}

impl Ct2Config {
    fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }
}

struct Inner {
    variant: WhisperVariant,
    config: Config,
    model: model::Model,
    mel: MelFrontend,
    tokenizer: Tokenizer,
    specials: SpecialTokens,
    rules: Rules,
}

/// A loaded Whisper model. Clones share the weights (one `Arc`), so one copy serves all threads.
#[derive(Clone)]
pub struct WhisperModel {
    inner: Arc<Inner>,
    options: WhisperOptions,
}

impl WhisperModel {
    /// Reads `models_dir/<variant dir>/{model.bin,config.json,tokenizer.json}` and `models_dir/mel_filters.npz`.
    pub fn load(models_dir: &Path, variant: WhisperVariant) -> anyhow::Result<Self> {
        let dir = models_dir.join(variant.dir_name());
        let ct2 = ct2::Ct2Model::read(&dir.join("model.bin"))?;
        let config = ct2.whisper_config()?;
        let tensors = ct2.to_candle_tensors()?;
        drop(ct2);
        let model =
            model::Model::load(&tensors, &config).context("building Whisper from model.bin")?;
        let ct2_cfg = Ct2Config::read(&dir.join("config.json"))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", tok_path.display()))?;
        let specials = special_tokens(&tokenizer, &ct2_cfg, variant)?;
        let rules = Rules::new(
            config.vocab_size,
            specials.eot,
            specials.no_speech,
            &ct2_cfg.suppress_ids,
            &ct2_cfg.suppress_ids_begin,
        );
        let mel = MelFrontend::load(&models_dir.join("mel_filters.npz"), config.num_mel_bins)?;
        let inner = Inner {
            variant,
            config,
            model,
            mel,
            tokenizer,
            specials,
            rules,
        };
        Ok(Self {
            inner: Arc::new(inner),
            options: WhisperOptions::default(),
        })
    }

    pub fn with_options(mut self, options: WhisperOptions) -> Self {
        self.options = options;
        self
    }

    pub fn options(&self) -> WhisperOptions {
        self.options
    }

    pub fn variant(&self) -> WhisperVariant {
        self.inner.variant
    }

    /// Hyper-parameters in candle-transformers' form (e.g. to load its model as an oracle).
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn specials(&self) -> &SpecialTokens {
        &self.inner.specials
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// Sets suppressed logits to -inf, as the decoder does at every step (`first`: first sampled token).
    pub fn suppress(&self, logits: &mut [f32], first: bool) {
        self.inner.rules.apply(logits, first);
    }

    /// Log-mel (1, n_mels, frames) of one window (at most 30 s) under the current options.
    pub fn log_mel(&self, pcm: &[f32]) -> candle_core::Result<Tensor> {
        let o = self.options;
        self.inner.mel.log_mel(pcm, o.tail_pad_frames, o.min_frames)
    }

    /// Audio features (frames/2, d_model).
    pub fn encode(&self, mel: &Tensor) -> candle_core::Result<Tensor> {
        self.inner.model.encoder.forward(mel)
    }

    /// sot (+ language + transcribe for multilingual models) + notimestamps.
    pub fn prompt(&self, language_token: Option<u32>) -> Vec<u32> {
        self.task_prompt(language_token, Task::Transcribe)
    }

    /// sot (+ language + task for multilingual models) + notimestamps.
    pub fn task_prompt(&self, language_token: Option<u32>, task: Task) -> Vec<u32> {
        let s = &self.inner.specials;
        let mut p = vec![s.sot];
        if self.inner.variant.is_multilingual() {
            p.extend(language_token);
            p.push(match task {
                Task::Transcribe => s.transcribe,
                Task::Translate => s.translate,
            });
        }
        p.push(s.no_timestamps);
        p
    }

    /// The transcript in `language` and, when that language is not English and the model is
    /// multilingual, an English translation of the same audio. The translation is a second
    /// decoder pass (task token `translate`) over each window's encoder output and
    /// cross-attention keys/values already computed for the transcript: no second encoder
    /// pass. `None` detects the language first, as [`Self::transcribe`] does.
    pub fn transcribe_with_translation(
        &self,
        pcm_16k: &[f32],
        language: Option<&str>,
    ) -> anyhow::Result<(Transcript, Option<Transcript>)> {
        let mut lang = self.requested_language(language)?;
        let (mut acc, mut english) = (Accumulator::default(), Accumulator::default());
        let mut translated = false;
        for (i, window) in pcm_16k.chunks(WINDOW_SAMPLES).enumerate() {
            if i > 0 && window.len() < SAMPLE_RATE / 10 {
                break;
            }
            let (mut state, prompt) = self.prepare(window, &mut lang, &mut acc)?;
            let detok = |ids: &[u32]| self.detokenize(ids);
            let dec = &self.inner.model.decoder;
            let t = Instant::now();
            let (d, text) =
                decode::decode_with_fallback(dec, &mut state, &prompt, &self.inner.rules, detok)?;
            acc.decode_ms += ms(t);
            acc.add(&d, &text);
            if !self.needs_translation(lang) {
                continue;
            }
            translated = true;
            let t = Instant::now();
            let prompt = self.task_prompt(lang, Task::Translate);
            let (d, text) =
                decode::decode_with_fallback(dec, &mut state, &prompt, &self.inner.rules, detok)?;
            english.decode_ms += ms(t);
            english.add(&d, &text);
        }
        let transcript = acc.finish(self.language_code(lang));
        Ok((
            transcript,
            translated.then(|| english.finish("en".to_string())),
        ))
    }

    /// A multilingual model hearing a language other than English.
    fn needs_translation(&self, lang: Option<u32>) -> bool {
        self.inner.variant.is_multilingual() && self.language_code(lang) != "en"
    }

    /// Plain greedy decode (temperature 0, no fallback) of audio features: text tokens only.
    pub fn greedy_tokens(&self, audio: &Tensor, prompt: &[u32]) -> anyhow::Result<Vec<u32>> {
        let dec = &self.inner.model.decoder;
        let mut state = dec.start(audio)?;
        let mut rng = rand::SeedableRng::seed_from_u64(0);
        Ok(decode::decode_once(
            dec,
            &mut state,
            prompt,
            &self.inner.rules,
            0.0,
            &mut rng,
            &|_| false,
        )?
        .tokens)
    }

    /// Transcribes 16 kHz mono audio; longer than 30 s is cut into consecutive 30 s windows.
    /// `language` is a code like "en"; `None` detects it (multilingual models).
    pub fn transcribe(
        &self,
        pcm_16k: &[f32],
        language: Option<&str>,
    ) -> anyhow::Result<Transcript> {
        let mut lang = self.requested_language(language)?;
        let mut acc = Accumulator::default();
        for (i, window) in pcm_16k.chunks(WINDOW_SAMPLES).enumerate() {
            // A sliver after a 30 s boundary is more likely to hallucinate than to hold a word.
            if i > 0 && window.len() < SAMPLE_RATE / 10 {
                break;
            }
            let (mut state, prompt) = self.prepare(window, &mut lang, &mut acc)?;
            let t = Instant::now();
            let detok = |ids: &[u32]| self.detokenize(ids);
            let (d, text) = decode::decode_with_fallback(
                &self.inner.model.decoder,
                &mut state,
                &prompt,
                &self.inner.rules,
                detok,
            )?;
            acc.decode_ms += ms(t);
            acc.add(&d, &text);
        }
        Ok(acc.finish(self.language_code(lang)))
    }

    /// Transcribes several clips together (dynamic batching): each clip's window is encoded
    /// on its own, then their greedy decodes step together, reading the decoder's weights
    /// once per step for all of them. Texts equal [`Self::transcribe`] on each clip;
    /// clips longer than one window, or empty, are transcribed alone.
    pub fn transcribe_batch(
        &self,
        clips: &[&[f32]],
        language: Option<&str>,
    ) -> Vec<anyhow::Result<Transcript>> {
        let requested = match self.requested_language(language) {
            Ok(l) => l,
            Err(e) => {
                return clips
                    .iter()
                    .map(|_| Err(anyhow::anyhow!("{e:#}")))
                    .collect()
            }
        };
        let mut results: Vec<Option<anyhow::Result<Transcript>>> =
            clips.iter().map(|_| None).collect();
        let (mut states, mut pending) = (Vec::new(), Vec::new());
        for (clip, pcm) in clips.iter().enumerate() {
            if pcm.is_empty() || pcm.len() > WINDOW_SAMPLES {
                results[clip] = Some(self.transcribe(pcm, language));
                continue;
            }
            let (mut lang, mut acc) = (requested, Accumulator::default());
            match self.prepare(pcm, &mut lang, &mut acc) {
                Ok((state, prompt)) => {
                    states.push(state);
                    pending.push(Pending {
                        clip,
                        prompt,
                        lang,
                        acc,
                    });
                }
                Err(e) => results[clip] = Some(Err(e)),
            }
        }
        for (i, done) in self.decode_batch(states, pending) {
            results[i] = Some(done);
        }
        results
            .into_iter()
            .map(|r| r.expect("every clip has a result"))
            .collect()
    }

    /// Batched greedy decode of prepared windows, then each one's fallback if it needs one.
    fn decode_batch(
        &self,
        mut states: Vec<DecoderState>,
        pending: Vec<Pending>,
    ) -> Vec<(usize, anyhow::Result<Transcript>)> {
        let dec = &self.inner.model.decoder;
        let rules = &self.inner.rules;
        let detok = |ids: &[u32]| self.detokenize(ids);
        let runaway = |tokens: &[u32]| decode::is_runaway(&detok, tokens);
        let prompts: Vec<Vec<u32>> = pending.iter().map(|p| p.prompt.clone()).collect();
        let t = Instant::now();
        let greedy = decode::decode_greedy_batch(dec, &mut states, &prompts, rules, &runaway);
        let batch_ms = ms(t);
        let greedy = match greedy {
            Ok(g) => g,
            Err(e) => {
                let msg = format!("{e:#}");
                let fail = |p: Pending| (p.clip, Err(anyhow::anyhow!("{msg}")));
                return pending.into_iter().map(fail).collect();
            }
        };
        let items = pending.into_iter().zip(states).zip(greedy);
        items
            .map(|((mut p, mut state), g)| {
                let t = Instant::now();
                let done = decode::fallback_from(dec, &mut state, &p.prompt, rules, detok, Some(g));
                let result = done.map(|(d, text)| {
                    // Each clip spent the whole batched decode waiting on it.
                    p.acc.decode_ms += batch_ms + ms(t);
                    p.acc.add(&d, &text);
                    p.acc.finish(self.language_code(p.lang))
                });
                (p.clip, result)
            })
            .collect()
    }

    /// One window made ready to decode: mel, encoder, cross-attention k/v, language, prompt.
    fn prepare(
        &self,
        window: &[f32],
        lang: &mut Option<u32>,
        acc: &mut Accumulator,
    ) -> anyhow::Result<(DecoderState, Vec<u32>)> {
        let t = Instant::now();
        let mel = self.log_mel(window)?;
        acc.mel_ms += ms(t);
        let t = Instant::now();
        let audio = self.encode(&mel)?;
        acc.encode_ms += ms(t);
        let t = Instant::now();
        // Cross-attention k/v: once per window, shared by detection and every retry.
        let mut state = self.inner.model.decoder.start(&audio)?;
        if lang.is_none() && self.inner.variant.is_multilingual() {
            *lang = Some(self.detect_language(&mut state)?);
        }
        acc.decode_ms += ms(t);
        Ok((state, self.prompt(*lang)))
    }

    fn detokenize(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner
            .tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("detokenizing {ids:?}: {e}"))
    }

    /// Language token for a code; English-only models ignore the request (with a warning).
    fn requested_language(&self, language: Option<&str>) -> anyhow::Result<Option<u32>> {
        let Some(code) = language else {
            return Ok(None);
        };
        if !self.inner.variant.is_multilingual() {
            if code != "en" {
                tracing::warn!(code, variant = %self.inner.variant, "English-only Whisper model: transcribing as English");
            }
            return Ok(None);
        }
        let langs = &self.inner.specials.languages;
        let found = langs.iter().find(|(_, c)| c == code).map(|(id, _)| *id);
        found.map(Some).with_context(|| {
            format!(
                "unknown language code {code:?} for Whisper {}",
                self.inner.variant
            )
        })
    }

    /// openai's detect_language: the most likely language token right after sot.
    fn detect_language(&self, state: &mut decoder::DecoderState) -> anyhow::Result<u32> {
        let dec = &self.inner.model.decoder;
        state.reset();
        let logits = dec.logits(&dec.step(state, &[self.inner.specials.sot])?, 0);
        let langs = &self.inner.specials.languages;
        let best = langs
            .iter()
            .max_by(|a, b| logits[a.0 as usize].total_cmp(&logits[b.0 as usize]))
            .context("model has no language tokens")?;
        Ok(best.0)
    }

    fn language_code(&self, lang: Option<u32>) -> String {
        let langs = &self.inner.specials.languages;
        lang.and_then(|id| langs.iter().find(|(i, _)| *i == id))
            .map_or_else(|| "en".to_string(), |(_, c)| c.clone())
    }
}

/// A clip's window, encoded, waiting for its decode in a batch.
struct Pending {
    clip: usize,
    prompt: Vec<u32>,
    lang: Option<u32>,
    acc: Accumulator,
}

/// Sums per-window results into one transcript.
#[derive(Default)]
struct Accumulator {
    texts: Vec<String>,
    tokens: usize,
    sum_logprob: f32,
    n_logprob: usize,
    /// Σ no_speech_prob × (tokens + 1) over kept windows, and the highest over all windows.
    sum_no_speech: f32,
    max_no_speech: f32,
    temperature: f32,
    mel_ms: f64,
    encode_ms: f64,
    decode_ms: f64,
}

impl Accumulator {
    fn add(&mut self, d: &Decoded, text: &str) {
        self.temperature = self.temperature.max(d.temperature);
        self.max_no_speech = self.max_no_speech.max(d.no_speech_prob);
        if decode::is_silence(d) {
            return;
        }
        self.tokens += d.tokens.len();
        self.sum_logprob += d.sum_logprob;
        self.n_logprob += d.tokens.len() + 1;
        self.sum_no_speech += d.no_speech_prob * (d.tokens.len() + 1) as f32;
        let text = text.trim();
        if !text.is_empty() {
            self.texts.push(text.to_string());
        }
    }

    fn finish(self, language: String) -> Transcript {
        let (avg_logprob, no_speech_prob) = match self.n_logprob {
            0 => (0.0, self.max_no_speech),
            n => (self.sum_logprob / n as f32, self.sum_no_speech / n as f32),
        };
        let text = self.texts.join(" ");
        Transcript {
            confidence: crate::stt::confidence(&text, avg_logprob, no_speech_prob),
            text,
            alternatives: Vec::new(),
            language,
            tokens: self.tokens,
            avg_logprob,
            no_speech_prob,
            fallback_temperature: self.temperature,
            mel_ms: self.mel_ms,
            encode_ms: self.encode_ms,
            decode_ms: self.decode_ms,
        }
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn special_tokens(
    tok: &Tokenizer,
    cfg: &Ct2Config,
    variant: WhisperVariant,
) -> anyhow::Result<SpecialTokens> {
    let id = |s: &str| {
        tok.token_to_id(s)
            .with_context(|| format!("tokenizer has no {s} token"))
    };
    let languages = if variant.is_multilingual() {
        cfg.lang_ids
            .iter()
            .map(|&i| {
                let t = tok
                    .id_to_token(i)
                    .with_context(|| format!("language id {i} not in tokenizer"))?;
                let code = t
                    .trim_start_matches("<|")
                    .trim_end_matches("|>")
                    .to_string();
                Ok((i, code))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        vec![]
    };
    Ok(SpecialTokens {
        sot: id("<|startoftranscript|>")?,
        eot: id("<|endoftext|>")?,
        transcribe: id("<|transcribe|>")?,
        translate: id("<|translate|>")?,
        no_timestamps: id("<|notimestamps|>")?,
        no_speech: tok
            .token_to_id("<|nospeech|>")
            .or_else(|| tok.token_to_id("<|nocaptions|>")),
        languages,
    })
}

impl SpeechToText for WhisperModel {
    fn transcribe_with_translation(
        &self,
        clip: &[f32],
        language: Option<&str>,
    ) -> anyhow::Result<(Transcript, Option<Transcript>)> {
        WhisperModel::transcribe_with_translation(self, clip, language)
    }

    fn engine(&self) -> &'static str {
        "whisper"
    }

    fn model(&self) -> &str {
        self.variant().name()
    }

    fn transcribe_batch(
        &self,
        clips: &[&[f32]],
        language: Option<&str>,
    ) -> Vec<anyhow::Result<Transcript>> {
        WhisperModel::transcribe_batch(self, clips, language)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_shareable() {
        fn is<T: Send + Sync + Clone>() {}
        is::<WhisperModel>();
        is::<Transcript>();
    }

    #[test]
    fn variant_names() {
        assert_eq!(
            "tiny.en".parse::<WhisperVariant>().unwrap(),
            WhisperVariant::TinyEn
        );
        assert_eq!(
            "base".parse::<WhisperVariant>().unwrap().dir_name(),
            "whisper-base"
        );
        assert!("large".parse::<WhisperVariant>().is_err());
    }
}
