//! The Kafka source: reads this worker's partitions without blocking, stamps records
//! with wall-clock epochs, and commits offsets once the output frontier has passed them.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::CommitMode;
use teddyflow_connectors::kafka::PartitionReader;
use teddyflow_connectors::wire::RawRecord;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use crate::metrics::WorkerMetrics;
use crate::offsets::OffsetTracker;
use crate::pool::Admission;

#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub epoch_ms: u64,
    pub poll_batch: usize,
    pub commit_interval: Duration,
    pub lag_interval: Duration,
}

/// What the worker loop shares with its source: offsets to commit at shutdown, and the
/// epoch at which reading stopped.
pub struct SourceHandle {
    pub reader: Option<PartitionReader>,
    pub tracker: OffsetTracker,
    pub stopped_at: Option<u64>,
}

impl SourceHandle {
    /// Commit what the frontier `probe` allows.
    pub fn commit(&mut self, probe: &ProbeHandle<u64>, mode: CommitMode) {
        let frontier = probe.with_frontier(|f| f.first().copied());
        let next = self.tracker.committable(frontier);
        if let Some(reader) = &self.reader {
            if !next.is_empty() {
                tracing::debug!(?next, "committing offsets");
            }
            reader.commit(&next, mode);
        }
    }
}

/// Low bits of a timestamp count utterance ends within one wall-clock epoch.
const SUB_BITS: u32 = 20;

/// The timestamp of "now": wall-clock epoch in the high bits. Every worker's source keeps
/// up with it, so an idle worker never holds back another worker's commits.
pub fn epoch_now(epoch_ms: u64) -> u64 {
    (crate::types::now_ms().max(0) as u64 / epoch_ms) << SUB_BITS
}

/// The first timestamp of the next wall-clock epoch.
pub fn next_epoch(epoch_ms: u64) -> u64 {
    epoch_now(epoch_ms) + (1 << SUB_BITS)
}

/// Whether a raw record is the last chunk of its utterance. After one, the source moves to
/// a new timestamp, so each utterance's offsets become committable on their own instead of
/// waiting for everything read in the same batch.
fn ends_utterance(rec: &RawRecord) -> bool {
    matches!(
        rec.header(teddyflow_connectors::wire::H_FINAL),
        Some(b"1") | Some(b"true")
    )
}

pub fn kafka_source<'s>(
    scope: Scope<'s, u64>,
    handle: Rc<RefCell<SourceHandle>>,
    probe: ProbeHandle<u64>,
    stop: Arc<AtomicBool>,
    admission: Admission,
    metrics: Rc<RefCell<WorkerMetrics>>,
    settings: SourceSettings,
) -> Stream<'s, u64, Vec<RawRecord>> {
    let activator_scope = scope;
    source(scope, "KafkaSource", move |cap, info| {
        let activator = activator_scope.activator_for(info.address);
        // A worker without partitions must release its capability, or it would hold
        // back every frontier.
        let mut cap = handle.borrow().reader.is_some().then_some(cap);
        let mut last_commit = Instant::now();
        let mut last_lag = Instant::now() - settings.lag_interval;
        move |output| {
            let Some(cap) = cap.as_mut() else { return };
            let epoch = epoch_now(settings.epoch_ms).max(*cap.time());
            cap.downgrade(&epoch);
            let mut h = handle.borrow_mut();
            let stopping = stop.load(Ordering::Acquire);
            if stopping && h.stopped_at.is_none() {
                h.stopped_at = Some(epoch);
            }
            let mut read = 0;
            if !stopping && admission.open() {
                let records = h.reader.as_mut().map(|r| r.poll_batch(settings.poll_batch));
                for rec in records.unwrap_or_default() {
                    let time = *cap.time();
                    h.tracker.record(time, rec.partition, rec.offset);
                    let mut m = metrics.borrow_mut();
                    m.records_in += 1;
                    m.bytes_in += rec.value.as_ref().map_or(0, |v| v.len() as u64);
                    let next = ends_utterance(&rec).then_some(time + 1);
                    output.session(&*cap).give(rec);
                    if let Some(next) = next {
                        cap.downgrade(&next);
                    }
                    read += 1;
                }
            }
            if last_commit.elapsed() >= settings.commit_interval {
                h.commit(&probe, CommitMode::Async);
                last_commit = Instant::now();
            }
            if last_lag.elapsed() >= settings.lag_interval {
                if let Some(r) = &h.reader {
                    metrics.borrow_mut().lag = r.lag();
                }
                last_lag = Instant::now();
            }
            if read == settings.poll_batch {
                activator.activate();
            } else {
                activator.activate_after(Duration::from_millis(10));
            }
        }
    })
}
