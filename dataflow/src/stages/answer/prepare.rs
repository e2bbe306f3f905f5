//! Between turns: run what each conversation's next prompt is known to start with (its
//! history, and who the child is) through the reply model before the child speaks again,
//! so the next reply only runs the mood and the utterance (`ReplyEngine::prepare`). On two
//! cores the prompt is most of the wait for the first spoken sentence.
//!
//! One thread per process, and it works only while no utterance is in flight: under load
//! the requests wait (the latest per conversation, at most as many as states are kept) and
//! replies run their whole prompt as before.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use teddyflow_models::llm::Prompt;
use teddyflow_models::reply::ReplyEngine;

use crate::pool::{one_thread, Compute, OnCores};

/// How often a waiting request checks whether the reply stage has become idle.
const IDLE_CHECK: Duration = Duration::from_millis(20);

enum Request {
    Prepare(String, Prompt),
    Forget(Vec<String>),
}

pub struct Preparer {
    requests: Sender<Request>,
    _thread: JoinHandle<()>,
}

impl Preparer {
    /// `busy` says whether any utterance is being worked on; `keep` is how many
    /// conversations' states the model keeps; `compute` the cores it runs on.
    pub fn start(
        model: Arc<dyn ReplyEngine>,
        keep: usize,
        busy: impl Fn() -> bool + Send + 'static,
        compute: Compute,
    ) -> Arc<Self> {
        model.keep_prepared(keep);
        let (requests, queue) = crossbeam_channel::unbounded();
        let cores = OnCores::new("reply-prepare", compute);
        let thread = std::thread::Builder::new()
            .name("reply-prepare".into())
            .spawn(move || run(model.as_ref(), &queue, keep, busy, &cores))
            .expect("spawn reply-prepare thread");
        Arc::new(Self {
            requests,
            _thread: thread,
        })
    }

    /// `next` is the next turn of `conversation` as known now: its history and profile.
    pub fn prepare(&self, conversation: &str, next: Prompt) {
        let _ = self
            .requests
            .send(Request::Prepare(conversation.into(), next));
    }

    /// Drop these conversations' states (their child's profile was deleted).
    pub fn forget(&self, conversations: Vec<String>) {
        if !conversations.is_empty() {
            let _ = self.requests.send(Request::Forget(conversations));
        }
    }
}

fn run(
    model: &dyn ReplyEngine,
    queue: &Receiver<Request>,
    keep: usize,
    busy: impl Fn() -> bool,
    cores: &OnCores,
) {
    let narrow = one_thread("reply-prepare-op");
    let mut pending: VecDeque<(String, Prompt)> = VecDeque::new();
    loop {
        // Block only when there is nothing to do; take every request that has arrived.
        let first = match pending.is_empty() {
            true => match queue.recv() {
                Ok(r) => Some(r),
                Err(_) => return, // the process is shutting down
            },
            false => None,
        };
        for request in first.into_iter().chain(queue.try_iter()) {
            apply(model, &mut pending, request, keep);
        }
        if busy() {
            std::thread::sleep(IDLE_CHECK);
            continue;
        }
        if let Some((conversation, next)) = pending.pop_front() {
            match cores.run(&narrow, || model.prepare(&conversation, &next)) {
                Ok(tokens) => tracing::debug!(tokens, "next turn's start prepared"),
                Err(e) => tracing::warn!(error = %e, "preparing a next turn failed"),
            }
        }
    }
}

/// The latest request per conversation counts; beyond `keep` the oldest are dropped, as
/// their states would be.
fn apply(
    model: &dyn ReplyEngine,
    pending: &mut VecDeque<(String, Prompt)>,
    r: Request,
    keep: usize,
) {
    match r {
        Request::Prepare(conversation, next) => {
            pending.retain(|(c, _)| *c != conversation);
            pending.push_back((conversation, next));
            while pending.len() > keep {
                pending.pop_front();
            }
        }
        Request::Forget(conversations) => {
            pending.retain(|(c, _)| !conversations.contains(c));
            model.forget(&conversations);
        }
    }
}
