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

/// One decode in progress: the tokens chosen so far and when to stop. Shared by the
/// single-sequence loop and the batched one, so both choose exactly the same tokens.
struct Running {
    tokens: Vec<u32>,
    sum_logprob: f32,
    no_speech_prob: f32,
    temperature: f32,
    steps: usize,
    budget: usize,
}

impl Running {
    /// After the prompt has been fed: `hidden` holds its rows.
    fn start(decoder: &Decoder, hidden: &[f32], prompt_len: usize, rules: &Rules, t: f32) -> Self {
        // Row 0 is the <|startoftranscript|> position, where openai reads the no-speech score.
        let no_speech_prob = match rules.no_speech {
            Some(id) => log_softmax_at(&decoder.logits(hidden, 0), id).exp(),
            None => 0.0,
        };
        Self {
            tokens: Vec::new(),
            sum_logprob: 0.0,
            no_speech_prob,
            temperature: t,
            steps: 0,
            budget: MAX_TOKENS.min(decoder.max_positions().saturating_sub(prompt_len + 1)),
        }
    }

    /// The next token to feed, or `None` when the decode is over (eot, budget, runaway).
    fn choose(
        &mut self,
        logits: &mut [f32],
        rules: &Rules,
        rng: &mut StdRng,
        runaway: &dyn Fn(&[u32]) -> bool,
    ) -> Option<u32> {
        if self.steps == self.budget {
            return None;
        }
        rules.apply(logits, self.steps == 0);
        self.steps += 1;
        let token = if self.temperature > 0.0 {
            sample(logits, self.temperature, rng)
        } else {
            argmax(logits)
        };
        self.sum_logprob += log_softmax_at(logits, token);
        if token == rules.eot {
            return None;
        }
        self.tokens.push(token);
        // A hopeless text (a repetition loop) stops early: the fallback will retry anyway.
        if self.tokens.len().is_multiple_of(REPETITION_CHECK_EVERY) && runaway(&self.tokens) {
            return None;
        }
        Some(token)
    }

    fn finish(self) -> Decoded {
        Decoded {
            tokens: self.tokens,
            sum_logprob: self.sum_logprob,
            no_speech_prob: self.no_speech_prob,
            temperature: self.temperature,
        }
    }
}

/// Decodes from `prompt`, one token per step, reusing the state's cross-attention k/v.
/// `runaway` is asked every few tokens whether the text so far is already hopeless.
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
    let mut run = Running::start(decoder, &hidden, prompt.len(), rules, temperature);
    let mut logits = decoder.logits(&hidden, prompt.len() - 1);
    while let Some(token) = run.choose(&mut logits, rules, rng, runaway) {
        logits = decoder.logits(&decoder.step(state, &[token])?, 0);
    }
    Ok(run.finish())
}

/// Greedy decodes of several windows at once, `prompts[i]` for `states[i]`: each step feeds
/// one token of every unfinished sequence through the decoder together, so the weights are
/// read once per step for the whole batch. Gives the same tokens as [`decode_once`] at
/// temperature 0 on each window alone.
pub fn decode_greedy_batch(
    decoder: &Decoder,
    states: &mut [DecoderState],
    prompts: &[Vec<u32>],
    rules: &Rules,
    runaway: &dyn Fn(&[u32]) -> bool,
) -> Result<Vec<Decoded>> {
    let mut runs = Vec::with_capacity(states.len());
    let mut logits = Vec::with_capacity(states.len());
    for (state, prompt) in states.iter_mut().zip(prompts) {
        state.reset();
        let hidden = decoder.step(state, prompt)?;
        runs.push(Running::start(decoder, &hidden, prompt.len(), rules, 0.0));
        logits.push(decoder.logits(&hidden, prompt.len() - 1));
    }
    // Greedy never draws from it; `choose` takes one for the sampled case.
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut active: Vec<usize> = (0..states.len()).collect();
    while !active.is_empty() {
        let next: Vec<(usize, u32)> = active
            .iter()
            .filter_map(|&i| Some((i, runs[i].choose(&mut logits[i], rules, &mut rng, runaway)?)))
            .collect();
        active = next.iter().map(|&(i, _)| i).collect();
        if active.is_empty() {
            break;
        }
        let mut batch: Vec<&mut DecoderState> = states
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| active.binary_search(i).is_ok())
            .map(|(_, s)| s)
            .collect();
        let tokens: Vec<u32> = next.iter().map(|&(_, t)| t).collect();
        let rows = decoder.logits_rows(&decoder.step_batch(&mut batch, &tokens)?);
        let vocab = rows.len() / tokens.len();
        for (row, &i) in rows.chunks_exact(vocab).zip(&active) {
            logits[i] = row.to_vec();
        }
    }
    Ok(runs.into_iter().map(Running::finish).collect())
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
    fallback_from(decoder, state, prompt, rules, detok, None)
}

/// [`decode_with_fallback`] when the greedy decode has already been made (in a batch):
/// it is judged first, and only a degenerate one is retried at higher temperatures.
pub fn fallback_from(
    decoder: &Decoder,
    state: &mut DecoderState,
    prompt: &[u32],
    rules: &Rules,
    detok: impl Fn(&[u32]) -> anyhow::Result<String>,
    mut greedy: Option<Decoded>,
) -> anyhow::Result<(Decoded, String)> {
    let runaway = |tokens: &[u32]| is_runaway(&detok, tokens);
    let mut attempts = Vec::new();
    for (i, &t) in TEMPERATURES.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(SEED + i as u64);
        let decoded = match greedy.take() {
            Some(d) => d,
            None => decode_once(decoder, state, prompt, rules, t, &mut rng, &runaway)?,
        };
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

/// The text so far is already too repetitive to keep (checked while decoding).
pub fn is_runaway(detok: &dyn Fn(&[u32]) -> anyhow::Result<String>, tokens: &[u32]) -> bool {
    detok(tokens).is_ok_and(|t| compression_ratio(&t) > COMPRESSION_RATIO_THRESHOLD)
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
