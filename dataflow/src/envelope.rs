//! What travels through the stages: an [`Envelope`] around each stage's result, carrying the
//! utterance's ids, source offsets and timings, and its admission [`Ticket`].
//!
//! Envelopes stay on the worker that owns the conversation (only raw chunks and profile
//! lookups are exchanged between workers), so the ticket can be a plain shared handle: every
//! copy of an utterance's work (the speech-to-text and acoustic halves of a fork) holds one,
//! and the utterance leaves admission when the last copy is dropped — whether it was
//! answered, failed, or orphaned by a join. No stage needs to know whether it is the last.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use teddyflow_connectors::wire::ChunkHeaders;

use crate::stage::Stage;
use crate::stages::profiles::Profile;

/// The input offsets an utterance was assembled from, per partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRange {
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// Everything about an utterance except its audio, carried to the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub conversation: String,
    pub utterance: String,
    pub child: Option<String>,
    /// Headers of the first chunk, kept for dead letters.
    pub headers: ChunkHeaders,
    pub sources: Vec<SourceRange>,
    /// Closed by the idle timeout before its final chunk arrived.
    pub incomplete: bool,
    /// Wall-clock ms when the utterance became complete (its last chunk arrived).
    pub completed_ms: i64,
    /// Stage → milliseconds, in pipeline order.
    pub timings: Vec<(Stage, f64)>,
    /// Stage → (start, end) in ms after `completed_ms`, for stages that run side by side
    /// (speech-to-text and acoustic analysis, reply and speech), so overlap is observable.
    pub spans: Vec<(Stage, f64, f64)>,
    /// Dataflow time by which everything keyed to this utterance's final chunk (its profile
    /// lookup) has been produced: the time of the chunk that completed it.
    pub ready_time: u64,
    /// Stage → how many utterances it processed together with this one (dynamic batching).
    pub batches: Vec<(Stage, usize)>,
    /// The child's profile as it was at the final chunk, once looked up (before hearing:
    /// the language decides how the utterance is heard); `None`: no profile, or none looked up.
    pub profile: Option<Profile>,
}

impl Meta {
    /// An utterance's metadata from its first chunk seen: nothing timed or read yet.
    pub fn new(conversation: &str, headers: &ChunkHeaders) -> Meta {
        Meta {
            conversation: conversation.into(),
            utterance: headers.utterance.clone(),
            child: headers.child.clone(),
            headers: headers.clone(),
            sources: Vec::new(),
            incomplete: false,
            completed_ms: 0,
            timings: Vec::new(),
            spans: Vec::new(),
            ready_time: 0,
            batches: Vec::new(),
            profile: None,
        }
    }

    pub fn time(&mut self, stage: Stage, ms: f64) {
        self.timings.push((stage, ms));
    }

    /// Record that `stage` ran from `start` (a [`now_ms_f64`] reading) until now.
    pub fn span(&mut self, stage: Stage, start: f64) {
        let base = self.completed_ms as f64;
        self.spans.push((stage, start - base, now_ms_f64() - base));
    }

    pub fn timing(&self, stage: Stage) -> Option<f64> {
        self.timings
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, ms)| *ms)
    }

    /// Sum of the timings recorded so far (the stages before the current one).
    pub fn elapsed_in_stages(&self) -> f64 {
        self.timings.iter().map(|(_, ms)| ms).sum()
    }

    /// (conversation, utterance): how the halves of an utterance find each other.
    pub fn key(&self) -> (String, String) {
        (self.conversation.clone(), self.utterance.clone())
    }
}

/// One stage's result for one utterance, with the utterance's metadata and admission ticket.
#[derive(Debug, Clone)]
pub struct Envelope<T> {
    pub meta: Meta,
    pub ticket: Ticket,
    pub body: T,
}

impl<T> Envelope<T> {
    /// The same utterance with the next stage's result.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Envelope<U> {
        Envelope {
            meta: self.meta,
            ticket: self.ticket,
            body: f(self.body),
        }
    }

    /// Replace the body, returning the old one.
    pub fn replace<U>(self, body: U) -> (Envelope<U>, T) {
        let Envelope {
            meta,
            ticket,
            body: old,
        } = self;
        (Envelope { meta, ticket, body }, old)
    }

    /// The utterance failed at `stage`: a dead letter with its original bytes. The ticket
    /// is dropped here, so the utterance leaves admission (unless another copy is at work).
    pub fn fail(self, stage: Stage, error: impl std::fmt::Display, bytes: Vec<u8>) -> Failed {
        Failed {
            meta: self.meta,
            bytes,
            stage,
            error: error.to_string(),
        }
    }
}

/// A complete utterance: the chunks' bytes concatenated in `seq` order.
pub type Utterance = Envelope<Vec<u8>>;

/// An utterance that cannot be processed; it becomes one dead-letter record.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    pub meta: Meta,
    pub bytes: Vec<u8>,
    /// Where it failed.
    pub stage: Stage,
    pub error: String,
}

/// Shared count of utterances admitted to the graph whose work is not done yet; sources
/// stop reading while it is at its limit (back-pressure that cannot deadlock, because
/// partially received utterances are never counted).
///
/// It also keeps the *reading clock*: wall-clock time that stands still while admission is
/// closed. Whatever times input that teddyflow has not read yet (the reassembly idle
/// timeout) runs on it, so a pause of teddyflow's own never cuts an utterance short.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pending: Arc<AtomicUsize>,
    limit: usize,
    gate: Arc<Mutex<Gate>>,
}

/// When admission closed, how long it has been closed before, and who is admitted.
#[derive(Debug, Default)]
struct Gate {
    closed_since: Option<Instant>,
    closed_before: Duration,
    /// (conversation, utterance) → copies admitted under that id (a repeat may overlap).
    admitted: std::collections::HashMap<(String, String), usize>,
}

impl Admission {
    pub fn new(limit: usize) -> Self {
        Self {
            pending: Arc::new(AtomicUsize::new(0)),
            limit,
            gate: Arc::default(),
        }
    }

    pub fn open(&self) -> bool {
        self.pending() < self.limit
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Admit one utterance; it stays admitted until every copy of its ticket is dropped.
    pub fn admit(&self, id: (String, String)) -> Ticket {
        let mut gate = self.gate.lock().expect("admission gate");
        let now_pending = self.pending.fetch_add(1, Ordering::AcqRel) + 1;
        if now_pending == self.limit {
            gate.closed_since = Some(Instant::now());
        }
        *gate.admitted.entry(id.clone()).or_default() += 1;
        drop(gate);
        Ticket(Arc::new(Admitted(self.clone(), id)))
    }

    /// The utterances admitted and not done yet (for a drain that runs out of time).
    pub fn in_flight(&self) -> Vec<(String, String)> {
        let gate = self.gate.lock().expect("admission gate");
        let mut ids: Vec<_> = gate.admitted.keys().cloned().collect();
        ids.sort();
        ids
    }

    fn leave(&self, id: &(String, String)) {
        let mut gate = self.gate.lock().expect("admission gate");
        if let Some(n) = gate.admitted.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                gate.admitted.remove(id);
            }
        }
        let was = self.pending.fetch_sub(1, Ordering::AcqRel);
        if was == self.limit {
            if let Some(since) = gate.closed_since.take() {
                gate.closed_before += since.elapsed();
            }
        }
    }

    /// `now` on the reading clock: minus all the time admission has been closed.
    pub fn reading_clock(&self, now: Instant) -> Instant {
        let gate = self.gate.lock().expect("admission gate");
        let closed_now = gate
            .closed_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        now.checked_sub(gate.closed_before + closed_now)
            .unwrap_or(now)
    }
}

/// An utterance's place in [`Admission`]. Clones share the place; dropping the last leaves.
#[derive(Debug, Clone)]
// Only ever dropped: its `Drop` is what releases the place.
pub struct Ticket(#[allow(dead_code)] Arc<Admitted>);

#[derive(Debug)]
struct Admitted(Admission, (String, String));

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.leave(&self.1);
    }
}

/// Wall-clock ms with sub-millisecond precision.
pub fn now_ms_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use teddyflow_connectors::wire::Codec;

    /// Metadata of a test utterance.
    pub(crate) fn meta(conversation: &str, utterance: &str) -> Meta {
        let headers = ChunkHeaders {
            utterance: utterance.into(),
            seq: 0,
            is_final: true,
            codec: Codec::Wav,
            rate: None,
            channels: 1,
            child: None,
            sent_ms: None,
        };
        Meta::new(conversation, &headers)
    }

    #[test]
    fn a_ticket_leaves_once_when_its_last_copy_drops() {
        let admission = Admission::new(2);
        let t = admission.admit(("c".into(), "u1".into()));
        let fork = t.clone();
        assert_eq!(admission.pending(), 1, "a fork is the same utterance");
        drop(t);
        assert_eq!(admission.pending(), 1, "one half still at work");
        let second = admission.admit(("c".into(), "u2".into()));
        assert_eq!(admission.in_flight().len(), 2);
        assert!(!admission.open());
        drop(fork);
        assert_eq!(admission.pending(), 1);
        drop(second);
        assert_eq!(admission.pending(), 0);
        assert!(admission.open());
    }

    /// Issue 11, defect 2: the reading clock stands still while admission is closed and
    /// runs with the wall clock while it is open.
    #[test]
    fn the_reading_clock_stops_while_admission_is_closed() {
        let admission = Admission::new(1);
        let t0 = Instant::now();
        let r0 = admission.reading_clock(t0);
        let held = admission.admit(("c".into(), "u".into())); // closes
        std::thread::sleep(Duration::from_millis(60));
        let now = Instant::now();
        let paused = admission.reading_clock(now);
        assert!(
            paused.duration_since(r0) < Duration::from_millis(20),
            "stood still"
        );
        drop(held); // opens
        std::thread::sleep(Duration::from_millis(30));
        let later = Instant::now();
        let ran = admission
            .reading_clock(later)
            .duration_since(admission.reading_clock(now));
        assert!(ran >= Duration::from_millis(25), "runs again: {ran:?}");
        let closed = later.duration_since(admission.reading_clock(later));
        assert!(
            closed >= Duration::from_millis(55),
            "the closed time is left out: {closed:?}"
        );
    }
}
