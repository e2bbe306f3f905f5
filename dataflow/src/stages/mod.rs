//! The pipeline's stages, one module each. A stage owns its thread pool (built once per
//! process), its timings and metrics, and one extension method on a stream, so a worker's
//! graph reads as a chain:
//!
//! ```text
//! chunks.reassemble(..).decode(..).hear(..).understand(..).answer(..).write(..)
//! ```
//!
//! Between stages flows a [`Flow`]: the utterances that got this far, in [`Envelope`]s, and
//! those that failed on the way. A stage works on the first and lets the second pass
//! ([`Flow::then`]); the end of the chain turns failures into dead letters.
//! `docs/architecture.md` shows how to add a stage.

pub mod answer;
pub mod decode;
pub mod hear;
pub mod profiles;
pub mod read;
pub mod reassemble;
pub mod respond;
pub mod understand;
pub mod write;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use timely::dataflow::operators::core::{Concat, Map, OkErr};
use timely::dataflow::Stream;

use crate::config::Config;
use crate::envelope::{Admission, Envelope, Failed};
use crate::metrics::WorkerMetrics;
use crate::outputs::Output;
use teddyflow_connectors::http::{Health, Telemetry};

/// One stage's results: an utterance that got this far, or one that failed on the way.
pub type Flow<'s, T> = Stream<'s, u64, Vec<Result<Envelope<T>, Failed>>>;

/// Run a stage on the utterances of a flow that got this far; failures pass around it.
pub trait Then<'s, T> {
    fn then<U: 'static>(self, stage: impl FnOnce(Envelopes<'s, T>) -> Flow<'s, U>) -> Flow<'s, U>;
}

impl<'s, T: 'static> Then<'s, T> for Flow<'s, T> {
    fn then<U: 'static>(self, stage: impl FnOnce(Envelopes<'s, T>) -> Flow<'s, U>) -> Flow<'s, U> {
        let (ok, failed) = split(self);
        stage(ok).concat(failed.map(Err))
    }
}

/// Utterances that got this far.
pub type Envelopes<'s, T> = Stream<'s, u64, Vec<Envelope<T>>>;

/// The utterances that got this far, and those that failed on the way.
pub fn split<'s, T: 'static>(
    flow: Flow<'s, T>,
) -> (Envelopes<'s, T>, Stream<'s, u64, Vec<Failed>>) {
    flow.ok_err(|r| r)
}

/// What every stage of one worker shares: who the worker is, its metrics, the config, and
/// the process's shared parts.
#[derive(Clone)]
pub struct Ctx {
    pub worker: usize,
    pub peers: usize,
    pub process: usize,
    pub metrics: Rc<RefCell<WorkerMetrics>>,
    pub config: Rc<Config>,
    pub admission: Admission,
    pub stop: Arc<AtomicBool>,
    /// The process's Prometheus families and health (`engine.http_addr`), if served.
    pub telemetry: Option<Arc<Telemetry>>,
}

impl Ctx {
    /// Metrics of this worker, for one update.
    pub fn metrics(&self) -> std::cell::RefMut<'_, WorkerMetrics> {
        self.metrics.borrow_mut()
    }

    /// Tell `/healthz` and `/readyz` how this worker is doing.
    pub fn health(&self, note: impl FnOnce(&Health, usize)) {
        if let Some(t) = &self.telemetry {
            note(t.health(), self.worker);
        }
    }
}

/// A failed utterance, as the dead letter it becomes.
pub fn dead_letter(f: Failed) -> Output {
    let completed_ms = f.meta.completed_ms;
    Output::new(
        crate::outputs::Out::DeadLetter(crate::outputs::utterance_dead_letter(f)),
        completed_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::tests::meta;
    use crate::operators::join_halves;
    use crate::stage::Stage;
    use timely::dataflow::operators::{Input, Inspect, Probe};

    /// An utterance leaves admission exactly once, when the last copy of its work is gone:
    /// forked into two halves that meet in a join, failed on one side (the other half is
    /// then an orphan the join drops), or failed before the fork.
    #[test]
    fn admission_is_left_exactly_once_under_forks_joins_failures_and_drops() {
        let admission = Admission::new(100);
        let pending = admission.clone();
        let seen = timely::execute_directly(move |worker| {
            let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
                let (h, s) = scope.new_input::<Vec<Result<Envelope<u32>, Failed>>>();
                // Every third utterance fails before the fork.
                let flow: Flow<'_, u32> = s.map(|r| {
                    r.and_then(|e| match e.body % 3 {
                        0 => Err(e.fail(Stage::Decode, "bad audio", Vec::new())),
                        _ => Ok(e),
                    })
                });
                let joined = flow.then(|ok| {
                    // One half fails for every fourth utterance: its partner is orphaned.
                    let left = ok.clone().flat_map(|e| (e.body % 4 != 0).then_some(e));
                    let key = |e: &Envelope<u32>| e.meta.key();
                    join_halves(left, ok, key, key).map(|(a, _b)| Ok(a))
                });
                let (probe, out) = joined.inspect(|_| {}).probe();
                let _ = out;
                (h, probe)
            });
            for i in 0..24u32 {
                let ticket = admission.admit(("c".into(), format!("u{i}")));
                let env = Envelope {
                    meta: meta("c", &format!("u{i}")),
                    ticket,
                    body: i,
                };
                input.send(Ok(env));
            }
            assert_eq!(admission.pending(), 24);
            input.advance_to(1);
            while probe.less_than(&1) {
                worker.step();
            }
            admission.pending()
        });
        assert_eq!(seen, 0, "every utterance left once");
        assert_eq!(pending.pending(), 0);
    }
}
