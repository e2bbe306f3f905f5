//! The teddyflow dataflow: a timely graph from Kafka audio chunks to spoken replies.
//!
//! - [`stages`]: the pipeline, one module per stage (read, reassemble, decode, hear,
//!   understand, answer, respond, write), each an extension method on a stream.
//! - [`envelope`]: what travels between stages (ids, offsets, timings, admission ticket).
//! - [`stage`]: the stages' names and the pipeline's shape, shared by metrics, bench, plan.
//! - [`outputs`]: every record written, typed (responses, alerts, dead letters, speech,
//!   metrics snapshots).
//! - [`operators`]: the generic operators stages are built from (source, pool stage,
//!   joins, sink).
//! - [`graph`]: the per-worker graph and its run loop (drain on stop).
//! - [`reassembly`]: chunks → utterances (pure state machine, oracle-tested).
//! - [`offsets`]: which input offsets may be committed, from the output frontier.
//! - [`pool`]: model stages off the worker threads, with dynamic batching.
//! - [`metrics`]: per-worker counters and latency samples.
//! - [`config`]: the job's configuration.
//! - [`cores`]: the cores a process may use (affinity, cgroup quota), and pinning.
//! - [`threads`]: every thread count derived from the core budget, and the core permits
//!   that keep busy model threads within it.

// Stage results are moved through streams once; boxing their failures would allocate per
// utterance for nothing.
#![allow(clippy::result_large_err)]

pub mod config;
pub mod cores;
pub mod envelope;
pub mod graph;
pub mod metrics;
pub mod offsets;
pub mod operators;
pub mod outputs;
pub mod pool;
pub mod reassembly;
pub mod stage;
pub mod stages;
pub mod threads;
