//! Kafka connector: settings, topic admin, the partition reader (source) and the
//! acknowledged writer (sink). Offsets are owned by the engine: the reader never
//! auto-commits, and the engine commits only what the writer has seen acknowledged.

mod asker;
mod reader;
mod writer;

pub use reader::{
    Commit, PartitionReader, Reset, ResetReason, StartAt, TopicReader, LOG_CHECK_INTERVAL,
};
pub use writer::{classify, AckedWriter, Delivery, ErrorKind, ProduceError};

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum KafkaConnectorError {
    #[error("kafka client error: {0}")]
    Client(#[from] KafkaError),
    #[error("topic `{topic}` was not found on the broker at {brokers}")]
    NoSuchTopic { topic: String, brokers: String },
    #[error("could not create topic `{topic}`: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("could not start a kafka client thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// How to reach the brokers. `options` passes any librdkafka setting through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated bootstrap servers.
    pub brokers: String,
    /// Group id under which input offsets are committed. Partitions are assigned by the
    /// engine, never by a group protocol (see README: Tansu's stuck groups).
    pub group_id: String,
    /// Where to read from when a partition's position is gone: the group has no committed
    /// offset yet, or the broker lost the log (restarted with empty storage, topic deleted
    /// and recreated: offsets out of range, a high watermark below our position while the
    /// broker has forgotten our committed offset, a partition that vanished and came back).
    pub offset_reset: OffsetReset,
    /// Extra librdkafka settings, applied last.
    pub options: BTreeMap<String, String>,
}

/// The `auto.offset.reset`-like policy of [`KafkaSettings::offset_reset`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetReset {
    /// Read the partition from its first record: nothing new is skipped (repeats carry the
    /// same ids).
    #[default]
    Earliest,
    /// Skip to the end: only records produced from now on are read.
    Latest,
}

impl OffsetReset {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "teddyflow".into(),
            offset_reset: OffsetReset::Earliest,
            options: BTreeMap::new(),
        }
    }
}

impl KafkaSettings {
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.options {
            cfg.set(k, v);
        }
        cfg
    }

    /// A consumer that never commits by itself and starts from the earliest offset when
    /// its group has no committed offset yet (a new deployment must not skip utterances;
    /// `offset_reset = "latest"` says otherwise).
    pub fn consumer(&self) -> Result<BaseConsumer, KafkaConnectorError> {
        Ok(self.consumer_config().create()?)
    }

    /// As [`Self::consumer`], with a client context of one's own (the reader's keeps
    /// librdkafka's own log lines at debug and reports outages once).
    pub fn consumer_with<C: rdkafka::consumer::ConsumerContext>(
        &self,
        context: C,
    ) -> Result<BaseConsumer<C>, KafkaConnectorError> {
        Ok(self.consumer_config().create_with_context(context)?)
    }

    fn consumer_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", self.offset_reset.as_str())
            .set("session.timeout.ms", "6000")
            .set("fetch.wait.max.ms", "50");
        for (k, v) in &self.options {
            cfg.set(k, v);
        }
        cfg
    }
}

/// A topic the job needs.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub compacted: bool,
}

/// Create the topics that do not exist yet; existing topics are left as they are.
pub fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[TopicSpec],
) -> Result<(), KafkaConnectorError> {
    let admin: AdminClient<DefaultClientContext> = settings.client_config().create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1));
            if t.compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = futures_executor::block_on(admin.create_topics(new.iter(), &opts))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaConnectorError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Number of partitions of `topic`, from broker metadata.
pub fn partition_count(
    consumer: &BaseConsumer,
    topic: &str,
    brokers: &str,
) -> Result<i32, KafkaConnectorError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    if found == 0 {
        return Err(KafkaConnectorError::NoSuchTopic {
            topic: topic.into(),
            brokers: brokers.into(),
        });
    }
    Ok(found)
}

impl KafkaSettings {
    /// Number of partitions of `topic`, for tools that only need the count.
    pub fn partition_count(&self, topic: &str) -> Result<i32, KafkaConnectorError> {
        partition_count(&self.consumer()?, topic, &self.brokers)
    }
}

/// librdkafka's own log lines: only the gravest reach warn, the rest stay at debug (it
/// logs every failed reconnect; our clients log an outage once instead).
/// A client-wide error saying a broker connection dropped (or every one did): the broker
/// that answers next may be a different, empty one (see `writer.rs` and `reader.rs`).
fn connection_lost(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    error
        .rdkafka_error_code()
        .is_some_and(|c| matches!(c, C::AllBrokersDown | C::BrokerTransportFailure))
}

fn librdkafka_log(level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical => {
            tracing::warn!(target: "librdkafka", "{fac}: {message}")
        }
        _ => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
    }
}

/// Partitions owned by worker `index` of `peers`: a fixed, deterministic split so every
/// partition has exactly one reader without a group protocol.
pub fn partitions_for_worker(count: i32, index: usize, peers: usize) -> Vec<i32> {
    (0..count)
        .filter(|p| (*p as usize) % peers == index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::partitions_for_worker;

    #[test]
    fn every_partition_has_exactly_one_worker() {
        for peers in 1..6 {
            for count in 0..9 {
                let mut all: Vec<i32> = (0..peers)
                    .flat_map(|i| partitions_for_worker(count, i, peers))
                    .collect();
                all.sort();
                assert_eq!(all, (0..count).collect::<Vec<_>>());
            }
        }
    }
}
