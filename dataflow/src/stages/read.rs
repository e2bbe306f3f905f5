//! Reading the audio topic: this worker's partitions, resumed from the committed offsets,
//! parsed into chunks (records that do not parse become dead letters at once). The engine
//! owns the offsets: each epoch's are committed once the output frontier has passed it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use teddyflow_connectors::http::{CommitResult, Telemetry};
use teddyflow_connectors::kafka::{Commit, PartitionReader, StartAt};
use teddyflow_connectors::wire::{self, Chunk, RawRecord};
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use super::Ctx;
use crate::offsets::OffsetTracker;
use crate::operators::{kafka_source, Hold, Polled, SourceSettings};
use crate::outputs::{DeadLetter, DeadLetterReason, Out, Output};

/// This worker's audio partitions and the offsets read from them; the worker loop commits
/// through it at shutdown.
#[derive(Clone)]
pub struct Audio {
    state: Rc<RefCell<Offsets>>,
    telemetry: Option<Arc<Telemetry>>,
}

struct Offsets {
    reader: Option<PartitionReader>,
    tracker: OffsetTracker,
}

impl Audio {
    pub fn open(ctx: &Ctx) -> anyhow::Result<Audio> {
        let c = &ctx.config;
        let reader = PartitionReader::for_worker(
            &c.kafka,
            &c.topics.audio,
            (ctx.worker, ctx.peers),
            StartAt::Committed,
        )?;
        let partitions = reader
            .as_ref()
            .map(|r| r.partitions().to_vec())
            .unwrap_or_default();
        tracing::info!(
            worker = ctx.worker,
            ?partitions,
            "worker reading partitions"
        );
        ctx.health(|h, w| h.partitions_assigned(w));
        let state = Offsets {
            reader,
            tracker: OffsetTracker::default(),
        };
        Ok(Audio {
            state: Rc::new(RefCell::new(state)),
            telemetry: ctx.telemetry.clone(),
        })
    }

    /// Chunks of this worker's partitions, and dead letters for records that do not parse.
    pub fn read<'s>(
        &self,
        scope: Scope<'s, u64>,
        ctx: &Ctx,
        probe: &ProbeHandle<u64>,
    ) -> (Stream<'s, u64, Vec<Chunk>>, Stream<'s, u64, Vec<Output>>) {
        let e = &ctx.config.engine;
        let settings = SourceSettings {
            epoch_ms: e.epoch_ms,
            poll_batch: e.poll_batch,
        };
        let input = AudioInput {
            audio: self.clone(),
            ctx: ctx.clone(),
            probe: probe.clone(),
            commit_every: Duration::from_millis(e.commit_interval_ms),
            lag_every: Duration::from_millis(e.metrics_interval_ms),
            last_commit: Instant::now(),
            last_lag: None,
        };
        let raw = kafka_source(scope, "AudioSource", settings, input);
        let max_chunk = ctx.config.limits.max_chunk_bytes;
        raw.ok_err(move |rec| {
            wire::parse_chunk(&rec, max_chunk).map_err(|e| {
                let dead = DeadLetter::of_record(&rec, DeadLetterReason::Parse, e);
                Output::new(Out::DeadLetter(dead), 0)
            })
        })
    }

    /// Partitions read past what could be committed, and where a restart resumes each.
    pub fn outstanding(&self) -> std::collections::BTreeMap<i32, Option<i64>> {
        self.state.borrow().tracker.outstanding()
    }

    /// Commit what the frontier `probe` allows.
    pub fn commit(&self, probe: &ProbeHandle<u64>, mode: Commit) {
        let frontier = probe.with_frontier(|f| f.first().copied());
        let mut state = self.state.borrow_mut();
        let next = state.tracker.committable(frontier);
        if let Some(reader) = &state.reader {
            if !next.is_empty() {
                tracing::debug!(?next, "committing offsets");
            }
            if let (Some(ok), Some(t)) = (reader.commit(&next, mode), &self.telemetry) {
                t.offset_commit(if ok {
                    CommitResult::Ok
                } else {
                    CommitResult::Error
                });
            }
        }
    }
}

struct AudioInput {
    audio: Audio,
    ctx: Ctx,
    probe: ProbeHandle<u64>,
    commit_every: Duration,
    lag_every: Duration,
    last_commit: Instant,
    last_lag: Option<Instant>,
}

impl Polled<RawRecord> for AudioInput {
    fn has_partitions(&self) -> bool {
        self.audio.state.borrow().reader.is_some()
    }

    /// The capability follows the clock even while stopping: sources check the stop flag
    /// before reading, so nothing is read at a later time than the epoch after the stop.
    fn hold(&mut self) -> Hold {
        Hold::Epoch
    }

    fn read_now(&mut self) -> bool {
        !self.ctx.stop.load(Ordering::Acquire) && self.ctx.admission.open()
    }

    fn poll(&mut self, max: usize) -> Vec<RawRecord> {
        let mut state = self.audio.state.borrow_mut();
        let Offsets { reader, tracker } = &mut *state;
        let Some(reader) = reader.as_mut() else {
            return Vec::new();
        };
        let records = reader.poll_batch(max);
        // A partition whose log the broker replaced: what was read from the old log must
        // never be committed against the new one.
        for reset in reader.take_resets() {
            tracker.forget(reset.partition);
            self.ctx.metrics().counts.offset_resets += 1;
        }
        records
    }

    fn record(&mut self, rec: RawRecord, time: u64, give: &mut dyn FnMut(RawRecord)) -> bool {
        let mut state = self.audio.state.borrow_mut();
        state.tracker.record(time, rec.partition, rec.offset);
        let mut m = self.ctx.metrics();
        m.counts.records_in += 1;
        m.counts.bytes_in += rec.value.as_ref().map_or(0, |v| v.len() as u64);
        // After an utterance's last chunk the source moves to a new time, so each
        // utterance's offsets become committable on their own.
        let ends = ends_utterance(&rec);
        give(rec);
        ends
    }

    fn after(&mut self, _time: u64) {
        if self.last_commit.elapsed() >= self.commit_every {
            self.audio.commit(&self.probe, Commit::Async);
            self.last_commit = Instant::now();
        }
        if self.last_lag.is_none_or(|t| t.elapsed() >= self.lag_every) {
            if let Some(r) = &mut self.audio.state.borrow_mut().reader {
                r.ask_lag();
                self.ctx.metrics().lag = r.lag();
            }
            self.last_lag = Some(Instant::now());
        }
    }
}

/// Whether a raw record is the last chunk of its utterance.
fn ends_utterance(rec: &RawRecord) -> bool {
    matches!(rec.header(wire::H_FINAL), Some(b"1") | Some(b"true"))
}
