//! The source side: a consumer over a fixed set of partitions, polled without blocking.
//!
//! Two faults of the broker are handled here, not by the engine:
//! - **An outage** is logged once when it begins and once when it ends; librdkafka's own
//!   log lines (one per reconnect attempt) stay at debug.
//! - **A broker that lost its log** (restarted with empty storage, a topic deleted and
//!   recreated) would otherwise be fetched at our old offsets forever: Tansu answers a fetch
//!   past its end with nothing, not with "offset out of range". Every
//!   [`LOG_CHECK_INTERVAL`], partitions that delivered nothing since the last check are
//!   checked: a high watermark below our position while the broker no longer holds the
//!   offset we committed (it forgot our group too), or a partition that was unknown to the
//!   broker for a while and came back, means the log is new. The reader then seeks by
//!   `kafka.offset_reset` (earliest or latest), logs one warning and counts it
//!   ([`PartitionReader::resets`]). Records that arrive from before our position (librdkafka
//!   applied `auto.offset.reset` itself, on a broker that does answer "out of range") are
//!   counted the same way. A high watermark below our position alone proves nothing on
//!   Tansu: it reports the start of the last produced batch, not the end of the log.
//!
//! Broker questions (that check, watermarks for the lag) go to the reader's
//! [`super::asker::Asker`] while the reader is healthy, so `poll_batch` never waits for the
//! broker then; only the check after an outage or a dropped connection is asked in line.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::asker::{self, Answer, Asker, Question, CHECK_TIMEOUT};
use super::{KafkaConnectorError, KafkaSettings, OffsetReset};
use crate::wire::RawRecord;

/// How often idle partitions are checked for a lost log (and, during an outage, whether
/// the brokers are back).
pub const LOG_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// The same non-outage consumer error is logged at most once per this period.
const REPEAT_WARNING: Duration = Duration::from_secs(60);

/// Why a partition's position was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The high watermark is below our position and the broker lost our committed offset.
    LogLost,
    /// The partition was unknown to the broker for a while and came back.
    Reappeared,
    /// Records arrived from before our position: the consumer reset an out-of-range offset.
    Rewound,
}

/// One reset of a partition's position. The engine must forget the offsets it still meant
/// to commit for that partition (they belong to the old log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    pub partition: i32,
    /// Our position (next offset to read) before the reset.
    pub from: i64,
    pub reason: ResetReason,
}

/// The consumer's context: librdkafka's log lines and global errors at debug (the reader
/// reports outages itself, once), and which commits the broker acknowledged.
#[derive(Default)]
pub struct ReaderContext {
    acked: Mutex<BTreeMap<i32, i64>>,
    /// A broker connection dropped since the reader last looked.
    pub(super) disconnected: AtomicBool,
}

impl ClientContext for ReaderContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", error = %error, "{reason}");
        if super::connection_lost(&error) {
            self.disconnected.store(true, Ordering::Release);
        }
    }
}

impl ConsumerContext for ReaderContext {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if result.is_ok() {
            self.note_acked(offsets);
        }
    }
}

impl ReaderContext {
    fn note_acked(&self, offsets: &TopicPartitionList) {
        for e in offsets.elements() {
            if let Offset::Offset(o) = e.offset() {
                self.note(e.partition(), o);
            }
        }
    }

    /// The broker holds `offset` as our commit of `partition` (it said so).
    fn note(&self, partition: i32, offset: i64) {
        if let Ok(mut acked) = self.acked.lock() {
            let held = acked.entry(partition).or_insert(offset);
            *held = (*held).max(offset);
        }
    }

    fn acked(&self, partition: i32) -> Option<i64> {
        self.acked.lock().ok()?.get(&partition).copied()
    }

    fn forget(&self, partition: i32) {
        if let Ok(mut acked) = self.acked.lock() {
            acked.remove(&partition);
        }
    }
}

/// Where reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The group's committed offsets (work: resume where the job left off).
    Committed,
    /// The first offset (state: re-read a compacted topic; tools reading a run's output).
    Beginning,
    /// Only what is written from now on.
    End,
}

impl StartAt {
    fn offset(self) -> Offset {
        match self {
            StartAt::Committed => Offset::Stored,
            StartAt::Beginning => Offset::Beginning,
            StartAt::End => Offset::End,
        }
    }
}

/// How a commit waits for the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Fire and go on (periodic commits while running).
    Async,
    /// Wait for the broker's answer (the last commit at shutdown).
    Sync,
}

pub struct PartitionReader {
    consumer: BaseConsumer<ReaderContext>,
    settings: KafkaSettings,
    topic: String,
    partitions: Vec<i32>,
    /// Where reading started (used again for partitions without a known position).
    start: Offset,
    policy: OffsetReset,
    /// Next offset to read per partition, as far as this reader has seen. Absent right
    /// after a reset, until the first record of the new log arrives.
    position: BTreeMap<i32, i64>,
    /// Partitions that delivered a record since the last check.
    active: BTreeSet<i32>,
    /// Partitions the broker said it does not know, since then.
    vanished: BTreeSet<i32>,
    /// Partitions not yet checked since an outage ended: a broker that comes back may be a
    /// different, empty one, and its new log may deliver records at our old positions.
    after_outage: BTreeSet<i32>,
    last_check: Instant,
    /// When the current outage began.
    outage: Option<Instant>,
    last_warning: Option<(RDKafkaErrorCode, Instant)>,
    resets: u64,
    new_resets: Vec<Reset>,
    /// Asks the broker on a thread of its own while the reader is healthy; `None` when that
    /// thread could not start (the reader then asks on the polling thread).
    asker: Option<Asker>,
    /// A lost-log check asked and not yet answered: its id and the idle partitions as they
    /// were then. Given up (`None`) when the broker connection drops meanwhile.
    check_asked: Option<(u64, Vec<Idle>)>,
    checks: u64,
    lag_asked: bool,
    /// The last high watermark the broker reported per partition.
    highs: BTreeMap<i32, i64>,
}

/// A partition that delivered nothing since the previous check, as it was when the broker
/// was asked about it.
#[derive(Debug, Clone, Copy)]
struct Idle {
    partition: i32,
    position: Option<i64>,
    acked: Option<i64>,
}

impl PartitionReader {
    /// Worker `index` of `peers`'s share of `topic` (partitions `p % peers == index`), read
    /// from `start`; `None` when the topic has fewer partitions than there are workers.
    pub fn for_worker(
        settings: &KafkaSettings,
        topic: &str,
        (index, peers): (usize, usize),
        start: StartAt,
    ) -> Result<Option<Self>, KafkaConnectorError> {
        let probe = settings.consumer()?;
        let count = super::partition_count(&probe, topic, &settings.brokers)?;
        let mine = super::partitions_for_worker(count, index, peers);
        if mine.is_empty() {
            return Ok(None);
        }
        Self::open(settings, topic, mine, start).map(Some)
    }

    /// Assign `partitions` of `topic` starting at `start`.
    pub fn open(
        settings: &KafkaSettings,
        topic: &str,
        partitions: Vec<i32>,
        start: StartAt,
    ) -> Result<Self, KafkaConnectorError> {
        let start = start.offset();
        let consumer = settings.consumer_with(ReaderContext::default())?;
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, start)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            settings: settings.clone(),
            topic: topic.into(),
            partitions,
            start,
            policy: settings.offset_reset,
            position: BTreeMap::new(),
            active: BTreeSet::new(),
            vanished: BTreeSet::new(),
            after_outage: BTreeSet::new(),
            last_check: Instant::now(),
            outage: None,
            last_warning: None,
            resets: 0,
            new_resets: Vec::new(),
            asker: Asker::start(settings, topic)
                .inspect_err(|e| tracing::warn!(error = %e, "kafka: broker checks will run on the polling thread"))
                .ok(),
            check_asked: None,
            checks: 0,
            lag_asked: false,
            highs: BTreeMap::new(),
        })
    }

    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Read up to `max` records without waiting. Broker errors are transient for a
    /// consumer (librdkafka reconnects): an outage is logged when it begins and when it
    /// ends, not per poll. Every [`LOG_CHECK_INTERVAL`] idle partitions are checked for a
    /// lost log: asked on the asking thread while healthy (the answer is judged by a later
    /// poll), here after an outage or a dropped connection, where the first records must
    /// wait for the check (a few blocking broker requests, [`CHECK_TIMEOUT`] at most each).
    pub fn poll_batch(&mut self, max: usize) -> Vec<RawRecord> {
        self.after_disconnect();
        let mut out = Vec::new();
        while out.len() < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    self.on_error(&e);
                    break;
                }
                Some(Ok(msg)) => out.push(to_raw(&msg)),
            }
        }
        if !out.is_empty() {
            self.outage_over();
        }
        // Before handing out the first records after an outage (or a dropped connection),
        // make sure they are from the log we were reading: from a replaced log they are at
        // the wrong offsets (reading a new log from our old position would skip its first
        // records unnoticed), and are read again from the reset position instead. The
        // outage may have been seen to end by a check that found nothing to read yet, so
        // what decides is that partitions are still unchecked, not how the outage ended.
        let unchecked = !out.is_empty() && !self.after_outage.is_empty();
        let due = self.last_check.elapsed() >= LOG_CHECK_INTERVAL;
        if due && self.asker.is_some() && self.healthy() {
            self.ask_check();
        } else if unchecked || due {
            let resets_before = self.new_resets.len();
            self.check_logs();
            self.last_check = Instant::now();
            let reset: Vec<i32> = self.new_resets[resets_before..]
                .iter()
                .map(|r| r.partition)
                .collect();
            out.retain(|rec| !reset.contains(&rec.partition));
        }
        for rec in &out {
            self.on_record(rec.partition, rec.offset);
        }
        // After this batch's records count as activity: an answer is judged only for
        // partitions that stayed idle since it was asked.
        self.take_answers();
        out
    }

    /// No outage, and no partition waiting to be checked after one: the states in which
    /// the reader hands out records without checking first.
    fn healthy(&self) -> bool {
        self.outage.is_none() && self.after_outage.is_empty()
    }

    /// Ask the asker about the partitions idle since the last check; one check at a time.
    fn ask_check(&mut self) {
        self.last_check = Instant::now();
        let (Some(asker), None) = (&self.asker, &self.check_asked) else {
            return;
        };
        let context = self.consumer.context();
        let idle: Vec<Idle> = self
            .partitions
            .iter()
            .filter(|p| !self.active.contains(p))
            .map(|&partition| Idle {
                partition,
                position: self.position.get(&partition).copied(),
                acked: context.acked(partition),
            })
            .collect();
        self.checks += 1;
        asker.ask(Question::Check {
            id: self.checks,
            highs_of: idle.iter().map(|i| i.partition).collect(),
            committed_of: self.partitions.clone(),
        });
        self.active.clear();
        self.check_asked = Some((self.checks, idle));
    }

    fn take_answers(&mut self) {
        while let Some(answer) = self.asker.as_ref().and_then(Asker::answer) {
            match answer {
                Answer::Highs(highs) => {
                    self.lag_asked = false;
                    self.highs.extend(highs);
                }
                Answer::Check {
                    id,
                    highs,
                    committed,
                } => {
                    self.highs.extend(&highs);
                    if let Some((_, idle)) = self.check_asked.take_if(|(asked, _)| *asked == id) {
                        self.judge_answer(idle, &highs, committed);
                    }
                }
            }
        }
    }

    /// The lost-log check, judged from an answer to [`Self::ask_check`]. A partition that
    /// delivered records or moved since is left for the next check (its watermark is older
    /// than its position); so is everything if an outage began meanwhile (the check on the
    /// polling thread takes over then).
    fn judge_answer(
        &mut self,
        idle: Vec<Idle>,
        highs: &BTreeMap<i32, i64>,
        committed: Option<BTreeMap<i32, i64>>,
    ) {
        if !self.healthy() {
            return;
        }
        let Some(committed) = committed else {
            tracing::debug!(topic = %self.topic, "committed offsets not answered; checking again later");
            return;
        };
        let still: Vec<Idle> = idle
            .into_iter()
            .filter(|i| !self.active.contains(&i.partition))
            .filter(|i| self.position.get(&i.partition).copied() == i.position)
            .collect();
        let suspects = still
            .iter()
            .filter_map(|i| {
                let high = highs.get(&i.partition)?;
                let below = i.position.is_some_and(|pos| *high < pos);
                (below || self.vanished.contains(&i.partition)).then_some((i.partition, below))
            })
            .collect();
        let acked: BTreeMap<i32, i64> = still
            .iter()
            .filter_map(|i| Some((i.partition, i.acked?)))
            .collect();
        self.judge(suspects, committed, |p| acked.get(&p).copied());
    }

    fn on_record(&mut self, partition: i32, offset: i64) {
        if let Some(pos) = self.position.get(&partition).copied() {
            if offset < pos {
                self.counted_reset(partition, pos, ResetReason::Rewound);
            }
        }
        self.position.insert(partition, offset + 1);
        self.active.insert(partition);
        self.vanished.remove(&partition);
    }

    fn on_error(&mut self, e: &KafkaError) {
        let code = e.rdkafka_error_code();
        if code.is_some_and(is_outage) {
            if self.outage.is_none() {
                tracing::warn!(topic = %self.topic, error = %e, "kafka brokers unreachable; reading resumes when they are back");
                self.outage = Some(Instant::now());
                self.rebuild();
                self.check_asked = None;
            } else {
                tracing::debug!(error = %e, "kafka consumer error during an outage");
            }
            return;
        }
        if code.is_some_and(is_transient) {
            tracing::debug!(error = %e, "transient kafka consumer error");
            return;
        }
        if code.is_some_and(is_unknown_partition) {
            if self.vanished.is_empty() {
                tracing::warn!(topic = %self.topic, error = %e, "kafka topic or partition unknown to the broker; watching for it to come back");
            }
            self.vanished.extend(self.partitions.iter().copied());
            return;
        }
        let code = code.unwrap_or(RDKafkaErrorCode::Unknown);
        let repeat = self
            .last_warning
            .is_some_and(|(c, at)| c == code && at.elapsed() < REPEAT_WARNING);
        if repeat {
            tracing::debug!(error = %e, "kafka consumer error");
        } else {
            tracing::warn!(error = %e, "kafka consumer error");
            self.last_warning = Some((code, Instant::now()));
        }
    }

    /// A fresh consumer at our positions. librdkafka 2.12 corrupts its metadata cache when a
    /// topic comes back under the same name with a new topic id (a broker replaced by an
    /// empty one, a topic recreated: librdkafka issues 4778, 4964) and crashes soon after;
    /// a client created during the outage has no old entry to corrupt.
    fn rebuild(&mut self) {
        let context = ReaderContext::default();
        if let (Ok(mut new), Ok(old)) = (context.acked.lock(), self.consumer.context().acked.lock())
        {
            new.extend(old.iter());
        }
        let consumer = match self.settings.consumer_with(context) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "could not create a fresh consumer; keeping the old one");
                return;
            }
        };
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            let offset = self
                .position
                .get(p)
                .map_or(self.start, |o| Offset::Offset(*o));
            if tpl.add_partition_offset(&self.topic, *p, offset).is_err() {
                return;
            }
        }
        match consumer.assign(&tpl) {
            Ok(()) => self.consumer = consumer,
            Err(e) => {
                tracing::debug!(error = %e, "could not assign a fresh consumer; keeping the old one")
            }
        }
    }

    /// A broker connection dropped (it may be back already, as a different, empty broker):
    /// a fresh consumer before this one sees recreated topics (see [`Self::rebuild`]), and
    /// every partition checked against the broker's commits before its records count. An
    /// outage is handled by [`Self::on_error`] instead.
    fn after_disconnect(&mut self) {
        let context = self.consumer.context();
        if !context.disconnected.swap(false, Ordering::AcqRel) || self.outage.is_some() {
            return;
        }
        tracing::debug!(topic = %self.topic, "a kafka broker connection dropped; reconnecting with a fresh consumer");
        self.rebuild();
        self.check_asked = None;
        // Checked when the first records come (`poll_batch`), before they count.
        self.after_outage = self.partitions.iter().copied().collect();
    }

    fn outage_over(&mut self) {
        if let Some(since) = self.outage.take() {
            let secs = since.elapsed().as_secs_f64();
            tracing::info!(topic = %self.topic, "kafka brokers reachable again after {secs:.1} s");
            self.after_outage = self.partitions.iter().copied().collect();
        }
    }

    /// Check the partitions that delivered nothing since the last check (during an outage
    /// only one, to notice its end without blocking the worker for long).
    fn check_logs(&mut self) {
        let mut idle: Vec<i32> = self
            .partitions
            .iter()
            .copied()
            .filter(|p| !self.active.contains(p))
            .collect();
        self.active.clear();
        if self.outage.is_some() {
            idle.truncate(1);
        }
        let mut suspects = Vec::new();
        if self.outage.is_none() {
            // Back from an outage: the broker's memory of our commits tells whether it is
            // the same log (checked below, without the watermark, for these partitions).
            suspects.extend(self.after_outage.iter().map(|p| (*p, false)));
            idle.retain(|p| !self.after_outage.contains(p));
        }
        for p in idle {
            let Ok((_, high)) = self
                .consumer
                .fetch_watermarks(&self.topic, p, CHECK_TIMEOUT)
            else {
                continue;
            };
            self.outage_over();
            let below = self.position.get(&p).is_some_and(|pos| high < *pos);
            if below || self.vanished.contains(&p) {
                suspects.push((p, below));
            }
        }
        if self.outage.is_some() {
            return;
        }
        // Every partition's commit, also when nothing is suspect, so what the broker holds is
        // known before it may forget it (asynchronous commits are not all confirmed by a
        // callback): one request per check.
        let Some(committed) = asker::committed(&self.consumer, &self.topic, &self.partitions)
        else {
            tracing::debug!(topic = %self.topic, ?suspects, "committed offsets not answered; checking again later");
            return; // unknown is not "forgotten": no reset on a broker that does not answer
        };
        let context = self.consumer.context();
        let acked: BTreeMap<i32, i64> = self
            .partitions
            .iter()
            .filter_map(|p| Some((*p, context.acked(*p)?)))
            .collect();
        self.judge(suspects, committed, |p| acked.get(&p).copied());
    }

    /// Reset the suspects whose log is not the one we read: the broker forgot the commit
    /// it acknowledged (`acked`, as known when the broker was asked), or the partition
    /// vanished and came back. Every partition's commit is noted, also when nothing is
    /// suspect, so what the broker holds is known before it may forget it (asynchronous
    /// commits are not all confirmed by a callback).
    fn judge(
        &mut self,
        suspects: Vec<(i32, bool)>,
        committed: BTreeMap<i32, i64>,
        acked: impl Fn(i32) -> Option<i64>,
    ) {
        tracing::debug!(topic = %self.topic, ?suspects, ?committed, position = ?self.position, "checking for a lost log");
        for (p, below) in suspects {
            let checked_after_outage = self.after_outage.remove(&p);
            let Some(pos) = self.position.get(&p).copied() else {
                continue;
            };
            // The broker forgot the offset it acknowledged: its log is not the one we read.
            let forgot = acked(p)
                .filter(|a| *a <= pos)
                .is_some_and(|a| committed.get(&p).copied().unwrap_or(-1) < a);
            if forgot && (below || checked_after_outage) {
                self.reset(p, pos, ResetReason::LogLost);
            } else if self.vanished.contains(&p) && (below || forgot) {
                self.reset(p, pos, ResetReason::Reappeared);
            }
        }
        let context = self.consumer.context();
        for (p, offset) in committed {
            if self.position.contains_key(&p) {
                context.note(p, offset);
            }
        }
    }

    /// Seek `partition` by the policy, warn once and count it.
    fn reset(&mut self, partition: i32, from: i64, reason: ResetReason) {
        let target = match self.policy {
            OffsetReset::Earliest => Offset::Beginning,
            OffsetReset::Latest => Offset::End,
        };
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            let offset = if *p == partition {
                target
            } else {
                self.position
                    .get(p)
                    .map_or(self.start, |o| Offset::Offset(*o))
            };
            if tpl.add_partition_offset(&self.topic, *p, offset).is_err() {
                return;
            }
        }
        if let Err(e) = self.consumer.assign(&tpl) {
            tracing::warn!(error = %e, partition, "kafka: could not seek a partition whose log was lost; will try again");
            return;
        }
        self.position.remove(&partition);
        self.counted_reset(partition, from, reason);
    }

    fn counted_reset(&mut self, partition: i32, from: i64, reason: ResetReason) {
        tracing::warn!(
            topic = %self.topic,
            partition,
            from,
            ?reason,
            policy = self.policy.as_str(),
            "kafka partition's log is not the one we were reading (broker emptied or topic recreated); reading it from the {} offset",
            self.policy.as_str()
        );
        self.vanished.remove(&partition);
        self.consumer.context().forget(partition);
        self.resets += 1;
        self.new_resets.push(Reset {
            partition,
            from,
            reason,
        });
    }

    /// Partition resets since start (for metrics).
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Resets since the last call: the engine forgets the offsets it meant to commit for
    /// those partitions (`OffsetTracker::forget`).
    pub fn take_resets(&mut self) -> Vec<Reset> {
        std::mem::take(&mut self.new_resets)
    }

    /// Commit `next` offsets (offset of the next record to read) per partition. Offsets
    /// past our position are from a log that was replaced since, and are not committed.
    /// Commit `next` (partition → next offset to read); `None` when there was nothing to
    /// commit, else whether the commit was handed to the broker (an asynchronous one is
    /// confirmed later; a failed one is retried with the next).
    pub fn commit(&self, next: &BTreeMap<i32, i64>, mode: Commit) -> Option<bool> {
        let mode = match mode {
            Commit::Async => CommitMode::Async,
            Commit::Sync => CommitMode::Sync,
        };
        let mut tpl = TopicPartitionList::new();
        for (p, off) in next {
            if self.position.get(p).is_none_or(|pos| off > pos) {
                continue;
            }
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*off))
                .ok()?;
        }
        if tpl.count() == 0 {
            return None;
        }
        match self.consumer.commit(&tpl, mode) {
            Ok(()) if matches!(mode, CommitMode::Sync) => self.consumer.context().note_acked(&tpl),
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; it will be retried with the next one");
                return Some(false);
            }
        }
        Some(true)
    }

    /// High watermark (offset after the last record) per partition, as the broker reports it.
    pub fn high_watermarks(&self) -> BTreeMap<i32, i64> {
        asker::highs(
            &self.consumer,
            &self.topic,
            &self.partitions,
            Duration::from_secs(2),
        )
        .into_iter()
        .map(|(p, high)| (p, high.max(0)))
        .collect()
    }

    /// Next offset to read per partition, as far as this reader has seen.
    pub fn position(&self, partition: i32) -> i64 {
        self.position.get(&partition).copied().unwrap_or(0)
    }

    /// Approximate lag per partition: high watermark minus our position, from the last
    /// watermarks the broker reported (asked for by [`Self::ask_lag`] off this thread, or
    /// by a lost-log check), so it may be one ask old. (Tansu reports watermarks per
    /// produced batch: the figure is approximate there.) Without an asking thread the
    /// broker is asked here, blocking.
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        let asked: BTreeMap<i32, i64> = match self.asker {
            Some(_) => self.highs.clone(),
            None => asker::highs(&self.consumer, &self.topic, &self.partitions, CHECK_TIMEOUT),
        };
        asked
            .into_iter()
            .filter(|(_, high)| *high >= 0)
            .map(|(p, high)| (p, (high - self.position(p)).max(0)))
            .collect()
    }

    /// Ask for fresh watermarks for [`Self::lag`]; they arrive with a later poll. Call it
    /// once per metrics interval, not per poll.
    pub fn ask_lag(&mut self) {
        if let (Some(asker), false) = (&self.asker, self.lag_asked) {
            asker.ask(Question::Highs(self.partitions.clone()));
            self.lag_asked = true;
        }
    }
}

/// No broker can be reached: an outage (logged once, the consumer rebuilt).
fn is_outage(code: RDKafkaErrorCode) -> bool {
    code == RDKafkaErrorCode::AllBrokersDown
}

/// Transient trouble librdkafka retries by itself (a dropped connection, a leader
/// election): not worth a warning each time.
fn is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::Resolve
            | C::OperationTimedOut
            | C::TimedOutQueue
            | C::RequestTimedOut
            | C::NetworkException
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::CoordinatorNotAvailable
    )
}

fn is_unknown_partition(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId
    )
}

/// Every partition of some topics, for tools that read a job's output (tail, bench, plan,
/// tests). Waits up to `wait_for_topics` for topics that do not exist yet (the processor
/// creates them at start-up).
pub struct TopicReader {
    consumer: BaseConsumer,
}

impl TopicReader {
    pub fn open(
        settings: &KafkaSettings,
        topics: &[&str],
        start: StartAt,
        wait_for_topics: Duration,
    ) -> Result<Self, KafkaConnectorError> {
        let consumer = settings.consumer()?;
        let deadline = Instant::now() + wait_for_topics;
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            let count = loop {
                match super::partition_count(&consumer, topic, &settings.brokers) {
                    Ok(n) => break n,
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            };
            for p in 0..count {
                tpl.add_partition_offset(topic, p, start.offset())?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer })
    }

    /// The next record, waiting at most `timeout`. Consumer errors are transient (librdkafka
    /// reconnects): they are logged at debug level and read as "nothing yet".
    pub fn next(&self, timeout: Duration) -> Option<RawRecord> {
        match self.consumer.poll(timeout)? {
            Ok(msg) => Some(to_raw(&msg)),
            Err(e) => {
                tracing::debug!(error = %e, "topic reader");
                None
            }
        }
    }

    /// Everything that arrives within `wait`, returning early once nothing more comes.
    pub fn drain(&self, wait: Duration) -> Vec<RawRecord> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let mut timeout = wait;
        while let Some(rec) = self.next(timeout) {
            out.push(rec);
            timeout = Duration::ZERO;
            if Instant::now() >= deadline {
                break;
            }
        }
        out
    }
}

fn to_raw<M: Message>(msg: &M) -> RawRecord {
    let headers = msg
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    RawRecord {
        topic: msg.topic().to_string(),
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().map(|k| k.to_vec()),
        value: msg.payload().map(|v| v.to_vec()),
        headers,
    }
}
