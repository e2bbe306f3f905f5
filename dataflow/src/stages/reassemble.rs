//! Chunks → utterances, on the worker that owns each conversation. The state machine is
//! [`crate::reassembly`]; this operator routes chunks, holds each partial utterance's
//! earliest capability, and admits every completed utterance (its [`Ticket`] starts here).
//!
//! [`Ticket`]: crate::envelope::Ticket

use std::time::Instant;

use teddyflow_connectors::wire::Chunk;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use super::{Ctx, Flow};
use crate::envelope::Envelope;
use crate::operators::stable_hash;
use crate::reassembly::{Outcome, Reassembler};

pub trait Reassemble<'s> {
    /// Route chunks to the worker owning their conversation and assemble utterances.
    fn reassemble(self, ctx: &Ctx) -> Flow<'s, Vec<u8>>;
}

impl<'s> Reassemble<'s> for Stream<'s, u64, Vec<Chunk>> {
    fn reassemble(self, ctx: &Ctx) -> Flow<'s, Vec<u8>> {
        let scope = self.scope();
        let ctx = ctx.clone();
        let route = Exchange::new(|c: &Chunk| stable_hash(&c.conversation));
        self.unary_frontier(route, "Reassemble", move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let limits = ctx.config.limits.clone();
            let mut state = Reassembler::<Capability<u64>>::new(limits, &ctx.config.topics.audio);
            move |(input, _frontier), output| {
                // Idle time runs only while reading does (see `Admission::reading_clock`).
                let now = ctx.admission.reading_clock(Instant::now());
                let mut outcomes = Vec::new();
                input.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    let time = *cap.time();
                    for chunk in data.drain(..) {
                        let done = state.push(chunk, cap.clone(), now, keep_earlier);
                        outcomes.extend(done.into_iter().map(|o| (o, Some(time))));
                    }
                });
                outcomes.extend(state.expire(now).into_iter().map(|o| (o, None)));
                for (outcome, completed_at) in outcomes {
                    match outcome {
                        Outcome::Ready(mut u, cap) => {
                            // Closed by the idle timeout, it completed at its own (held) time.
                            u.meta.ready_time = completed_at.unwrap_or(*cap.time());
                            let (meta, body) = (u.meta, u.bytes);
                            let ticket = ctx.admission.admit(meta.key());
                            output
                                .session(&cap)
                                .give(Ok(Envelope { meta, ticket, body }));
                        }
                        Outcome::Rejected(f, cap) => {
                            ctx.metrics().error("reassembly");
                            output.session(&cap).give(Err(f));
                        }
                    }
                }
                let c = state.counters();
                let mut m = ctx.metrics();
                m.counts.stray_chunks = c.stray_chunks;
                m.counts.late_chunks = c.late_chunks;
                m.counts.evicted_utterances = c.evicted;
                drop(m);
                // On the reading clock: while reading is paused this wakes up early, finds
                // nothing due and looks again.
                if let Some(deadline) = state.next_deadline() {
                    activator.activate_after(deadline.saturating_duration_since(now));
                }
            }
        })
    }
}

/// A partial utterance holds back progress from its earliest chunk.
fn keep_earlier(held: &mut Capability<u64>, new: Capability<u64>) {
    if new.time() < held.time() {
        *held = new;
    }
}
