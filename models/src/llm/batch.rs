//! Continuous batching: one forward pass serves the next token of every reply in flight,
//! replies joining and leaving between passes as they start and finish (as llama.cpp's
//! server and vLLM do). Each weight tile is loaded once per pass for all of them, so eight
//! replies' next tokens cost about twice one reply's (docs/performance.md).
//!
//! [`BatchGenerator`] is owned by one thread and driven by [`BatchGenerator::step`]; requests
//! are submitted between steps. [`Batcher`] runs one on a thread of its own and gives pool
//! threads a blocking [`Batcher::generate_in`] with the signature of
//! [`ReplyModel::generate_in`], sentences handed to the caller's thread as they complete.
//!
//! A joining reply's prompt (what its prepared prefix does not cover) runs in chunks of at
//! most [`BatchSettings::prefill_chunk`] tokens per pass, in the same pass as the others'
//! next tokens: the others slow down while it runs, but never stop for a whole prompt.
//! Replies already being spoken need only a few tokens a second to stay ahead of the speech,
//! while the joining child waits for the prompt, so the chunk is generous. Joiners are served
//! first come, first served.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvError, Sender};
use std::sync::Arc;
use std::time::Instant;

use super::llama::{logits_row, Input};
use super::sequence::Sequence;
use super::{Generated, Prompt, Query, ReplyModel, Sampling};

/// How many replies share a pass, and how much prompt a pass may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Replies generated at once; more wait for a place.
    pub max_sequences: usize,
    /// Prompt tokens of joining replies run per pass, besides one token of each other reply.
    pub prefill_chunk: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_sequences: 8,
            prefill_chunk: 128,
        }
    }
}

/// Where the batch thread runs each pass. The thread is one per process and does the
/// whole stage's computing, so a process with a core budget runs each pass under its core
/// permits (inside a thread pool as wide as the cores it got), and gives them back between
/// passes so other stages are not shut out for a whole batch.
pub trait StepRunner: Send + Sync {
    fn run(&self, step: &mut (dyn FnMut() + Send));
}

/// Runs each pass on the batch thread as it is (rayon's global pool for its products).
pub struct Inline;

impl StepRunner for Inline {
    fn run(&self, step: &mut (dyn FnMut() + Send)) {
        step()
    }
}

/// Where a reply's sentences and result go. Called on the batch thread: keep it short (send
/// to a channel), or every reply in the batch waits.
pub trait ReplySink: Send {
    /// A complete sentence; return false to stop generating (nobody is listening).
    fn sentence(&mut self, sentence: &str) -> bool;
    /// The reply is done (or failed); called once.
    fn finished(&mut self, result: anyhow::Result<Generated>);
}

/// What a channel sink receives.
#[derive(Debug)]
pub enum ReplyEvent {
    Sentence(String),
    Done(anyhow::Result<Generated>),
}

/// A channel is a sink: generation stops when the receiver is dropped.
impl ReplySink for Sender<ReplyEvent> {
    fn sentence(&mut self, sentence: &str) -> bool {
        self.send(ReplyEvent::Sentence(sentence.to_string()))
            .is_ok()
    }

    fn finished(&mut self, result: anyhow::Result<Generated>) {
        let _ = self.send(ReplyEvent::Done(result));
    }
}

/// A reply to generate: the arguments of [`ReplyModel::generate_in`] and a sink.
pub struct Request {
    pub session: Option<String>,
    pub prompt: Prompt,
    pub sampling: Sampling,
    pub sink: Box<dyn ReplySink>,
    /// Latencies in [`Generated`] count from here, waiting for a place included.
    pub submitted: Instant,
}

impl Request {
    pub fn new(
        session: Option<&str>,
        prompt: Prompt,
        sampling: Sampling,
        sink: Box<dyn ReplySink>,
    ) -> Self {
        Self {
            session: session.map(String::from),
            prompt,
            sampling,
            sink,
            submitted: Instant::now(),
        }
    }
}

struct Active {
    seq: Sequence,
    sink: Box<dyn ReplySink>,
}

/// Generates several replies at once, one pass per [`Self::step`].
pub struct BatchGenerator {
    model: ReplyModel,
    settings: BatchSettings,
    waiting: VecDeque<Request>,
    /// In the order they joined: the earliest joiner's prompt runs first.
    active: Vec<Active>,
    passes: u64,
}

impl BatchGenerator {
    pub fn new(model: ReplyModel, settings: BatchSettings) -> Self {
        let settings = BatchSettings {
            max_sequences: settings.max_sequences.max(1),
            prefill_chunk: settings.prefill_chunk.max(1),
        };
        Self {
            model,
            settings,
            waiting: VecDeque::new(),
            active: Vec::new(),
            passes: 0,
        }
    }

    /// Queue a reply; it joins at the next step with a free place.
    pub fn submit(&mut self, request: Request) {
        self.waiting.push_back(request);
    }

    /// Replies being generated.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Replies waiting for a place.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.active.is_empty() && self.waiting.is_empty()
    }

    /// Forward passes run so far.
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// Let waiting replies join, run one pass over every active reply, hand out what
    /// completed and let finished replies leave. Does nothing when idle.
    pub fn step(&mut self) {
        self.admit();
        if self.active.is_empty() {
            return;
        }
        if let Err(e) = self.pass() {
            // A failed pass leaves every cache in it unknown: all its replies fail.
            tracing::warn!(error = %e, replies = self.active.len(), "batched pass failed");
            for mut a in self.active.drain(..) {
                a.sink
                    .finished(Err(anyhow::anyhow!("batched pass failed: {e}")));
            }
            return;
        }
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].seq.is_done() {
                let mut done = self.active.remove(i);
                done.sink.finished(Ok(done.seq.finish()));
            } else {
                i += 1;
            }
        }
    }

    /// Serve requests from `requests` until it is closed and every reply is done, each
    /// pass run by `runner`.
    pub fn serve(mut self, requests: Receiver<Request>, runner: &dyn StepRunner) {
        loop {
            if self.is_idle() {
                match requests.recv() {
                    Ok(r) => self.submit(r),
                    Err(RecvError) => return,
                }
            }
            while let Ok(r) = requests.try_recv() {
                self.submit(r);
            }
            runner.run(&mut || self.step());
        }
    }

    fn admit(&mut self) {
        while self.active.len() < self.settings.max_sequences {
            let Some(r) = self.waiting.pop_front() else {
                return;
            };
            let Request {
                session,
                prompt,
                sampling,
                mut sink,
                submitted,
            } = r;
            match Sequence::start(
                &self.model,
                session.as_deref(),
                &prompt,
                &sampling,
                submitted,
            ) {
                Ok(seq) => self.active.push(Active { seq, sink }),
                Err(e) => sink.finished(Err(e)),
            }
        }
    }

    fn pass(&mut self) -> anyhow::Result<()> {
        let mut budget = self.settings.prefill_chunk;
        let mut inputs: Vec<Input<'_>> = Vec::with_capacity(self.active.len());
        let mut in_pass = Vec::with_capacity(self.active.len());
        for (i, a) in self.active.iter_mut().enumerate() {
            let prompt = a.seq.prompt_left();
            if let Some(input) = a.seq.input(budget) {
                budget -= prompt.min(budget);
                in_pass.push((i, input.logits));
                inputs.push(input);
            }
        }
        let logits = self.model.inner.llama.forward(&mut inputs)?;
        drop(inputs);
        self.passes += 1;
        let mut row = 0;
        for (i, wants) in in_pass {
            let a = &mut self.active[i];
            let mine = match (&logits, wants) {
                (Some(l), true) => {
                    row += 1;
                    Some(logits_row(l, row - 1)?)
                }
                _ => None,
            };
            let mut listening = true;
            let sink = &mut a.sink;
            a.seq.advance(&self.model, mine, &mut |s| {
                listening = listening && sink.sentence(s)
            })?;
            if !listening {
                a.seq.cancel();
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the reply batch thread has stopped")]
pub struct BatcherGone;

/// A [`BatchGenerator`] on a thread of its own; cheap to clone, one per process. The thread
/// ends when every clone is dropped and the replies in flight are done.
#[derive(Clone)]
pub struct Batcher {
    requests: Sender<Request>,
}

impl Batcher {
    pub fn spawn(model: ReplyModel, settings: BatchSettings) -> std::io::Result<Self> {
        Self::spawn_on(model, settings, Arc::new(Inline))
    }

    /// Like [`Batcher::spawn`], each pass run by `runner` (under a core budget).
    pub fn spawn_on(
        model: ReplyModel,
        settings: BatchSettings,
        runner: Arc<dyn StepRunner>,
    ) -> std::io::Result<Self> {
        let (requests, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("reply-batch".into())
            .spawn(move || BatchGenerator::new(model, settings).serve(queue, runner.as_ref()))?;
        Ok(Self { requests })
    }

    pub fn submit(&self, request: Request) -> Result<(), BatcherGone> {
        self.requests.send(request).map_err(|_| BatcherGone)
    }

    /// [`ReplyModel::generate_in`] in the shared batch: blocks until the reply is done,
    /// calling `on_sentence` on this thread with each sentence as soon as it is complete.
    pub fn generate_in(
        &self,
        query: Query<'_>,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Generated> {
        let (sink, events) = mpsc::channel();
        let request = Request::new(
            query.session,
            query.prompt.clone(),
            query.sampling.clone(),
            Box::new(sink),
        );
        self.submit(request)?;
        for event in events {
            match event {
                ReplyEvent::Sentence(s) => on_sentence(&s),
                ReplyEvent::Done(result) => return result,
            }
        }
        Err(BatcherGone.into())
    }
}
