//! Replies from SmolLM2-135M-Instruct (Q4_1 GGUF) on candle, with the project's own llama
//! forward ([`llama`]) so that several replies can share one pass ([`batch`]).
//!
//! Pipeline per turn: [`Prompt`] → ChatML text ([`prompt`]) → token ids (tokenizer rebuilt
//! from the GGUF, [`tokenizer`]) → run the turn on top of the preamble's saved state → sample
//! token by token → decoded text split into cleaned sentences as they complete
//! ([`text::SentenceStream`]) → `on_sentence`.
//!
//! The weights are loaded once and shared. The keys and values of the fixed preamble (persona,
//! rules, examples) are computed at load and frozen; each reply starts from them (shared, not
//! copied) with a cache of its own: calls on different threads never share mutable state.
//!
//! A conversation's history, and the start of the next turn's note (who the child is, the
//! language), are known before the child speaks again, so [`ReplyModel::prepare`] runs
//! them between turns and keeps the state (a few per process, least recently used
//! dropped). A turn whose known tokens match starts from there and runs only the mood and
//! the utterance: on two cores the prompt is most of the wait for the first sentence.

pub mod batch;
pub mod llama;
pub mod prompt;
mod sequence;
pub mod text;
pub mod tokenizer;
pub mod weights;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use candle_core::Device;
use tokenizers::Tokenizer;

pub use batch::{
    BatchGenerator, BatchSettings, Batcher, Inline, ReplyEvent, ReplySink, Request, StepRunner,
};
use llama::{Input, KvCache, Llama};
pub use prompt::Prompt;
use sequence::Sequence;
pub use weights::WeightFormat;

/// Directory under the models dir, and the file in it (installed by scripts/setup.d/30-answering.sh).
pub const MODEL_DIR: &str = "smollm2";
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Prompt tokens kept at most: old history turns are dropped to fit. Prefill cost grows with
/// it, and on 2 cores the prompt dominates the first-sentence latency.
pub const PROMPT_TOKEN_BUDGET: usize = 768;
/// Longest utterance (characters) put in a prompt; a 30 s transcript is far shorter.
const MAX_UTTERANCE_CHARS: usize = 600;
/// Repeat penalty looks back this many generated tokens.
const REPEAT_WINDOW: usize = 64;

/// What a reply engine is asked to answer: one turn's prompt and decoding settings.
/// `session` names the conversation, for engines that keep state between turns.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub session: Option<&'a str>,
    pub prompt: &'a Prompt,
    pub sampling: &'a Sampling,
}

/// Decoding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (deterministic).
    pub temperature: f64,
    /// Nucleus sampling when set and `temperature > 0`.
    pub top_p: Option<f64>,
    pub seed: u64,
    pub max_tokens: usize,
    /// Above 1 discourages repeating generated tokens (1 = off). Prompt tokens are never penalised,
    /// so the child's name stays as likely as the prompt makes it.
    pub repeat_penalty: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: None,
            seed: 0,
            max_tokens: 60,
            repeat_penalty: 1.1,
        }
    }
}

/// A finished reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generated {
    /// The sentences joined by single spaces: exactly what `on_sentence` received.
    pub text: String,
    pub sentences: Vec<String>,
    /// Tokens generated (without the stop token).
    pub tokens: usize,
    pub prompt_tokens: usize,
    /// Prompt tokens (the history) taken from the conversation's prepared state, not run.
    pub reused_tokens: usize,
    /// Tokenizing and running this turn's prompt (after the preamble) through the model.
    pub prefill_ms: f64,
    /// From the call to the first `on_sentence` (total_ms when there was none).
    pub first_sentence_ms: f64,
    pub total_ms: f64,
    /// Who wrote it, for engines that may hand a turn to another (default: the engine called).
    pub provenance: crate::reply::Provenance,
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("reply model file {0} not found (run scripts/setup.sh)")]
    MissingModel(PathBuf),
    #[error("reply model's chat template is not ChatML (<|im_start|>): unsupported model")]
    NotChatMl,
    #[error("prompt of {0} tokens does not fit even without history")]
    PromptTooLong(usize),
}

/// SmolLM2 reply generator. Cheap to clone; `Send + Sync`; weights loaded once.
#[derive(Clone)]
pub struct ReplyModel {
    inner: Arc<Inner>,
}

struct Inner {
    llama: Llama,
    /// Keys and values of the preamble, frozen: every reply starts from them.
    after_preamble: KvCache,
    preamble_tokens: usize,
    tokenizer: Tokenizer,
    /// Control tokens: generating any of them ends the reply.
    stop_ids: Vec<u32>,
    sessions: Mutex<Sessions>,
}

/// Caches after a conversation's history, by conversation, least recently used dropped
/// beyond `capacity`. Each holds the keys and values of its prompt after the preamble
/// (~46 KB per token for SmolLM2-135M; the preamble's are shared).
#[derive(Default)]
struct Sessions {
    capacity: usize,
    tick: u64,
    states: HashMap<String, Session>,
}

struct Session {
    /// Token ids of the history this state has run (after the preamble).
    history: Vec<u32>,
    state: KvCache,
    used: u64,
}

impl Sessions {
    /// The state after `history`, if one was prepared for exactly that history.
    fn get(&mut self, key: &str, history: &[u32]) -> Option<KvCache> {
        self.tick += 1;
        let s = self.states.get_mut(key)?;
        if s.history != history {
            return None;
        }
        s.used = self.tick;
        Some(s.state.clone())
    }

    fn holds(&self, key: &str, history: &[u32]) -> bool {
        self.states.get(key).is_some_and(|s| s.history == history)
    }

    fn put(&mut self, key: &str, history: Vec<u32>, state: KvCache) {
        if self.capacity == 0 {
            return;
        }
        self.tick += 1;
        self.states.remove(key);
        while self.states.len() >= self.capacity {
            let Some(oldest) = self
                .states
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.states.remove(&oldest);
        }
        let used = self.tick;
        self.states.insert(
            key.to_string(),
            Session {
                history,
                state,
                used,
            },
        );
    }
}

impl ReplyModel {
    /// Load `models_dir/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` onto the CPU
    /// (matrices re-encoded as Q8_0 for speed: see [`weights`]).
    pub fn load(models_dir: &Path) -> anyhow::Result<Self> {
        Self::load_with(models_dir, WeightFormat::default())
    }

    pub fn load_with(models_dir: &Path, format: WeightFormat) -> anyhow::Result<Self> {
        let path = models_dir.join(MODEL_DIR).join(MODEL_FILE);
        if !path.exists() {
            return Err(LlmError::MissingModel(path).into());
        }
        let device = Device::Cpu;
        let mut reader = BufReader::new(File::open(&path)?);
        let ct = gguf_file::Content::read(&mut reader)
            .with_context(|| format!("reading {}", path.display()))?;
        check_chat_template(&ct)?;
        let tok = tokenizer::from_gguf(&ct)?;
        let tensors = weights::tensors(&ct, &mut reader, &device, format)?;
        let llama = Llama::new(&ct, tensors, &device)?;
        let preamble = encode(&tok.tokenizer, &prompt::preamble())?;
        let mut after_preamble = KvCache::default();
        run(&llama, &mut after_preamble, &preamble)?;
        let inner = Inner {
            llama,
            after_preamble,
            preamble_tokens: preamble.len(),
            tokenizer: tok.tokenizer,
            stop_ids: tok.special_ids,
            sessions: Mutex::new(Sessions::default()),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// How many conversations' prepared states to keep (0, the default, keeps none).
    pub fn keep_sessions(&self, conversations: usize) {
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        sessions.capacity = conversations;
        sessions.states.clear();
    }

    /// Run what the next turn of `session` is known to start with now: its history and the
    /// profile part of its note (`next` is that turn without its utterance and mood). The
    /// next turn whose start matches token for token then runs only the rest. Returns the
    /// tokens run (0 when the state is already there or states are not kept).
    pub fn prepare(&self, session: &str, next: &Prompt) -> anyhow::Result<usize> {
        let ids = self.known_tokens(next, next.history.len())?;
        {
            let sessions = self.inner.sessions.lock().expect("sessions lock");
            if sessions.capacity == 0 || sessions.holds(session, &ids) {
                return Ok(0);
            }
        }
        if self.inner.preamble_tokens + ids.len() >= PROMPT_TOKEN_BUDGET {
            return Ok(0); // the turn would drop old history to fit, so it could not match
        }
        let mut cache = self.inner.after_preamble.clone();
        run(&self.inner.llama, &mut cache, &ids)?;
        let n = ids.len();
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        sessions.put(session, ids, cache);
        Ok(n)
    }

    /// Drop the prepared states of these conversations (a child's profile was deleted).
    pub fn forget_sessions(&self, sessions: &[String]) {
        let mut s = self.inner.sessions.lock().expect("sessions lock");
        for key in sessions {
            s.states.remove(key);
        }
    }

    /// Generate a reply, calling `on_sentence` with each sentence as soon as it is complete
    /// (at most three; emojis, markdown and role markup removed; a sentence cut off by
    /// `max_tokens` is dropped). Sentences asking for
    /// personal details or claiming the child's name are dropped, so `text` can be empty:
    /// speak `reply_bank::fallback_reply` then. English only (see `reply_bank::model_serves`).
    pub fn generate(
        &self,
        prompt: &Prompt,
        settings: &Sampling,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Generated> {
        let query = Query {
            session: None,
            prompt,
            sampling: settings,
        };
        self.generate_in(query, on_sentence)
    }

    /// [`Self::generate`] for a turn of conversation `session`: starts from the state
    /// [`Self::prepare`] left when it ran this prompt's start. The reply is the same.
    pub fn generate_in(
        &self,
        query: Query<'_>,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Generated> {
        let Query {
            session,
            prompt,
            sampling,
        } = query;
        let mut seq = Sequence::start(self, session, prompt, sampling, Instant::now())?;
        while !seq.is_done() {
            let logits = match seq.input(usize::MAX) {
                Some(input) => self.inner.llama.forward(&mut [input])?,
                None => unreachable!("an unlimited budget always runs something"),
            };
            let logits = logits.map(|l| llama::logits_row(&l, 0)).transpose()?;
            seq.advance(self, logits, on_sentence)?;
        }
        Ok(seq.finish())
    }

    /// Token ids of the turn (everything after the preamble) as (known between turns: the
    /// history and the note's head; the rest), dropping the oldest history turns until the
    /// whole prompt fits the budget. The parts are tokenized apart, as [`Self::prepare`]
    /// tokenizes them, so a prepared start matches token for token.
    fn encode_turn(&self, prompt: &Prompt) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
        let mut prompt = prompt.clone();
        prompt.utterance = truncate_chars(&prompt.utterance, MAX_UTTERANCE_CHARS);
        let rest = encode(&self.inner.tokenizer, &prompt::current_tail(&prompt))?;
        let mut keep = prompt.history.len();
        loop {
            let known = self.known_tokens(&prompt, keep)?;
            let total = self.inner.preamble_tokens + known.len() + rest.len();
            if total <= PROMPT_TOKEN_BUDGET {
                return Ok((known, rest));
            }
            if keep == 0 {
                return Err(LlmError::PromptTooLong(total).into());
            }
            keep -= 1;
        }
    }

    /// The last `keep` turns of history, then the head of the turn's note.
    fn known_tokens(&self, p: &Prompt, keep: usize) -> anyhow::Result<Vec<u32>> {
        let skip = p.history.len() - keep.min(p.history.len());
        let tok = &self.inner.tokenizer;
        let mut ids = encode(tok, &prompt::history(&p.history[skip..]))?;
        ids.extend(encode(tok, &prompt::current_head(p))?);
        Ok(ids)
    }
}

/// We hard-code ChatML; refuse a model whose own template is something else.
fn check_chat_template(ct: &gguf_file::Content) -> Result<(), LlmError> {
    let template = ct
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok());
    match template {
        Some(t) if t.contains("<|im_start|>") => Ok(()),
        _ => Err(LlmError::NotChatMl),
    }
}

fn encode(tokenizer: &Tokenizer, text: &str) -> anyhow::Result<Vec<u32>> {
    let enc = tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizing prompt: {e}"))?;
    Ok(enc.get_ids().to_vec())
}

/// Run `ids` on top of `cache` as a prefix others start from: the cache is frozen after it.
fn run(llama: &Llama, cache: &mut KvCache, ids: &[u32]) -> anyhow::Result<()> {
    if !ids.is_empty() {
        let input = Input {
            cache,
            tokens: ids,
            logits: false,
        };
        llama.forward(&mut [input])?;
    }
    cache.freeze();
    Ok(())
}

fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
