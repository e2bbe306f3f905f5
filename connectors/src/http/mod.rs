//! Operating a process over HTTP: Prometheus metrics, liveness and readiness.
//!
//! - [`Telemetry`]: the process's metric families and its [`Health`]; an `Arc` the graph's
//!   operators update with atomic increments (a histogram observation takes one short lock).
//! - [`HttpServer`]: a tokio runtime on its own thread serving an axum router, so a scrape
//!   never runs on (or waits for) a timely worker. [`HttpServer::telemetry`] serves
//!   `GET /metrics`, `GET /healthz` and `GET /readyz`; [`HttpServer::start`] any router
//!   (the dashboard, `plan --watch`).
//! - [`exposition`]: a strict parser of the Prometheus text format, for tests and tools
//!   that read `/metrics` back.
//!
//! No child, conversation or utterance id is ever a label: the label types are closed enums
//! and partition numbers.

pub mod exposition;
mod health;
mod process;
mod server;
mod telemetry;

pub use crate::wire::DeadLetterReason;
pub use health::{Health, Readiness};
pub use server::{telemetry_router, HttpError, HttpServer};
pub use telemetry::{AlertKind, CommitResult, Telemetry, STAGE_BUCKETS};
