//! The source side: a consumer over a fixed set of partitions, polled without blocking, and
//! a reader of whole topics for tools (tail, bench, plan, tests).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{partition_count, KafkaConnectorError, KafkaSettings};
use crate::wire::RawRecord;

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
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    /// Next offset to read per partition, as far as this reader has seen.
    position: BTreeMap<i32, i64>,
}

impl PartitionReader {
    /// Assign `partitions` of `topic` starting at `start`.
    pub fn open(
        settings: &KafkaSettings,
        topic: &str,
        partitions: Vec<i32>,
        start: StartAt,
    ) -> Result<Self, KafkaConnectorError> {
        let consumer = settings.consumer()?;
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, start.offset())?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            topic: topic.into(),
            partitions,
            position: BTreeMap::new(),
        })
    }

    /// Worker `index` of `peers`'s share of `topic` (partitions `p % peers == index`), read
    /// from `start`; `None` when the topic has fewer partitions than there are workers.
    pub fn for_worker(
        settings: &KafkaSettings,
        topic: &str,
        (index, peers): (usize, usize),
        start: StartAt,
    ) -> Result<Option<Self>, KafkaConnectorError> {
        let probe = settings.consumer()?;
        let count = partition_count(&probe, topic, &settings.brokers)?;
        let mine = super::partitions_for_worker(count, index, peers);
        if mine.is_empty() {
            return Ok(None);
        }
        Self::open(settings, topic, mine, start).map(Some)
    }

    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Read up to `max` records without waiting. Errors from the broker are transient for
    /// a consumer (librdkafka reconnects), so they are logged and reading goes on.
    pub fn poll_batch(&mut self, max: usize) -> Vec<RawRecord> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                Some(Ok(msg)) => {
                    self.position.insert(msg.partition(), msg.offset() + 1);
                    out.push(to_raw(&msg));
                }
            }
        }
        out
    }

    /// Commit `next` offsets (offset of the next record to read) per partition.
    pub fn commit(&self, next: &BTreeMap<i32, i64>, mode: Commit) {
        let mode = match mode {
            Commit::Async => CommitMode::Async,
            Commit::Sync => CommitMode::Sync,
        };
        if next.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, off) in next {
            if tpl
                .add_partition_offset(&self.topic, *p, Offset::Offset(*off))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::warn!(error = %e, "offset commit failed; it will be retried with the next one");
        }
    }

    /// High watermark (offset after the last record) per partition, as the broker reports it.
    pub fn high_watermarks(&self) -> BTreeMap<i32, i64> {
        let mut high = BTreeMap::new();
        for p in &self.partitions {
            let asked = self
                .consumer
                .fetch_watermarks(&self.topic, *p, Duration::from_secs(2));
            if let Ok((_, h)) = asked {
                high.insert(*p, h.max(0));
            }
        }
        high
    }

    /// Next offset to read per partition, as far as this reader has seen.
    pub fn position(&self, partition: i32) -> i64 {
        self.position.get(&partition).copied().unwrap_or(0)
    }

    /// Approximate lag per partition: high watermark minus our position. Asks the broker,
    /// so call it once per metrics interval, not per poll. (Tansu reports watermarks per
    /// produced batch: the figure is approximate there.)
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        let mut lag = BTreeMap::new();
        for p in &self.partitions {
            let asked = self
                .consumer
                .fetch_watermarks(&self.topic, *p, Duration::from_millis(500));
            if let Ok((_, high)) = asked {
                let pos = self.position.get(p).copied().unwrap_or(0);
                if high >= 0 {
                    lag.insert(*p, (high - pos).max(0));
                }
            }
        }
        lag
    }
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
                match partition_count(&consumer, topic, &settings.brokers) {
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
