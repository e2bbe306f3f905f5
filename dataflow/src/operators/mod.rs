//! Generic operators the stages are built from, each a small closure over timely's
//! generic operators, holding a capability only while it has work pending for that time.
//!
//! - [`kafka_source`]: one source for every Kafka input ([`Polled`] says what it does).
//! - [`async_stage`]: hand records to a model [`StagePool`](crate::pool::StagePool).
//! - [`join_halves`], [`join_lookup`]: per-utterance joins by key.
//! - [`kafka_sink`]: write, hold each time until the broker acknowledged it.

mod join;
mod sink;
mod source;
mod stage;

pub use join::{join_halves, join_lookup};
pub use sink::{kafka_sink, Pending, Receipts};
pub use source::{epoch_now, kafka_source, next_epoch, Hold, Polled, SourceSettings};
pub use stage::async_stage;

use std::hash::{Hash, Hasher};

/// A hash every process computes the same way: routing by it makes one worker own a
/// conversation, and a replay picks the same curated reply.
pub fn stable_hash(text: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}
