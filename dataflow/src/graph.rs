//! The teddyflow graph for one worker, and the worker's run loop.
//!
//! ```text
//! audio ─► read ─┬─► reassemble ─► decode ─► ⋈ ─► hear ─► understand ─► answer ─► write ─► probe
//!                └─► final chunks ─► profiles ┘ (the profile decides how the child is heard)
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use teddyflow_connectors::http::Telemetry;
use teddyflow_connectors::kafka::{AckedWriter, Commit};
use teddyflow_connectors::wire::{Chunk, OutRecord};
use timely::dataflow::operators::core::{Concat, Probe};
use timely::dataflow::{ProbeHandle, Scope, Stream};
use timely::worker::Worker;

use crate::config::Config;
use crate::envelope::Admission;
use crate::metrics::WorkerMetrics;
use crate::operators::next_epoch;
use crate::outputs::Output;
use crate::stage::Pool;
use crate::stages::answer::{Answer, Answering};
use crate::stages::decode::Decode;
use crate::stages::hear::{Hear, Hearing};
use crate::stages::profiles::{Profiles, WithProfile};
use crate::stages::read::Audio;
use crate::stages::reassemble::Reassemble;
use crate::stages::respond::Respond;
use crate::stages::understand::{Understand, Understanding};
use crate::stages::write::Write;
use crate::stages::Ctx;
use crate::threads::{Cores, Lane, ThreadPlan};

/// What all workers of a process share: each stage's pools (one copy of every model),
/// the core permits they compute under, admission control, and the stop flag.
#[derive(Clone)]
pub struct ProcessShared {
    pub hearing: Hearing,
    /// Emotion + safety, unless `understanding.enabled = false`.
    pub understanding: Option<Understanding>,
    /// Replies, unless `answering.enabled = false`.
    pub answering: Option<Answering>,
    pub admission: Admission,
    pub stop: Arc<AtomicBool>,
    pub process: usize,
    /// The thread counts the stages were built with (the reply's as its engine asked).
    pub plan: ThreadPlan,
    pub reply: Option<Lane>,
    pub cores: Cores,
    /// Set by the binary when it serves `/metrics` (`engine.http_addr`).
    pub telemetry: Option<Arc<Telemetry>>,
}

impl ProcessShared {
    /// Load every stage's models for this process, its pools sized by `plan` (whose
    /// environment must already be exported: see [`ThreadPlan::export_env`]).
    pub fn load(
        config: &Config,
        plan: &ThreadPlan,
        process: usize,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let admission = Admission::new(config.engine.max_pending_utterances);
        let cores = Cores::new(plan.cores());
        let hearing = Hearing::load(config, plan, &cores)?;
        let understanding = match config.understanding.enabled {
            true => Some(Understanding::load(config, plan, &cores)?),
            false => None,
        };
        let answering = match (&understanding, config.answering.enabled) {
            (Some(u), true) => Some(Answering::load(
                config,
                u.safety.clone(),
                &admission,
                plan,
                &cores,
            )?),
            _ => None,
        };
        Ok(ProcessShared {
            hearing,
            understanding,
            reply: answering.as_ref().map(|a| a.lane),
            answering,
            admission,
            stop,
            process,
            plan: plan.clone(),
            cores,
            telemetry: None,
        })
    }

    /// Threads of each pool this process runs.
    pub fn pool_threads(&self) -> BTreeMap<Pool, usize> {
        let p = &self.plan;
        // The second opinion's pool is a second speech-to-text lane of the same size.
        let lanes = 1 + usize::from(self.hearing.hears_twice());
        let mut threads = BTreeMap::from([
            (Pool::Workers, p.workers),
            (Pool::Asr, p.asr.threads * lanes),
        ]);
        if self.understanding.is_some() {
            threads.insert(Pool::Acoustic, p.acoustic.threads);
            threads.insert(Pool::Understanding, p.understanding.threads);
        }
        if let Some(reply) = self.reply {
            threads.insert(Pool::Answering, reply.threads);
        }
        threads
    }

    /// The start-up line: the budget, where it came from, and every thread count.
    pub fn threads_summary(&self) -> String {
        let reply = self.reply.unwrap_or(Lane {
            threads: 0,
            width: 0,
        });
        self.plan.summary(reply)
    }
}

/// Build the graph on this worker and run it until `stop` is set and the graph drained.
pub fn run_worker(
    worker: &mut Worker,
    config: &Config,
    shared: ProcessShared,
) -> anyhow::Result<()> {
    let ctx = Ctx {
        worker: worker.index(),
        peers: worker.peers(),
        process: shared.process,
        metrics: Rc::new(RefCell::new(WorkerMetrics {
            telemetry: shared.telemetry.clone(),
            ..WorkerMetrics::default()
        })),
        config: Rc::new(config.clone()),
        admission: shared.admission.clone(),
        stop: shared.stop.clone(),
        telemetry: shared.telemetry.clone(),
    };
    {
        let mut m = ctx.metrics();
        m.cores = shared.cores.total();
        m.threads = shared.pool_threads();
    }
    let audio = Audio::open(&ctx)?;
    let writer = Rc::new(AckedWriter::open(&config.kafka)?);
    let probe = ProbeHandle::new();
    worker.dataflow::<u64, _, _>(|scope| -> anyhow::Result<()> {
        let (chunks, unreadable) = audio.read(scope, &ctx, &probe);
        let outputs = pipeline(scope, &ctx, &shared, chunks)?;
        outputs
            .concat(unreadable)
            .write(writer.clone(), &ctx)
            .probe_with(&probe);
        Ok(())
    })?;
    drive(worker, &ctx, &audio, &probe, &writer);
    Ok(())
}

/// Chunks → every output, through the stages this process runs.
fn pipeline<'s>(
    scope: Scope<'s, u64>,
    ctx: &Ctx,
    shared: &ProcessShared,
    chunks: Stream<'s, u64, Vec<Chunk>>,
) -> anyhow::Result<Stream<'s, u64, Vec<Output>>> {
    let decoded = chunks.clone().reassemble(ctx).decode(ctx);
    // Profiles are read with answering on (the topic is created for it); without, every
    // child is heard in `answering.default_language`.
    let (decoded, news) = match &shared.answering {
        Some(_) => {
            let profiles = Profiles::read(scope, ctx, chunks)?;
            (decoded.with_profile(profiles.lookups), Some(profiles.news))
        }
        None => (decoded, None),
    };
    let heard = decoded.hear(&shared.hearing, ctx);
    let Some(understanding) = &shared.understanding else {
        return Ok(heard.respond(ctx));
    };
    let understood = heard.understand(understanding, ctx);
    let (Some(answering), Some(news)) = (&shared.answering, news) else {
        return Ok(understood.respond(ctx));
    };
    Ok(understood.answer(answering, news, ctx))
}

/// Step the worker until stopped, writing a metrics snapshot every interval; then drain:
/// wait until everything read before the stop is acknowledged (or the drain timeout
/// passes), and commit synchronously.
fn drive(
    worker: &mut Worker,
    ctx: &Ctx,
    audio: &Audio,
    probe: &ProbeHandle<u64>,
    writer: &AckedWriter,
) {
    let engine = &ctx.config.engine;
    let interval = Duration::from_millis(engine.metrics_interval_ms);
    let mut last_metrics = Instant::now();
    while !ctx.stop.load(Ordering::Acquire) {
        worker.step_or_park(Some(Duration::from_millis(100)));
        ctx.health(|h, w| h.beat(w));
        if last_metrics.elapsed() >= interval {
            publish_metrics(ctx, writer, interval);
            last_metrics = Instant::now();
        }
    }
    let started = Instant::now();
    let deadline = started + Duration::from_millis(engine.drain_timeout_ms);
    // Sources check the flag before reading, so nothing is read at a later time than the
    // start of the next wall-clock epoch.
    let stop_epoch = next_epoch(engine.epoch_ms);
    while Instant::now() < deadline && probe.less_than(&stop_epoch) {
        worker.step_or_park(Some(Duration::from_millis(20)));
    }
    let drained = !probe.less_than(&stop_epoch);
    audio.commit(probe, Commit::Sync);
    if !drained {
        // What a restart will read again, and the work that did not finish.
        tracing::warn!(
            worker = ctx.worker,
            partitions_resume_at = ?audio.outstanding(),
            utterances_in_flight = ?ctx.admission.in_flight(),
            "drain timed out: these partitions are re-read from their committed offsets on restart"
        );
    }
    publish_metrics(ctx, writer, interval);
    writer.flush(Duration::from_secs(2));
    // Sources and pending utterances still hold capabilities by design; drop the graph
    // rather than wait for it to complete (uncommitted input is re-read on restart).
    for id in worker.installed_dataflows() {
        worker.drop_dataflow(id);
    }
    tracing::info!(
        drained,
        waited_ms = started.elapsed().as_millis() as u64,
        "worker stopped"
    );
}

/// One snapshot of this worker's metrics on the metrics topic (nobody waits for it).
fn publish_metrics(ctx: &Ctx, writer: &AckedWriter, interval: Duration) {
    let snapshot = ctx
        .metrics()
        .snapshot(ctx.worker, ctx.process, interval.as_millis() as u64);
    writer.send_untracked(&OutRecord {
        topic: ctx.config.topics.metrics.clone(),
        key: Some(format!("worker-{}", ctx.worker).into_bytes()),
        payload: serde_json::to_vec(&snapshot).expect("snapshots serialise"),
        headers: Vec::new(),
    });
}
