//! Reads the run's output topics: responses (matched by conversation + utterance and
//! stamped with the bench's clock on arrival), metrics snapshots (readiness, last state
//! per worker) and dead letters (counted, so missing responses can be explained).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use teddyflow_connectors::kafka::{partition_count, KafkaSettings};

/// A response as the bench keeps it: its timings and when it was read. The transcript
/// is dropped on arrival; the bench never holds or prints what a child said.
pub struct Seen {
    pub at: Instant,
    pub body: serde_json::Value,
}

pub struct Collector {
    consumer: BaseConsumer,
    responses_topic: String,
    metrics_topic: String,
    pub responses: HashMap<(String, String), Seen>,
    pub duplicates: usize,
    pub deadletters: usize,
    /// Latest snapshot per (process, worker).
    pub metrics: BTreeMap<(u64, u64), serde_json::Value>,
}

pub struct OutputTopics<'a> {
    pub responses: &'a str,
    pub metrics: &'a str,
    pub deadletter: &'a str,
}

impl Collector {
    /// Read all three topics from their beginning (they are fresh for every run).
    pub fn open(settings: &KafkaSettings, topics: &OutputTopics) -> anyhow::Result<Collector> {
        let settings = KafkaSettings {
            group_id: format!("teddyflow-bench-e2e-{}", std::process::id()),
            ..settings.clone()
        };
        let consumer: BaseConsumer = settings.consumer()?;
        let mut tpl = TopicPartitionList::new();
        for topic in [topics.responses, topics.metrics, topics.deadletter] {
            for p in 0..partition_count(&consumer, topic, &settings.brokers)? {
                tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(Collector {
            consumer,
            responses_topic: topics.responses.into(),
            metrics_topic: topics.metrics.into(),
            responses: HashMap::new(),
            duplicates: 0,
            deadletters: 0,
            metrics: BTreeMap::new(),
        })
    }

    /// Take what arrives within `wait` (returns early once the topics are drained).
    pub fn poll_for(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let mut timeout = wait;
        while let Some(msg) = self.consumer.poll(timeout) {
            // Owned copies: the message borrows the consumer, which `take` cannot share.
            let owned = msg.map(|m| {
                (
                    m.topic().to_string(),
                    m.payload().unwrap_or_default().to_vec(),
                )
            });
            match owned {
                Ok((topic, payload)) => self.take(&topic, &payload),
                Err(e) => tracing::debug!(error = %e, "bench consumer"),
            }
            timeout = Duration::ZERO;
            if Instant::now() >= deadline {
                break;
            }
        }
    }

    fn take(&mut self, topic: &str, payload: &[u8]) {
        let at = Instant::now();
        if topic != self.responses_topic && topic != self.metrics_topic {
            self.deadletters += 1;
            return;
        }
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        if topic == self.metrics_topic {
            let key = (
                v["process"].as_u64().unwrap_or(0),
                v["worker"].as_u64().unwrap_or(0),
            );
            self.metrics.insert(key, v);
        } else {
            self.take_response(at, &mut v);
        }
    }

    fn take_response(&mut self, at: Instant, v: &mut serde_json::Value) {
        let id = (
            v["conversation"].as_str().unwrap_or_default().to_string(),
            v["utterance"].as_str().unwrap_or_default().to_string(),
        );
        if let Some(body) = v.as_object_mut() {
            for private in ["transcript", "reply", "redacted"] {
                body.remove(private);
            }
        }
        if self.responses.contains_key(&id) {
            // At-least-once delivery: a repeat keeps the first arrival's time.
            self.duplicates += 1;
        } else {
            self.responses.insert(id, Seen { at, body: v.take() });
        }
    }

    /// How many of `ids` have been answered.
    pub fn answered(&self, ids: &HashSet<(String, String)>) -> usize {
        ids.iter()
            .filter(|id| self.responses.contains_key(*id))
            .count()
    }

    /// Whether any worker of `process` has written a metrics snapshot (it is running).
    pub fn has_metrics_from(&self, process: usize) -> bool {
        self.metrics.keys().any(|(p, _)| *p == process as u64)
    }
}
