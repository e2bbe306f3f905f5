//! Answering: each understood utterance meets its child's profile and its conversation's
//! recent turns, and gets a reply (engine, curated bank or redirect), checked sentence by
//! sentence and spoken as it is written.
//!
//! ```text
//! final chunks ─► (child, utterance) ⋈ profiles ─► lookups ─┐        (profiles.rs)
//! understood ──────────────────────────────────────────────┴─ join ─► + memory ─► reply pool
//!                                                                        ─► speech, response
//! profile deletes (broadcast) ─► forget the child's conversations on every worker
//! ```

pub mod memory;
pub mod prepare;
pub mod profiles;
pub mod reply;

use std::sync::Arc;
use std::time::{Duration, Instant};

use teddyflow_connectors::kafka::{PartitionReader, StartAt};
use teddyflow_connectors::wire::Chunk;
use teddyflow_models::llm::{Prompt, ReplyModel};
use teddyflow_models::reply::ReplyEngine;
use teddyflow_models::safety::{SafetyModel, Verdict};
use teddyflow_models::tts::{EspeakNg, Synthesizer};
use timely::dataflow::operators::core::{Concat, Exchange, Inspect, Map};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::{Scope, Stream};

use super::respond::{response_output, understood_response};
use super::understand::{alert_for, Understood};
use super::{dead_letter, split, Ctx, Flow};
use crate::config::{Config, ReplyBackend, SpeechEngine};
use crate::envelope::{now_ms, Admission, Envelope};
use crate::operators::{async_stage, join_lookup, stable_hash, SourceSettings};
use crate::outputs::{Output, ProfileUse};
use crate::pool::{Compute, StagePool};
use crate::stage::Stage;
use crate::threads::{Cores, Lane, Priority, ThreadPlan};
use memory::{ConversationMemory, Turn};
use prepare::Preparer;
use profiles::{Lookup, ProfileEvent};
use reply::{Answerer, Replied, ReplyEvent, ReplyJob, ReplyPool};

/// The answering stage of a process: the reply pool, and the thread that prepares
/// conversations' next turns between turns.
#[derive(Clone)]
pub struct Answering {
    pool: Arc<ReplyPool>,
    preparer: Option<Arc<Preparer>>,
    /// Reply threads, as the engine asked for them (or `answering.threads`).
    pub lane: Lane,
}

impl Answering {
    /// Conversations are prepared only while no utterance is in flight anywhere in the
    /// process (`admission`), so the work never competes with a child who is waiting; it
    /// takes a core at the lowest priority.
    pub fn load(
        config: &Config,
        safety: SafetyModel,
        admission: &Admission,
        plan: &ThreadPlan,
        cores: &Cores,
    ) -> anyhow::Result<Answering> {
        let engine = reply_engine(config)?;
        let answerer = Arc::new(Answerer::new(
            config,
            engine.clone(),
            safety,
            synthesizer(config),
        ));
        let work = Arc::new(move |job: ReplyJob, emit: &mut dyn FnMut(ReplyEvent)| {
            ReplyEvent::Done(Box::new(answerer.answer(job, emit)))
        });
        let capacity = config.engine.max_pending_utterances;
        let lane = plan.reply(config, |cores| engine.threads_wanted(cores));
        let min = plan.min_cores();
        let compute = Compute::new(lane, Priority::Reply, cores, min);
        let pool = Arc::new(StagePool::streaming("reply", compute, capacity, work));
        let keep = config.answering.local.prepared_conversations;
        let preparer = (engine.prepares() && keep > 0).then(|| {
            let (pool, admission) = (pool.clone(), admission.clone());
            let busy = move || pool.in_flight() > 0 || admission.pending() > 0;
            let one = Lane {
                threads: 1,
                width: 1,
            };
            let compute = Compute::new(one, Priority::Prepare, cores, min);
            Preparer::start(engine, keep, busy, compute)
        });
        Ok(Answering {
            pool,
            preparer,
            lane,
        })
    }
}

/// The configured reply engine, loaded. A new engine is one file implementing
/// [`ReplyEngine`], a config section, and one arm here.
pub fn reply_engine(config: &Config) -> anyhow::Result<Arc<dyn ReplyEngine>> {
    match config.answering.backend {
        ReplyBackend::Local => Ok(Arc::new(ReplyModel::load(&config.models.dir)?)),
    }
}

/// The configured speech synthesis engine.
pub fn synthesizer(config: &Config) -> Arc<dyn Synthesizer> {
    match config.speech.engine {
        SpeechEngine::EspeakNg => Arc::new(EspeakNg),
    }
}

/// The profile side of answering, for one worker.
pub struct Profiles<'s> {
    /// Each utterance's profile, routed to its conversation's owner.
    lookups: Stream<'s, u64, Vec<Lookup>>,
    /// Children whose profile was deleted.
    deleted: Stream<'s, u64, Vec<String>>,
    /// Dead letters for invalid profile records.
    invalid: Stream<'s, u64, Vec<Output>>,
}

impl<'s> Profiles<'s> {
    /// Read this worker's share of the profiles topic (state: from the beginning, offsets
    /// never committed) and look up the child of every final chunk.
    pub fn read(
        scope: Scope<'s, u64>,
        ctx: &Ctx,
        chunks: Stream<'s, u64, Vec<Chunk>>,
    ) -> anyhow::Result<Profiles<'s>> {
        let c = &ctx.config;
        let at = (ctx.worker, ctx.peers);
        let reader =
            PartitionReader::for_worker(&c.kafka, &c.topics.profiles, at, StartAt::Beginning)?;
        let settings = SourceSettings {
            epoch_ms: c.engine.epoch_ms,
            poll_batch: c.engine.poll_batch,
        };
        let timeout = Duration::from_millis(c.answering.profiles_load_timeout_ms);
        let events = profiles::profile_source(scope, reader, settings, timeout, ctx);
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
        Ok(Profiles {
            lookups,
            deleted,
            invalid,
        })
    }
}

pub trait Answer<'s> {
    /// Understood utterances (on their conversation's owner) + profile lookups → speech,
    /// responses and parent alerts; failures on the way become dead letters.
    fn answer(
        self,
        answering: &Answering,
        profiles: Profiles<'s>,
        ctx: &Ctx,
    ) -> Stream<'s, u64, Vec<Output>>;
}

impl<'s> Answer<'s> for Flow<'s, Understood> {
    fn answer(
        self,
        answering: &Answering,
        profiles: Profiles<'s>,
        ctx: &Ctx,
    ) -> Stream<'s, u64, Vec<Output>> {
        let (understood, failed) = split(self);
        let alerts = understood.clone().flat_map(|u| alert_for(&u));
        let memory = Memory::new(&ctx.config, answering.preparer.clone());
        let forget = memory.clone();
        profiles
            .deleted
            .broadcast()
            .inspect(move |child| forget.forget(child));
        let joined = join_lookup(
            understood,
            profiles.lookups,
            |u: &Envelope<Understood>| u.meta.key(),
            |l: &Lookup| (l.conversation.clone(), l.utterance.clone()),
            |u: &Envelope<Understood>| u.meta.ready_time,
        );
        let remember = memory.clone();
        let jobs = joined.map(move |(understood, lookup)| ReplyJob {
            history: remember.history(&understood),
            profile: lookup.and_then(|l| l.profile),
            understood,
            queued_at: Instant::now(),
        });
        let m = ctx.clone();
        let events = async_stage(jobs, answering.pool.clone(), move |e: &ReplyEvent| {
            if let ReplyEvent::Done(r) = e {
                record_reply(&m, r);
                memory.remember(r);
            }
        });
        let worker = ctx.worker;
        events
            .map(move |e| match e {
                ReplyEvent::Speech(out) => out,
                ReplyEvent::Done(r) => reply_output(*r, worker),
            })
            .concat(alerts)
            .concat(failed.map(dead_letter))
            .concat(profiles.invalid)
    }
}

/// The memory of the conversations this worker owns, and the preparer it feeds.
#[derive(Clone)]
struct Memory {
    turns: std::rc::Rc<std::cell::RefCell<ConversationMemory>>,
    preparer: Option<Arc<Preparer>>,
}

impl Memory {
    fn new(config: &Config, preparer: Option<Arc<Preparer>>) -> Memory {
        let a = &config.answering;
        let turns =
            ConversationMemory::new(a.memory_turns, a.memory_ttl_ms, a.memory_max_conversations);
        Memory {
            turns: std::rc::Rc::new(std::cell::RefCell::new(turns)),
            preparer,
        }
    }

    fn history(&self, u: &Envelope<Understood>) -> Vec<Turn> {
        let meta = &u.meta;
        self.turns
            .borrow_mut()
            .history(&meta.conversation, meta.child.as_deref(), now_ms())
    }

    /// Unsafe turns are not remembered: the next reply must not pick the topic up again.
    /// The conversation's next turn is prepared with the history it will carry.
    fn remember(&self, r: &Replied) {
        let meta = &r.understood.meta;
        let (conversation, child) = (&meta.conversation, meta.child.as_deref());
        let mut turns = self.turns.borrow_mut();
        if r.understood.body.safety.verdict != Verdict::Unsafe {
            let turn = (
                r.understood.body.heard.transcript.clone(),
                r.reply.text.clone(),
            );
            turns.record(conversation, child, turn, now_ms());
        }
        let history = turns.history(conversation, child, now_ms());
        if let (Some(p), Some(next)) = (&self.preparer, &r.next_turn) {
            let next = Prompt {
                history,
                ..next.clone()
            };
            p.prepare(conversation, next);
        }
    }

    fn forget(&self, child: &str) {
        let gone = self.turns.borrow_mut().forget_child(child);
        tracing::debug!(
            conversations = gone.len(),
            "profile deleted: conversations forgotten"
        );
        if let Some(p) = &self.preparer {
            p.forget(gone);
        }
    }
}

fn record_reply(ctx: &Ctx, r: &Replied) {
    let mut m = ctx.metrics();
    let stages = [
        Stage::ReplyWait,
        Stage::ReplyFirstSentence,
        Stage::Reply,
        Stage::Tts,
    ];
    m.timings(&r.understood.meta, &stages);
    m.counts.replies_replaced += u64::from(r.reply.fallback);
    m.counts.profiles_missing += u64::from(!r.profile_known);
    if r.reply.tts_errors > 0 {
        *m.errors.entry(Stage::Tts.name().into()).or_default() += u64::from(r.reply.tts_errors);
    }
}

fn reply_output(r: Replied, worker: usize) -> Output {
    let completed_ms = r.understood.meta.completed_ms;
    let mut response = understood_response(r.understood, worker);
    response.reply = Some(r.reply);
    response.profile = Some(match r.profile_known {
        true => ProfileUse::Known,
        false => ProfileUse::Default,
    });
    response_output(response, completed_ms)
}
