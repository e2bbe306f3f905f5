//! One reply being generated: its cache, the prompt tokens still to run, sampling and the
//! sentences handed out. [`ReplyModel::generate_in`] drives one alone; the batch generator
//! ([`super::batch`]) drives several through shared forward passes. Both go through the same
//! steps, so a reply does not depend on which of them produced it.

use std::time::Instant;

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling as CandleSampling};

use super::llama::{Input, KvCache, MAX_POSITIONS};
use super::text::SentenceStream;
use super::{prompt, Generated, Prompt, ReplyModel, Sampling, REPEAT_WINDOW};

/// Where generation stands when text is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Running,
    /// The model ended its turn (or gave enough sentences): its last words are a sentence.
    Finished,
    /// `max_tokens` ran out mid-sentence.
    CutOff,
}

pub(crate) struct Sequence {
    cache: KvCache,
    /// The turn's tokens that were not prepared; `run` of them have been run.
    prompt: Vec<u32>,
    run: usize,
    /// Prompt tokens in the pass now being run (0 when decoding).
    in_pass: usize,
    /// The token sampled last: the input of the next decoding pass.
    last: [u32; 1],
    settings: Sampling,
    max_tokens: usize,
    prompt_tokens: usize,
    decoding: Decoding,
    end: Option<End>,
}

impl Sequence {
    /// A turn of conversation `session` (if any) ready to run, from the state
    /// [`ReplyModel::prepare`] left for it when its start matches, else from the preamble.
    pub(crate) fn start(
        model: &ReplyModel,
        session: Option<&str>,
        prompt: &Prompt,
        settings: &Sampling,
        start: Instant,
    ) -> anyhow::Result<Self> {
        let inner = &model.inner;
        let (known, rest) = model.encode_turn(prompt)?;
        let prompt_tokens = inner.preamble_tokens + known.len() + rest.len();
        let mut decoding = Decoding::new(settings, start);
        decoding.stream = SentenceStream::new().with_child_name(prompt.child_name.as_deref());
        decoding.opening = prompt::reply_opening(prompt).unwrap_or_default();
        let prepared = session.and_then(|key| {
            let mut sessions = inner.sessions.lock().expect("sessions lock");
            sessions.get(key, &known)
        });
        let (cache, todo) = match prepared {
            Some(cache) => {
                decoding.reused_tokens = known.len();
                (cache, rest)
            }
            None => (inner.after_preamble.clone(), [known, rest].concat()),
        };
        if todo.is_empty() {
            // Logits come from running the turn's last token: there must be one to run.
            anyhow::bail!("a turn with no tokens of its own");
        }
        Ok(Self {
            cache,
            prompt: todo,
            run: 0,
            in_pass: 0,
            last: [0],
            settings: settings.clone(),
            max_tokens: settings.max_tokens.min(MAX_POSITIONS - prompt_tokens),
            prompt_tokens,
            decoding,
            end: None,
        })
    }

    pub(crate) fn is_done(&self) -> bool {
        self.end.is_some()
    }

    /// Prompt tokens still to run.
    pub(crate) fn prompt_left(&self) -> usize {
        self.prompt.len() - self.run
    }

    /// This sequence's part of the next pass: its sampled token, or up to `budget` prompt
    /// tokens (`None` when the budget is 0 and the prompt is not done).
    pub(crate) fn input(&mut self, budget: usize) -> Option<Input<'_>> {
        let left = self.prompt_left();
        self.in_pass = left.min(budget);
        if left > 0 && self.in_pass == 0 {
            return None;
        }
        let tokens = match left {
            0 => &self.last[..],
            _ => &self.prompt[self.run..self.run + self.in_pass],
        };
        Some(Input {
            cache: &mut self.cache,
            tokens,
            logits: self.in_pass == left,
        })
    }

    /// Take the pass's result (`logits` when [`Self::input`] asked for them): sample the next
    /// token and hand out sentences that completed.
    pub(crate) fn advance(
        &mut self,
        model: &ReplyModel,
        logits: Option<Tensor>,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<()> {
        if self.in_pass > 0 {
            self.run += std::mem::take(&mut self.in_pass);
            if self.prompt_left() > 0 {
                return Ok(());
            }
            self.decoding.prefill_ms = ms_since(self.decoding.start);
        }
        let logits = logits.ok_or_else(|| anyhow::anyhow!("a pass returned no logits"))?;
        if self.decoding.generated.len() >= self.max_tokens {
            // Running out of tokens leaves a sentence unfinished: it is dropped, never spoken.
            return self.stop(model, End::CutOff, on_sentence);
        }
        let next = self.sample(&logits)?;
        if model.inner.stop_ids.contains(&next) {
            return self.stop(model, End::Finished, on_sentence);
        }
        self.decoding.generated.push(next);
        self.last = [next];
        self.emit(model, End::Running, on_sentence)?;
        if self.decoding.stream.done() {
            return self.stop(model, End::Finished, on_sentence);
        }
        if self.decoding.generated.len() == self.max_tokens {
            return self.stop(model, End::CutOff, on_sentence);
        }
        Ok(())
    }

    /// Stop now (the listener went away): what was handed out stands, nothing more is.
    pub(crate) fn cancel(&mut self) {
        self.end.get_or_insert(End::CutOff);
    }

    pub(crate) fn finish(self) -> Generated {
        self.decoding.finish(self.prompt_tokens)
    }

    fn stop(
        &mut self,
        model: &ReplyModel,
        end: End,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<()> {
        self.end = Some(end);
        self.emit(model, end, on_sentence)
    }

    fn sample(&mut self, logits: &Tensor) -> anyhow::Result<u32> {
        let s = &self.settings;
        let generated = &self.decoding.generated;
        let logits = if s.repeat_penalty == 1.0 || generated.is_empty() {
            logits.clone()
        } else {
            let from = generated.len().saturating_sub(REPEAT_WINDOW);
            candle_transformers::utils::apply_repeat_penalty(
                logits,
                s.repeat_penalty,
                &generated[from..],
            )?
        };
        Ok(self.decoding.sampler.sample(&logits)?)
    }

    /// Decode what has been generated and pass on newly completed sentences (and, once the
    /// model has finished, its last unterminated one).
    fn emit(
        &mut self,
        model: &ReplyModel,
        end: End,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<()> {
        let state = &mut self.decoding;
        let raw = model
            .inner
            .tokenizer
            .decode(&state.generated, true)
            .map_err(|e| anyhow::anyhow!("detokenizing: {e}"))?;
        // The opening was part of the prompt, but it is the start of the reply.
        let raw = format!("{}{raw}", state.opening);
        let new = match end {
            End::Finished => state.stream.finish(&raw),
            End::Running | End::CutOff => state.stream.push(&raw),
        };
        for sentence in new {
            if state.first_sentence_ms.is_none() {
                state.first_sentence_ms = Some(ms_since(state.start));
            }
            on_sentence(&sentence);
            state.sentences.push(sentence);
        }
        Ok(())
    }
}

/// Per-reply decoding state.
struct Decoding {
    start: Instant,
    sampler: LogitsProcessor,
    stream: SentenceStream,
    generated: Vec<u32>,
    sentences: Vec<String>,
    first_sentence_ms: Option<f64>,
    prefill_ms: f64,
    reused_tokens: usize,
    /// Words the prompt already put at the start of the reply (see `prompt::reply_opening`).
    opening: String,
}

impl Decoding {
    fn new(s: &Sampling, start: Instant) -> Self {
        Self {
            start,
            sampler: LogitsProcessor::from_sampling(s.seed, candle_sampling(s)),
            stream: SentenceStream::new(),
            generated: Vec::new(),
            sentences: Vec::new(),
            first_sentence_ms: None,
            prefill_ms: 0.0,
            reused_tokens: 0,
            opening: String::new(),
        }
    }

    fn finish(self, prompt_tokens: usize) -> Generated {
        let total_ms = ms_since(self.start);
        Generated {
            text: self.sentences.join(" "),
            tokens: self.generated.len(),
            prompt_tokens,
            reused_tokens: self.reused_tokens,
            prefill_ms: self.prefill_ms,
            first_sentence_ms: self.first_sentence_ms.unwrap_or(total_ms),
            total_ms,
            sentences: self.sentences,
            provenance: Default::default(),
        }
    }
}

fn candle_sampling(s: &Sampling) -> CandleSampling {
    if s.temperature <= 0.0 {
        return CandleSampling::ArgMax;
    }
    match s.top_p {
        Some(p) if p > 0.0 && p < 1.0 => CandleSampling::TopP {
            p,
            temperature: s.temperature,
        },
        _ => CandleSampling::All {
            temperature: s.temperature,
        },
    }
}

pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
