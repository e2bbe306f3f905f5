//! The answering part of the graph: profile lookups, conversation memory and the reply
//! stage, wired between understanding and the sink.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use teddyflow_connectors::wire::Chunk;
use teddyflow_models::llm::Prompt;
use timely::dataflow::operators::core::{Exchange, Inspect, Map};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::{Scope, Stream};

use super::{open_partitions, understood_response, ProcessShared};
use crate::answer::{Replied, ReplyEvent, ReplyJob, ReplyPool};
use crate::config::{Config, Topics};
use crate::memory::{ConversationMemory, Turn};
use crate::metrics::WorkerMetrics;
use crate::operators::{self, stable_hash, Output};
use crate::pool::Admission;
use crate::prepare::Preparer;
use crate::profiles::{self, Lookup, ProfileEvent, ProfileSourceSettings};
use crate::types::now_ms;
use crate::understand::Understood;

/// Profile lookups routed to each utterance's conversation owner; deleted child ids; and
/// dead letters for invalid profile records.
pub(super) type ProfileStreams<'s> = (
    Stream<'s, u64, Vec<Lookup>>,
    Stream<'s, u64, Vec<String>>,
    Stream<'s, u64, Vec<Output>>,
);

pub(super) fn profile_lookups<'s>(
    scope: Scope<'s, u64>,
    config: &Config,
    (index, peers): (usize, usize),
    shared: &ProcessShared,
    chunks: Stream<'s, u64, Vec<Chunk>>,
    metrics: &Rc<RefCell<WorkerMetrics>>,
) -> anyhow::Result<ProfileStreams<'s>> {
    let settings = ProfileSourceSettings {
        epoch_ms: config.engine.epoch_ms,
        poll_batch: config.engine.poll_batch,
        load_timeout: Duration::from_millis(config.answering.profiles_load_timeout_ms),
        deadletter_topic: config.topics.deadletter.clone(),
    };
    // Profiles are state, compacted: read from the beginning, offsets never committed.
    let start = rdkafka::Offset::Beginning;
    let reader = open_partitions(config, &config.topics.profiles, (index, peers), start)?;
    let events = profiles::profile_source(
        scope,
        reader,
        settings,
        shared.stop.clone(),
        metrics.clone(),
    );
    let updates = events.clone().flat_map(|e| match e {
        ProfileEvent::Update(child, p, t, r) => Some((child, p, t, r)),
        _ => None,
    });
    let deleted = events.clone().flat_map(|e| match e {
        ProfileEvent::Deleted(child) => Some(child),
        _ => None,
    });
    let invalid = events.flat_map(|e| match e {
        ProfileEvent::Invalid(out) => Some(out),
        _ => None,
    });
    let lookups =
        profiles::lookups(chunks, updates).exchange(|l: &Lookup| stable_hash(&l.conversation));
    Ok((lookups, deleted, invalid))
}

pub(super) fn memory_for(config: &Config) -> ConversationMemory {
    let a = &config.answering;
    ConversationMemory::new(a.memory_turns, a.memory_ttl_ms, a.memory_max_conversations)
}

/// The reply stage of one worker, with the memory of the conversations it owns.
pub(super) struct Answers {
    pub pool: std::sync::Arc<ReplyPool>,
    /// Runs each conversation's next history between turns (None: off).
    pub preparer: Option<std::sync::Arc<Preparer>>,
    pub memory: Rc<RefCell<ConversationMemory>>,
    pub metrics: Rc<RefCell<WorkerMetrics>>,
    /// Left when the reply is done: the utterance has passed its last model stage.
    pub admission: Admission,
    pub topics: Topics,
    pub worker: usize,
}

impl Answers {
    /// Understood utterances (on their conversation's owner) + profile lookups → speech
    /// records and responses. Deleted children are forgotten on every worker.
    pub fn build<'s>(
        self,
        understood: Stream<'s, u64, Vec<Understood>>,
        lookups: Stream<'s, u64, Vec<Lookup>>,
        deleted: Stream<'s, u64, Vec<String>>,
    ) -> Stream<'s, u64, Vec<Output>> {
        let (memory, preparer) = (self.memory.clone(), self.preparer.clone());
        deleted.broadcast().inspect(move |child: &String| {
            let gone = memory.borrow_mut().forget_child(child);
            tracing::debug!(
                conversations = gone.len(),
                "profile deleted: conversations forgotten"
            );
            if let Some(p) = &preparer {
                p.forget(gone);
            }
        });
        let joined = operators::join_lookup(
            understood,
            lookups,
            |u: &Understood| {
                (
                    u.heard.meta.conversation.clone(),
                    u.heard.meta.utterance.clone(),
                )
            },
            |l: &Lookup| (l.conversation.clone(), l.utterance.clone()),
            |u: &Understood| u.heard.meta.ready_time,
        );
        let memory = self.memory.clone();
        let jobs = joined.map(move |(understood, lookup)| {
            let meta = &understood.heard.meta;
            let history =
                memory
                    .borrow_mut()
                    .history(&meta.conversation, meta.child.as_deref(), now_ms());
            ReplyJob {
                profile: lookup.and_then(|l| l.profile),
                history,
                understood,
                queued_at: std::time::Instant::now(),
            }
        });
        let (memory, metrics) = (self.memory.clone(), self.metrics.clone());
        let preparer = self.preparer.clone();
        let admission = self.admission.clone();
        let events = operators::async_stage(jobs, self.pool.clone(), move |e: &ReplyEvent| {
            if let ReplyEvent::Done(r) = e {
                admission.leave();
                record_reply(&mut metrics.borrow_mut(), r);
                let history = remember(&mut memory.borrow_mut(), r);
                if let (Some(p), Some(next)) = (&preparer, &r.next_turn) {
                    let next = Prompt {
                        history,
                        ..next.clone()
                    };
                    p.prepare(&r.understood.heard.meta.conversation, next);
                }
            }
        });
        let (topics, worker) = (self.topics, self.worker);
        events.map(move |e| match e {
            ReplyEvent::Speech(out) => out,
            ReplyEvent::Done(r) => reply_response(*r, &topics, worker),
        })
    }
}

fn record_reply(m: &mut WorkerMetrics, r: &Replied) {
    let timings = r.understood.heard.meta.timings.iter();
    for (stage, ms) in timings.filter(|(s, _)| s.starts_with("reply") || s == "tts") {
        m.stage(stage, *ms);
    }
    m.replies_replaced += u64::from(r.reply.fallback);
    m.profiles_missing += u64::from(!r.profile_known);
    if r.reply.tts_errors > 0 {
        *m.errors.entry("tts".into()).or_default() += u64::from(r.reply.tts_errors);
    }
}

/// Unsafe turns are not remembered: the next reply must not pick the topic up again.
/// Returns the history the conversation's next turn will carry.
fn remember(memory: &mut ConversationMemory, r: &Replied) -> Vec<Turn> {
    let meta = &r.understood.heard.meta;
    let (conversation, child) = (&meta.conversation, meta.child.as_deref());
    if r.understood.safety.verdict != teddyflow_models::safety::Verdict::Unsafe {
        let turn = (r.understood.transcript.clone(), r.reply.text.clone());
        memory.record(conversation, child, turn, now_ms());
    }
    memory.history(conversation, child, now_ms())
}

fn reply_response(r: Replied, topics: &Topics, worker: usize) -> Output {
    let mut more = serde_json::Map::new();
    more.insert("reply".into(), serde_json::json!(r.reply));
    let profile = if r.profile_known { "known" } else { "default" };
    more.insert("profile".into(), serde_json::json!(profile));
    understood_response(r.understood, topics, worker, more)
}
