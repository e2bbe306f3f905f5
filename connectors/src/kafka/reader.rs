//! The source side: a consumer over a fixed set of partitions, polled without blocking.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaConnectorError, KafkaSettings};
use crate::wire::RawRecord;

pub struct PartitionReader {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    /// Next offset to read per partition, as far as this reader has seen.
    position: BTreeMap<i32, i64>,
}

impl PartitionReader {
    /// Assign `partitions` of `topic` starting at `start`: `Offset::Stored` resumes from the
    /// group's committed offsets (work), `Offset::Beginning` re-reads a compacted topic (state).
    pub fn open(
        settings: &KafkaSettings,
        topic: &str,
        partitions: Vec<i32>,
        start: Offset,
    ) -> Result<Self, KafkaConnectorError> {
        let consumer = settings.consumer()?;
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, start)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self {
            consumer,
            topic: topic.into(),
            partitions,
            position: BTreeMap::new(),
        })
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
    pub fn commit(&self, next: &BTreeMap<i32, i64>, mode: CommitMode) {
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
