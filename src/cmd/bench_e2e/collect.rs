//! Reads the run's output topics: responses (matched by conversation + utterance and
//! stamped with the bench's clock on arrival), metrics snapshots (readiness, last state
//! per worker) and dead letters (counted, so missing responses can be explained).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use teddyflow_connectors::kafka::{KafkaSettings, StartAt, TopicReader};
use teddyflow_dataflow::outputs::{MetricsSnapshot, Response};

/// A response as the bench keeps it: its timings and when it was read. The transcript and
/// the reply are dropped on arrival; the bench never holds or prints what a child said.
pub struct Seen {
    pub at: Instant,
    pub body: Response,
}

pub struct Collector {
    reader: TopicReader,
    responses_topic: String,
    metrics_topic: String,
    pub responses: HashMap<(String, String), Seen>,
    pub duplicates: usize,
    pub deadletters: usize,
    /// Latest snapshot per (process, worker).
    pub metrics: BTreeMap<(usize, usize), MetricsSnapshot>,
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
        let all = [topics.responses, topics.metrics, topics.deadletter];
        let reader = TopicReader::open(&settings, &all, StartAt::Beginning, Duration::ZERO)?;
        Ok(Collector {
            reader,
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
        for rec in self.reader.drain(wait) {
            self.take(&rec.topic, rec.value.as_deref().unwrap_or_default());
        }
    }

    fn take(&mut self, topic: &str, payload: &[u8]) {
        let at = Instant::now();
        if topic == self.metrics_topic {
            if let Ok(m) = serde_json::from_slice::<MetricsSnapshot>(payload) {
                self.metrics.insert((m.process, m.worker), m);
            }
        } else if topic == self.responses_topic {
            if let Ok(r) = serde_json::from_slice::<Response>(payload) {
                self.take_response(at, r);
            }
        } else {
            self.deadletters += 1;
        }
    }

    fn take_response(&mut self, at: Instant, mut r: Response) {
        let id = (r.conversation.clone(), r.utterance.clone());
        r.transcript.clear();
        r.reply = None;
        match self.responses.entry(id) {
            // At-least-once delivery: a repeat keeps the first arrival's time.
            Entry::Occupied(_) => self.duplicates += 1,
            Entry::Vacant(slot) => {
                slot.insert(Seen { at, body: r });
            }
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
        self.metrics.keys().any(|(p, _)| *p == process)
    }
}
