//! Reply generation, whichever engine writes it: the trait the answering stage calls.
//! The local engine is SmolLM2 on candle ([`crate::llm`]), one reply at a time
//! ([`ReplyModel`]) or several conversations' replies in one shared batch ([`BatchedModel`]);
//! [`crate::openai`] asks any OpenAI-compatible server and hands a turn to the local engine when
//! the server fails. Engines are chosen by `answering.backend` in the config.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::llm::{BatchSettings, Batcher, Generated, Prompt, Query, ReplyModel, StepRunner};

/// Writes replies. One instance serves every reply thread of a process.
pub trait ReplyEngine: Send + Sync {
    /// What `reply.backend` reports: `local`, `openai`, …
    fn name(&self) -> &'static str;
    /// Whether the engine answers in this language itself (otherwise the curated bank does).
    fn serves(&self, language: &str) -> bool;
    /// Write a reply to the query's prompt, handing each finished, cleaned sentence to
    /// `on_sentence` as soon as it is complete.
    fn generate(
        &self,
        query: Query<'_>,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Generated>;
    /// Reply threads this engine wants in a process that may keep `cores` cores busy. The
    /// default, one conversation per thread, wants one per core; an engine that steps
    /// several conversations together on one thread asks for fewer.
    fn threads_wanted(&self, cores: usize) -> usize {
        cores
    }
    /// Whether a reply computes on the calling thread (so each call needs a core of the
    /// budget while it runs), rather than waiting for work done elsewhere: a batch thread
    /// that takes its own cores, or a server.
    fn computes_on_caller(&self) -> bool {
        true
    }
    /// The local model whose prepared conversation states this engine's turns start from,
    /// if any. The preparing methods below work on it by default, so an engine built on the
    /// local model only says which one.
    fn local_model(&self) -> Option<&ReplyModel> {
        None
    }
    /// Whether [`ReplyEngine::prepare`] does anything (a preparing thread runs only then).
    fn prepares(&self) -> bool {
        self.local_model().is_some()
    }
    /// How many conversations' prepared states to keep (called once, before any prepare).
    fn keep_prepared(&self, conversations: usize) {
        if let Some(model) = self.local_model() {
            model.keep_sessions(conversations);
        }
    }
    /// Between turns: run what `session`'s next prompt starts with and keep the state.
    /// Returns the tokens run.
    fn prepare(&self, session: &str, next: &Prompt) -> anyhow::Result<usize> {
        match self.local_model() {
            Some(model) => model.prepare(session, next),
            None => Ok(0),
        }
    }
    /// Drop these conversations' prepared state.
    fn forget(&self, sessions: &[String]) {
        if let Some(model) = self.local_model() {
            model.forget_sessions(sessions);
        }
    }
}

impl ReplyEngine for ReplyModel {
    fn name(&self) -> &'static str {
        "local"
    }

    fn serves(&self, language: &str) -> bool {
        crate::reply_bank::model_serves(language)
    }

    fn generate(
        &self,
        query: Query<'_>,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Generated> {
        self.generate_in(query, on_sentence)
    }

    fn local_model(&self) -> Option<&ReplyModel> {
        Some(self)
    }
}

/// The local model with replies generated in shared batches: each [`Batcher`] thread runs a
/// forward pass for the next token of every conversation in its batch, so the caller's
/// thread only waits for its sentences (and speaks them). The forward is one thread, so a
/// process runs one batch per core it may use, and a reply joins the least busy. Cheap to
/// clone: clones share the batches. Prepared prefixes are the model's, so they are reused
/// inside any batch as they are one at a time.
#[derive(Clone)]
pub struct BatchedModel {
    model: ReplyModel,
    batches: Arc<Vec<Batch>>,
    /// Replies in one batch.
    places: usize,
}

/// One batch thread and how many replies it has in hand (in generation or waiting).
struct Batch {
    batcher: Batcher,
    replies: AtomicUsize,
}

impl BatchedModel {
    /// Start one batch thread; it ends when every clone is dropped.
    pub fn spawn(model: ReplyModel, settings: BatchSettings) -> std::io::Result<Self> {
        Self::spawn_on(model, settings, vec![Arc::new(crate::llm::Inline)])
    }

    /// One batch thread per runner, each pass of a batch run by its runner (under the
    /// process's core permits). Runners are not shared: each has the thread pool its
    /// passes run in, and two batches in one pool would take turns.
    pub fn spawn_on(
        model: ReplyModel,
        settings: BatchSettings,
        runners: Vec<Arc<dyn StepRunner>>,
    ) -> std::io::Result<Self> {
        assert!(!runners.is_empty(), "at least one batch");
        let batches = runners
            .into_iter()
            .map(|runner| {
                let batcher = Batcher::spawn_on(model.clone(), settings, runner)?;
                Ok(Batch {
                    batcher,
                    replies: AtomicUsize::new(0),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            model,
            batches: Arc::new(batches),
            places: settings.max_sequences,
        })
    }

    /// The batch with the fewest replies in hand.
    fn least_busy(&self) -> &Batch {
        self.batches
            .iter()
            .min_by_key(|b| b.replies.load(Ordering::Relaxed))
            .expect("at least one batch")
    }
}

impl ReplyEngine for BatchedModel {
    fn name(&self) -> &'static str {
        "local"
    }

    /// A caller thread per place in every batch, or the batches never fill: each waits
    /// for its reply's sentences and speaks them.
    fn threads_wanted(&self, _cores: usize) -> usize {
        self.places * self.batches.len()
    }

    fn computes_on_caller(&self) -> bool {
        false
    }

    fn serves(&self, language: &str) -> bool {
        self.model.serves(language)
    }

    fn generate(
        &self,
        query: Query<'_>,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Generated> {
        let batch = self.least_busy();
        batch.replies.fetch_add(1, Ordering::Relaxed);
        let result = batch.batcher.generate_in(query, on_sentence);
        batch.replies.fetch_sub(1, Ordering::Relaxed);
        result
    }

    fn local_model(&self) -> Option<&ReplyModel> {
        Some(&self.model)
    }
}

/// Who wrote a reply when an engine may hand a turn to another, and what it cost the server.
/// Engines that always write their own replies leave it at its default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// [`ReplyEngine::name`] of the engine that wrote the sentences, when it was not the
    /// engine called (`local` for an `openai` engine whose server failed).
    pub engine: Option<&'static str>,
    /// Why the engine called did not write (all of) the reply.
    pub fallback: Option<FallbackReason>,
    /// Requests sent to a server for this reply, and how many of them failed.
    pub requests: u32,
    pub failures: u32,
    /// The server's circuit breaker after this reply; `None` when there is no server.
    pub breaker: Option<BreakerState>,
    /// This reply's failure opened the breaker.
    pub breaker_opened: bool,
}

/// Why a reply engine backed by a server did not answer itself (`reply.backend_fallback_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// No connection (refused, unresolvable, reset before a response).
    Unreachable,
    /// No first token, or no next piece of the stream, within `timeout_ms`; or the whole
    /// reply took longer than `reply_timeout_ms`.
    Timeout,
    /// The server answered with an HTTP error status (4xx, 5xx).
    HttpError,
    /// The stream broke off or could not be read (connection lost, malformed events).
    BrokenStream,
    /// The server refused (a content filter, a refusal) or said nothing speakable.
    Refused,
    /// The circuit breaker is open: the server failed repeatedly and is not asked for now.
    BreakerOpen,
    /// Every one of `max_concurrency` requests was in flight until the first-token deadline.
    Busy,
}

/// A circuit breaker's state (the `llm_breaker` gauge: 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Requests go to the server.
    Closed,
    /// The cool-down is over: one probe request is in flight or may go.
    HalfOpen,
    /// The server failed repeatedly: no requests until the cool-down is over.
    Open,
}

impl BreakerState {
    /// The gauge value in the metrics snapshot.
    pub fn gauge(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}
