//! The sink side: a producer whose deliveries are reported back by id, so the engine
//! can release a timestamp only once everything written for it is durable.
//!
//! Every failure, at `send` or in a delivery report, says whether trying again can help
//! ([`ErrorKind`]): a record the broker will never take (too large, invalid, an unknown
//! topic) is `Permanent` and must be set aside, or it would block everything behind it.
//!
//! When the brokers go away the producer is replaced by a fresh one at the next
//! [`AckedWriter::poll`]; what the old one still held comes back as retriable failures
//! (purged) and is sent again. The broker that comes back may be a different, empty one with
//! the topics recreated under new topic ids, and librdkafka 2.12 corrupts its metadata cache
//! when a client it knew the old topics by sees the new ones (a SIGSEGV in
//! `rd_kafka_metadata_cache_find`, seen in the emptied-broker test; upstream issues 4778,
//! 4898, 4964: "it's still needed to restart the clients"). A client made during the outage
//! never knew the old ids.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::{KafkaConnectorError, KafkaSettings};
use crate::wire::OutRecord;

/// The broker's answer for one record sent with [`AckedWriter::send`].
#[derive(Debug)]
pub struct Delivery {
    pub id: u64,
    pub result: Result<(), ProduceError>,
}

/// Whether a failed record can succeed if sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Back-pressure or the broker being away (queue full, timeouts, transport, leader
    /// elections): send it again after a pause.
    Retriable,
    /// The broker will never take this record (too large, invalid, unknown topic, not
    /// authorised): sending it again only blocks what is behind it.
    Permanent,
}

/// Why a record was not queued or not delivered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} ({kind:?})")]
pub struct ProduceError {
    pub kind: ErrorKind,
    /// librdkafka's code, when there is one.
    pub code: Option<RDKafkaErrorCode>,
    pub message: String,
}

impl ProduceError {
    fn from_kafka(e: &KafkaError) -> Self {
        let code = e.rdkafka_error_code();
        Self {
            kind: code.map_or(ErrorKind::Retriable, classify),
            code,
            message: e.to_string(),
        }
    }

    pub fn is_retriable(&self) -> bool {
        self.kind == ErrorKind::Retriable
    }

    /// The producer's queue is full: back-pressure, not a fault.
    pub fn is_queue_full(&self) -> bool {
        self.code == Some(RDKafkaErrorCode::QueueFull)
    }
}

/// Which produce errors can never succeed on a retry. Anything not known to be permanent
/// counts as retriable: librdkafka already retries transient errors itself until
/// `message.timeout.ms`, so what reaches us is either a broker that stays away (worth
/// waiting for) or a record it refuses (listed here).
pub fn classify(code: RDKafkaErrorCode) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::MessageBatchTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::BadMessage
        | C::BadCompression
        | C::UnsupportedCompressionType
        | C::UnknownTopic
        | C::UnknownPartition
        | C::UnknownTopicOrPartition
        | C::UnknownTopicId
        | C::InvalidTopic
        | C::InvalidRequiredAcks
        | C::InvalidTimestamp
        | C::InvalidArgument
        | C::UnsupportedForMessageFormat
        | C::PolicyViolation
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::KeySerialization
        | C::ValueSerialization
        | C::Fatal => ErrorKind::Permanent,
        _ => ErrorKind::Retriable,
    }
}

#[derive(Default)]
struct Acks {
    done: Mutex<Vec<Delivery>>,
    /// When the current broker outage began, as seen by this producer.
    outage: Mutex<Option<std::time::Instant>>,
    /// An outage began: replace the producer at the next poll.
    replace: AtomicBool,
}

/// librdkafka logs every failed reconnect (hundreds of ERROR lines in an outage): its own
/// lines stay at debug, and an outage is logged once when it begins and once when it ends.
impl ClientContext for Acks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        super::librdkafka_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let outage = super::connection_lost(&error);
        let Ok(mut since) = self.outage.lock() else {
            return;
        };
        if outage && since.is_none() {
            tracing::warn!(error = %error, "kafka brokers unreachable; output waits for them");
            *since = Some(std::time::Instant::now());
            self.replace.store(true, Ordering::Release);
        } else if outage {
            tracing::debug!(error = %error, "{reason}");
        } else {
            tracing::warn!(error = %error, "kafka producer error: {reason}");
        }
    }
}

impl Acks {
    fn delivered(&self) {
        if let Ok(mut since) = self.outage.lock() {
            if let Some(at) = since.take() {
                let secs = at.elapsed().as_secs_f64();
                tracing::info!("kafka brokers reachable again after {secs:.1} s (output)");
            }
        }
    }
}

impl ProducerContext for Acks {
    // 0 marks fire-and-forget records (metrics) that nobody waits for.
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Self::DeliveryOpaque) {
        if result.is_ok() {
            self.delivered();
        }
        if *id == 0 {
            return;
        }
        let result = result
            .as_ref()
            .map(|_| ())
            .map_err(|(e, _)| ProduceError::from_kafka(e));
        if let Ok(mut done) = self.done.lock() {
            done.push(Delivery { id: *id, result });
        }
    }
}

/// One librdkafka producer and its delivery reports.
struct Client {
    producer: BaseProducer<Acks>,
    acks: Arc<Acks>,
}

impl Client {
    fn open(settings: &KafkaSettings, acks: Acks) -> Result<Self, KafkaConnectorError> {
        let mut cfg = settings.client_config();
        // Idempotence would be right on a full Kafka; librdkafka's defaults with acks=all
        // and retries give at-least-once everywhere, and outputs carry ids for dedup.
        cfg.set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        for (k, v) in &settings.options {
            cfg.set(k, v);
        }
        let producer: BaseProducer<Acks> = cfg.create_with_context(acks)?;
        let acks = producer.context().clone();
        Ok(Self { producer, acks })
    }
}

/// A producer for one timely worker (not shared across threads).
pub struct AckedWriter {
    settings: KafkaSettings,
    client: RefCell<Client>,
}

impl AckedWriter {
    pub fn open(settings: &KafkaSettings) -> Result<Self, KafkaConnectorError> {
        let client = Client::open(settings, Acks::default())?;
        Ok(Self {
            settings: settings.clone(),
            client: RefCell::new(client),
        })
    }

    /// A fresh producer in place of one that saw the brokers go (see the module docs).
    /// The old one's records come back as purged, retriable failures, reported by the
    /// next [`AckedWriter::poll`]; the outage goes on being timed by the new one.
    fn replace(&self) {
        let since = self
            .client
            .borrow()
            .acks
            .outage
            .lock()
            .ok()
            .and_then(|s| *s);
        let acks = Acks {
            outage: Mutex::new(since),
            ..Acks::default()
        };
        let fresh = match Client::open(&self.settings, acks) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "could not create a fresh producer; keeping the old one");
                return;
            }
        };
        let old = self.client.replace(fresh);
        let old_acks = old.acks.clone();
        drop(old); // purges what it still held, reporting each record to `old_acks`
        let purged = old_acks
            .done
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        tracing::debug!(
            purged = purged.len(),
            "kafka producer replaced during an outage"
        );
        if let Ok(mut done) = self.client.borrow().acks.done.lock() {
            done.extend(purged);
        }
    }

    /// Queue `record`; its delivery is reported by [`AckedWriter::poll`] under `id` (> 0).
    /// A full queue is [`ErrorKind::Retriable`] (try again after `poll`); a record larger
    /// than `message.max.bytes` is refused here, at once, as [`ErrorKind::Permanent`].
    pub fn send(&self, id: u64, record: &OutRecord) -> Result<(), ProduceError> {
        debug_assert!(id > 0, "id 0 is reserved for untracked records");
        let headers = record
            .headers
            .iter()
            .fold(OwnedHeaders::new(), |hs, (k, v)| {
                hs.insert(Header {
                    key: k,
                    value: Some(v),
                })
            });
        let mut rec = BaseRecord::with_opaque_to(&record.topic, Box::new(id))
            .payload(&record.payload)
            .headers(headers);
        if let Some(key) = &record.key {
            rec = rec.key(key);
        }
        self.client
            .borrow()
            .producer
            .send(rec)
            .map_err(|(e, _)| ProduceError::from_kafka(&e))
    }

    /// Queue a record nobody waits for (metrics snapshots); dropped if the queue is full.
    pub fn send_untracked(&self, record: &OutRecord) {
        let mut rec =
            BaseRecord::with_opaque_to(&record.topic, Box::new(0)).payload(&record.payload);
        if let Some(key) = &record.key {
            rec = rec.key(key);
        }
        if let Err((e, _)) = self.client.borrow().producer.send(rec) {
            tracing::debug!(error = %e, "untracked record dropped");
        }
    }

    /// Serve delivery callbacks and return the deliveries seen since the last call.
    pub fn poll(&self) -> Vec<Delivery> {
        self.client.borrow().producer.poll(Duration::ZERO);
        let replace = self
            .client
            .borrow()
            .acks
            .replace
            .swap(false, Ordering::AcqRel);
        if replace {
            self.replace();
        }
        let client = self.client.borrow();
        client
            .acks
            .done
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// Records queued or in flight.
    pub fn in_flight(&self) -> i32 {
        self.client.borrow().producer.in_flight_count()
    }

    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.client.borrow().producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not finish");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_errors_are_classified() {
        use RDKafkaErrorCode as C;
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidRecord,
            C::InvalidMessage,
            C::UnknownTopic,
            C::UnknownTopicOrPartition,
            C::TopicAuthorizationFailed,
        ] {
            assert_eq!(classify(code), ErrorKind::Permanent, "{code:?}");
        }
        for code in [
            C::QueueFull,
            C::MessageTimedOut,
            C::RequestTimedOut,
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::NetworkException,
        ] {
            assert_eq!(classify(code), ErrorKind::Retriable, "{code:?}");
        }
    }

    /// Issue 11, defect 1: librdkafka refuses a record over `message.max.bytes` at `send`;
    /// that refusal is permanent (the old sink retried it forever), a full queue is not.
    /// No broker is needed: the size check happens before anything is sent.
    #[test]
    fn an_oversized_record_is_refused_permanently_at_send() {
        let settings = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            options: [("queue.buffering.max.messages".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        let writer = AckedWriter::open(&settings).unwrap();
        let record = |size: usize| OutRecord {
            topic: "t".into(),
            key: Some(b"k".to_vec()),
            payload: vec![0; size],
            headers: vec![("h".into(), b"v".to_vec())],
        };
        let e = writer.send(1, &record(2 * 1024 * 1024)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
        assert_eq!(e.code, Some(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(!e.is_retriable() && !e.is_queue_full());
        writer
            .send(2, &record(10))
            .expect("a small record is queued");
        let e = writer.send(3, &record(10)).unwrap_err();
        assert!(e.is_queue_full() && e.is_retriable(), "{e}");
    }
}
