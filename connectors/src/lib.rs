//! Connectors: everything that touches the outside world, and nothing about the graph.
//!
//! - [`wire`]: the audio wire format (`docs/wire-format.md`) — parsing chunk records.
//! - [`kafka`]: client settings, topic admin, the partition reader and the acknowledged writer.
//! - [`file`]: clip directories with reference transcripts (for `bench asr` and tests).
//! - [`fleet`]: a simulated fleet of toys producing utterances in any codec.
//! - [`http`]: Prometheus metrics, health and readiness over HTTP, on a thread of its own.

pub mod file;
pub mod fleet;
pub mod http;
pub mod kafka;
pub mod wire;

pub use wire::{Chunk, ChunkHeaders, OutRecord, RawRecord, WireError};
