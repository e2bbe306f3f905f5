//! The operators of the graph, each a small closure over timely's generic operators.
//! Each holds a capability only while it has work pending for that time.

mod join;
pub mod sink;
mod source;
mod stage;

pub use join::{join_halves, join_lookup};
pub use sink::{kafka_sink, Output, OutputKind};
pub use source::{epoch_now, kafka_source, next_epoch, SourceHandle, SourceSettings};
pub use stage::async_stage;

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::time::Instant;

use teddyflow_connectors::wire::Chunk;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::config::Limits;
use crate::metrics::WorkerMetrics;
use crate::pool::Admission;
use crate::reassembly::{Outcome, Reassembler};
use crate::types::{Failed, Utterance};

/// A hash every process computes the same way: routing by it makes one worker own a
/// conversation, and a replay picks the same curated reply.
pub fn stable_hash(text: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Route chunks to the worker owning their conversation and assemble utterances.
pub fn reassemble<'s>(
    chunks: Stream<'s, u64, Vec<Chunk>>,
    limits: Limits,
    topic: String,
    admission: Admission,
    metrics: Rc<RefCell<WorkerMetrics>>,
) -> Stream<'s, u64, Vec<Result<Utterance, Failed>>> {
    let scope = chunks.scope();
    let route = Exchange::new(|c: &Chunk| stable_hash(&c.conversation));
    chunks.unary_frontier(route, "Reassemble", move |_cap, info| {
        let activator = scope.activator_for(info.address);
        let mut state = Reassembler::<Capability<u64>>::new(limits, &topic);
        move |(input, _frontier), output| {
            let now = Instant::now();
            state.set_paused(!admission.open(), now); // idle time stops while reading is paused
            let mut outcomes = Vec::new();
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else {
                    return;
                };
                for chunk in data.drain(..) {
                    let keep_min = |held: &mut Capability<u64>, new: Capability<u64>| {
                        if new.time() < held.time() {
                            *held = new;
                        }
                    };
                    let time = *cap.time();
                    let done = state.push(chunk, cap.clone(), now, keep_min);
                    outcomes.extend(done.into_iter().map(|o| (o, Some(time))));
                }
            });
            outcomes.extend(state.expire(now).into_iter().map(|o| (o, None)));
            for (outcome, completed_at) in outcomes {
                match outcome {
                    Outcome::Ready(mut u, cap) => {
                        // Closed by the idle timeout, it completed at its own (held) time.
                        u.meta.ready_time = completed_at.unwrap_or(*cap.time());
                        admission.enter();
                        output.session(&cap).give(Ok(u));
                    }
                    Outcome::Rejected(f, cap) => {
                        metrics.borrow_mut().error("reassembly");
                        output.session(&cap).give(Err(f));
                    }
                }
            }
            if let Some(deadline) = state.next_deadline() {
                activator.activate_after(deadline.saturating_duration_since(now));
            }
        }
    })
}
