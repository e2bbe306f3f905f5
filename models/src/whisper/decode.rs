//! Token-level decoding: suppression rules, greedy/temperature sampling with the
//! kv-cached decoder, and openai-whisper's temperature fallback.

use std::io::Write;

use candle_core::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::decoder::{Decoder, DecoderState};

/// openai-whisper's `sample_len`: half the text context.
pub const MAX_TOKENS: usize = 224;
pub const TEMPERATURES: [f32; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
pub const COMPRESSION_RATIO_THRESHOLD: f32 = 2.4;
pub const LOGPROB_THRESHOLD: f32 = -1.0;
pub const NO_SPEECH_THRESHOLD: f32 = 0.6;
/// Sampling is seeded so that a given clip always gives the same transcript.
const SEED: u64 = 0x7edd_f10e;

/// Which logits may never be chosen, looked up once at load time.
#[derive(Clone)]
pub struct Rules {
    pub eot: u32,
    /// Probability of this token at the `<|startoftranscript|>` position is openai's no-speech score.
    pub no_speech: Option<u32>,
    /// Suppressed at every step: config `suppress_ids` and every special/timestamp id after
    /// `<|endoftext|>` (we decode without timestamps, and the tokenizer cannot print them).
    always: Vec<bool>,
    /// Extra ids suppressed at the first step only (config `suppress_ids_begin`: blank, eot).
    begin: Vec<u32>,
}

impl Rules {
    pub fn new(
        vocab: usize,
        eot: u32,
        no_speech: Option<u32>,
        suppress: &[u32],
        begin: &[u32],
    ) -> Self {
        let mut always: Vec<bool> = (0..vocab).map(|id| id > eot as usize).collect();
        for &id in suppress {
            if let Some(s) = always.get_mut(id as usize) {
                *s = true;
            }
        }
        Self {
            eot,
            no_speech,
            always,
            begin: begin.to_vec(),
        }
    }

    /// Sets suppressed logits to -inf; `first` marks the first sampled position.
    pub fn apply(&self, logits: &mut [f32], first: bool) {
        for (l, &s) in logits.iter_mut().zip(&self.always) {
            if s {
                *l = f32::NEG_INFINITY;
            }
        }
        if first {
            for &id in &self.begin {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// One decoding pass over one audio window.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Text tokens, without prompt or `<|endoftext|>`.
    pub tokens: Vec<u32>,
    /// Sum of log-probabilities of the chosen tokens (including the final eot).
    pub sum_logprob: f32,
    pub no_speech_prob: f32,
    pub temperature: f32,
}

impl Decoded {
    /// openai's average: divided by the token count plus one for the eot.
    pub fn avg_logprob(&self) -> f32 {
        self.sum_logprob / (self.tokens.len() + 1) as f32
    }
}

/// How often (in tokens) a running decode checks itself for runaway repetition.
const REPETITION_CHECK_EVERY: usize = 16;

/// Decodes from `prompt`, one token per step, reusing the state's cross-attention k/v.
/// `runaway` is asked every few tokens whether the text so far is already hopeless
/// (a repetition loop); if so decoding stops early, since the fallback will retry anyway.
pub fn decode_once(
    decoder: &Decoder,
    state: &mut DecoderState,
    prompt: &[u32],
    rules: &Rules,
    temperature: f32,
    rng: &mut StdRng,
    runaway: &dyn Fn(&[u32]) -> bool,
) -> Result<Decoded> {
    state.reset();
    let hidden = decoder.step(state, prompt)?;
    // Row 0 is the <|startoftranscript|> position, where openai reads the no-speech score.
    let no_speech_prob = match rules.no_speech {
        Some(id) => log_softmax_at(&decoder.logits(&hidden, 0), id).exp(),
        None => 0.0,
    };
    let mut logits = decoder.logits(&hidden, prompt.len() - 1);
    let budget = MAX_TOKENS.min(decoder.max_positions().saturating_sub(prompt.len() + 1));
    let mut tokens = Vec::new();
    let mut sum_logprob = 0f32;
    for i in 0..budget {
        rules.apply(&mut logits, i == 0);
        let token = if temperature > 0.0 {
            sample(&logits, temperature, rng)
        } else {
            argmax(&logits)
        };
        sum_logprob += log_softmax_at(&logits, token);
        if token == rules.eot {
            break;
        }
        tokens.push(token);
        if tokens.len() % REPETITION_CHECK_EVERY == 0 && runaway(&tokens) {
            break;
        }
        logits = decoder.logits(&decoder.step(state, &[token])?, 0);
    }
    Ok(Decoded {
        tokens,
        sum_logprob,
        no_speech_prob,
        temperature,
    })
}

/// A decode with its text and the two degeneracy measures.
struct Attempt {
    decoded: Decoded,
    text: String,
    compression_ratio: f32,
}

impl Attempt {
    fn acceptable(&self) -> bool {
        let repetitive = self.compression_ratio > COMPRESSION_RATIO_THRESHOLD;
        let unlikely = self.decoded.avg_logprob() < LOGPROB_THRESHOLD;
        !(repetitive || unlikely) || is_silence(&self.decoded)
    }
}

/// Greedy first; if the text is degenerate (too repetitive or too unlikely) retry at
/// rising temperatures, as openai-whisper does. Silence is not retried. If every
/// temperature fails, keep the most likely non-repetitive attempt (faster-whisper's
/// rule) rather than openai's last, most random one.
pub fn decode_with_fallback(
    decoder: &Decoder,
    state: &mut DecoderState,
    prompt: &[u32],
    rules: &Rules,
    detok: impl Fn(&[u32]) -> anyhow::Result<String>,
) -> anyhow::Result<(Decoded, String)> {
    let runaway = |tokens: &[u32]| {
        detok(tokens).is_ok_and(|t| compression_ratio(&t) > COMPRESSION_RATIO_THRESHOLD)
    };
    let mut attempts = Vec::new();
    for (i, &t) in TEMPERATURES.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(SEED + i as u64);
        let decoded = decode_once(decoder, state, prompt, rules, t, &mut rng, &runaway)?;
        let text = detok(&decoded.tokens)?;
        let attempt = Attempt {
            compression_ratio: compression_ratio(&text),
            decoded,
            text,
        };
        if attempt.acceptable() {
            return Ok((attempt.decoded, attempt.text));
        }
        tracing::debug!(
            temperature = t,
            avg_logprob = attempt.decoded.avg_logprob(),
            compression_ratio = attempt.compression_ratio,
            text = attempt.text,
            "whisper: degenerate decode, retrying"
        );
        attempts.push(attempt);
    }
    let by_logprob =
        |a: &&Attempt, b: &&Attempt| a.decoded.avg_logprob().total_cmp(&b.decoded.avg_logprob());
    let not_repetitive = attempts
        .iter()
        .filter(|a| a.compression_ratio <= COMPRESSION_RATIO_THRESHOLD)
        .max_by(by_logprob);
    let best = not_repetitive
        .or_else(|| attempts.iter().max_by(by_logprob))
        .expect("at least one temperature");
    Ok((best.decoded.clone(), best.text.clone()))
}

/// openai's skip rule: likely no speech and not confidently decoded.
pub fn is_silence(d: &Decoded) -> bool {
    d.no_speech_prob > NO_SPEECH_THRESHOLD && d.avg_logprob() <= LOGPROB_THRESHOLD
}

/// Bytes over zlib-compressed bytes: repetitive hallucinations compress very well.
pub fn compression_ratio(text: &str) -> f32 {
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(text.as_bytes()).expect("writing to a Vec");
    let compressed = z.finish().expect("writing to a Vec");
    text.len() as f32 / compressed.len() as f32
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn log_softmax_at(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    logits[id as usize] - max - sum.ln()
}

fn sample(logits: &[f32], temperature: f32, rng: &mut StdRng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = logits
        .iter()
        .map(|l| ((l - max) / temperature).exp())
        .collect();
    let mut r = rng.gen::<f32>() * weights.iter().sum::<f32>();
    for (i, w) in weights.iter().enumerate() {
        if r < *w {
            return i as u32;
        }
        r -= w;
    }
    argmax(logits)
}
