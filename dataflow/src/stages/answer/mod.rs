//! Answering: each understood utterance (carrying its child's profile, looked up before it
//! was heard: `stages::profiles`) meets its conversation's recent turns, and gets a reply
//! (engine, curated bank, redirect, or a "say that again?" when it was not heard clearly),
//! checked sentence by sentence and spoken as it is written.
//!
//! ```text
//! understood (+ meta.profile) ─► + memory ─► reply pool ─► speech, response
//! profile deletes (broadcast) ─► forget the child's conversations on every worker
//! ```

pub mod memory;
pub mod prepare;
pub mod reply;

use std::sync::Arc;
use std::time::Instant;

use teddyflow_models::llm::{BatchSettings, Prompt, ReplyModel, StepRunner};
use teddyflow_models::openai::{Fallback, OpenAiEngine};
use teddyflow_models::policy::ReplyPolicy;
use teddyflow_models::reply::{BatchedModel, ReplyEngine};
use teddyflow_models::safety::{SafetyModel, Verdict};
use teddyflow_models::tts::{EspeakNg, Synthesizer};
use timely::dataflow::operators::core::{Concat, Inspect, Map};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::Stream;

use super::profiles::ProfileNews;
use super::respond::{response_output, understood_response};
use super::understand::{alert_for, Understood};
use super::{dead_letter, split, Ctx, Flow};
use crate::config::{Config, ReplyBackend, SpeechEngine};
use crate::envelope::{now_ms, Admission, Envelope};
use crate::operators::async_stage;
use crate::outputs::{Origin, Output, ProfileUse};
use crate::pool::{one_thread, Compute, OnCores, StagePool};
use crate::stage::Stage;
use crate::threads::{Cores, Lane, Priority, ThreadPlan};
use memory::{ConversationMemory, Turn};
use prepare::Preparer;
use reply::{Answerer, Replied, ReplyEvent, ReplyJob, ReplyPool};

/// The answering stage of a process: the reply pool, and the thread that prepares
/// conversations' next turns between turns. The reply engine (with the local engine's one
/// batch thread per process) is shared by every pool thread.
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
        let batch = Compute::new(
            Lane {
                threads: 1,
                width: plan.answering.width,
            },
            Priority::Reply,
            cores,
            plan.min_cores(),
        );
        let engine = reply_engine(config, &batch, plan.cores())?;
        let policy = ReplyPolicy::with_safety(safety, &config.understanding.data_dir)?;
        let answerer = Arc::new(Answerer::new(
            config,
            engine.clone(),
            policy,
            synthesizer(config),
        ));
        let work = Arc::new(move |job: ReplyJob, emit: &mut dyn FnMut(ReplyEvent)| {
            ReplyEvent::Done(Box::new(answerer.answer(job, emit)))
        });
        let capacity = config.engine.max_pending_utterances;
        let lane = plan.reply(config, |cores| engine.threads_wanted(cores));
        let min = plan.min_cores();
        // Threads that only wait (for the batch thread, for a server) hold no core: the
        // batch thread takes its own, pass by pass.
        let compute = match engine.computes_on_caller() {
            true => Compute::new(lane, Priority::Reply, cores, min),
            false => Compute::alone(lane.threads),
        };
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
/// The local engine's batched passes compute as `batch` says (under the core budget of
/// `cores`).
pub fn reply_engine(
    config: &Config,
    batch: &Compute,
    cores: usize,
) -> anyhow::Result<Arc<dyn ReplyEngine>> {
    match config.answering.backend {
        ReplyBackend::Local => local_engine(config, batch, cores),
        ReplyBackend::Openai => {
            let settings = config.answering.openai.clone();
            let local: Option<Arc<dyn ReplyEngine>> = match settings.fallback {
                Fallback::Local => Some(local_engine(config, batch, cores)?),
                Fallback::Bank => None,
            };
            Ok(Arc::new(OpenAiEngine::new(settings, local)?))
        }
    }
}

/// The local model, batched across conversations unless `batch_max_sequences = 1`: one
/// batch thread per 4 cores of the budget (its forward is one thread), or `batch_threads`.
fn local_engine(
    config: &Config,
    batch: &Compute,
    cores: usize,
) -> anyhow::Result<Arc<dyn ReplyEngine>> {
    let model = ReplyModel::load(&config.models.dir)?;
    let a = &config.answering;
    if a.batch_max_sequences <= 1 {
        return Ok(Arc::new(model));
    }
    let settings = BatchSettings {
        max_sequences: a.batch_max_sequences,
        prefill_chunk: a.batch_prefill_chunk,
    };
    // One batch per 4 cores: a pass of 8 replies costs ~2x one of 1 (weights loaded once
    // for all), so splitting a burst over more batches costs CPU; on 2 cores two batches
    // used 1.74 cores for 2.87 utterances/s where one used 1.49 for 3.11
    // (docs/performance.md, "Cores").
    let batches = match a.batch_threads {
        0 => cores.div_ceil(4),
        n => n,
    };
    let runners = (0..batches)
        .map(|_| Arc::new(OnCoresStep::new(batch.clone())) as Arc<dyn StepRunner>)
        .collect();
    Ok(Arc::new(BatchedModel::spawn_on(model, settings, runners)?))
}

/// The batch threads' passes under the process's core permits, at the reply's priority:
/// each pass takes a core (or the reply's intra-op width while cores are idle) and gives
/// it back, so speech-to-text still gets cores while a batch is speaking.
struct OnCoresStep {
    exec: OnCores,
    narrow: rayon::ThreadPool,
}

impl OnCoresStep {
    fn new(compute: Compute) -> OnCoresStep {
        OnCoresStep {
            exec: OnCores::new("reply-batch", compute),
            narrow: one_thread("reply-batch-op"),
        }
    }
}

impl StepRunner for OnCoresStep {
    fn run(&self, step: &mut (dyn FnMut() + Send)) {
        self.exec.run(&self.narrow, step)
    }
}

/// The configured speech synthesis engine.
pub fn synthesizer(config: &Config) -> Arc<dyn Synthesizer> {
    match config.speech.engine {
        SpeechEngine::EspeakNg => Arc::new(EspeakNg),
    }
}

pub trait Answer<'s> {
    /// Understood utterances (on their conversation's owner, with their profiles) → speech,
    /// responses and parent alerts; failures on the way become dead letters.
    fn answer(
        self,
        answering: &Answering,
        profiles: ProfileNews<'s>,
        ctx: &Ctx,
    ) -> Stream<'s, u64, Vec<Output>>;
}

impl<'s> Answer<'s> for Flow<'s, Understood> {
    fn answer(
        self,
        answering: &Answering,
        profiles: ProfileNews<'s>,
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
        let remember = memory.clone();
        let jobs = understood.map(move |understood| ReplyJob {
            history: remember.history(&understood),
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

    /// Unsafe turns are not remembered: the next reply must not pick the topic up again;
    /// nor are turns that were not heard (silence) or not heard clearly (a "say that
    /// again?"): their transcript is not what the child said. The conversation's next turn
    /// is prepared with the history it will carry.
    fn remember(&self, r: &Replied) {
        let meta = &r.understood.meta;
        let (conversation, child) = (&meta.conversation, meta.child.as_deref());
        let mut turns = self.turns.borrow_mut();
        let heard = !matches!(r.reply.origin, Origin::Silence | Origin::Clarify);
        if heard && r.understood.body.safety.verdict != Verdict::Unsafe {
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
    if r.reply.fallback {
        m.reply_replaced();
    }
    let p = &r.provenance;
    m.counts.llm_requests += u64::from(p.requests);
    m.counts.llm_failures += u64::from(p.failures);
    m.counts.backend_fallbacks += u64::from(r.reply.backend_fallback);
    if let Some(state) = p.breaker {
        m.counts.llm_breaker = state.gauge();
    }
    if let Some(t) = &m.telemetry {
        let breaker = p.breaker.map(|b| b.gauge() as i64);
        let (requests, failures) = (u64::from(p.requests), u64::from(p.failures));
        t.reply_backend(requests, failures, r.reply.backend_fallback, breaker);
    }
    m.counts.profiles_missing += u64::from(!r.profile_known);
    m.counts.clarified += u64::from(r.reply.origin == Origin::Clarify);
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
