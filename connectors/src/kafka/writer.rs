//! The sink side: a producer whose deliveries are reported back by id, so the engine
//! can release a timestamp only once everything written for it is durable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::{KafkaConnectorError, KafkaSettings};
use crate::wire::OutRecord;

/// The broker's answer for one record sent with [`AckedWriter::send`].
#[derive(Debug)]
pub struct Delivery {
    pub id: u64,
    pub result: Result<(), String>,
}

#[derive(Default)]
struct Acks {
    done: Mutex<Vec<Delivery>>,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    // 0 marks fire-and-forget records (metrics) that nobody waits for.
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, id: Self::DeliveryOpaque) {
        if *id == 0 {
            return;
        }
        let result = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        if let Ok(mut done) = self.done.lock() {
            done.push(Delivery { id: *id, result });
        }
    }
}

pub struct AckedWriter {
    producer: BaseProducer<Acks>,
    acks: Arc<Acks>,
}

/// Why a record was not queued: `QueueFull` is back-pressure, try again after `poll`.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("producer queue is full")]
    QueueFull,
    #[error("{0}")]
    Kafka(KafkaError),
}

impl AckedWriter {
    pub fn open(settings: &KafkaSettings) -> Result<Self, KafkaConnectorError> {
        let mut cfg = settings.client_config();
        // Idempotence would be right on a full Kafka; librdkafka's defaults with acks=all
        // and retries give at-least-once everywhere, and outputs carry ids for dedup.
        cfg.set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        for (k, v) in &settings.options {
            cfg.set(k, v);
        }
        let producer: BaseProducer<Acks> = cfg.create_with_context(Acks::default())?;
        let acks = producer.context().clone();
        Ok(Self { producer, acks })
    }

    /// Queue `record`; its delivery is reported by [`AckedWriter::poll`] under `id` (> 0).
    pub fn send(&self, id: u64, record: &OutRecord) -> Result<(), SendError> {
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
        self.producer.send(rec).map_err(|(e, _)| match e {
            KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => SendError::QueueFull,
            other => SendError::Kafka(other),
        })
    }

    /// Queue a record nobody waits for (metrics snapshots); dropped if the queue is full.
    pub fn send_untracked(&self, record: &OutRecord) {
        let mut rec =
            BaseRecord::with_opaque_to(&record.topic, Box::new(0)).payload(&record.payload);
        if let Some(key) = &record.key {
            rec = rec.key(key);
        }
        if let Err((e, _)) = self.producer.send(rec) {
            tracing::debug!(error = %e, "untracked record dropped");
        }
    }

    /// Serve delivery callbacks and return the deliveries seen since the last call.
    pub fn poll(&self) -> Vec<Delivery> {
        self.producer.poll(Duration::ZERO);
        self.acks
            .done
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }

    /// Records queued or in flight.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush did not finish");
        }
    }
}
