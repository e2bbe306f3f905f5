//! Join two streams of per-utterance halves by key. Both halves of an utterance carry the
//! same timestamp (they fork from one decoded utterance). A half whose partner can no
//! longer arrive — the other input's frontier has passed its time, e.g. speech-to-text
//! failed and went to the dead-letter topic — is dropped, so no capability is held forever.

use std::collections::HashMap;
use std::hash::Hash;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

pub fn join_halves<'s, K, A, B>(
    left: Stream<'s, u64, Vec<A>>,
    right: Stream<'s, u64, Vec<B>>,
    key_a: impl Fn(&A) -> K + 'static,
    key_b: impl Fn(&B) -> K + 'static,
) -> Stream<'s, u64, Vec<(A, B)>>
where
    K: Hash + Eq + 'static,
    A: Clone + 'static,
    B: Clone + 'static,
{
    left.binary_frontier(
        right,
        Pipeline,
        Pipeline,
        "JoinHalves",
        move |_cap, _info| {
            let mut lefts: HashMap<K, (Capability<u64>, A)> = HashMap::new();
            let mut rights: HashMap<K, (Capability<u64>, B)> = HashMap::new();
            move |(in1, frontier1), (in2, frontier2), output| {
                in1.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    for a in data.drain(..) {
                        let k = key_a(&a);
                        match rights.remove(&k) {
                            Some((_, b)) => output.session(&cap).give((a, b)),
                            None => {
                                lefts.insert(k, (cap.clone(), a));
                            }
                        }
                    }
                });
                in2.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    for b in data.drain(..) {
                        let k = key_b(&b);
                        match lefts.remove(&k) {
                            Some((_, a)) => output.session(&cap).give((a, b)),
                            None => {
                                rights.insert(k, (cap.clone(), b));
                            }
                        }
                    }
                });
                // A half waits only while its partner's input could still deliver at its time.
                lefts.retain(|_, (cap, _)| frontier2.less_equal(cap.time()));
                rights.retain(|_, (cap, _)| frontier1.less_equal(cap.time()));
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, Input, Probe};

    /// Oracle: pairs present on both sides, by key; orphans dropped without stalling.
    #[test]
    fn joins_pairs_and_drops_orphans_once_the_frontier_passes() {
        let (out, probe_done) = timely::execute_directly(|worker| {
            let (mut left, mut right, probe, captured) = worker.dataflow::<u64, _, _>(|scope| {
                let (lh, l) = scope.new_input::<Vec<(u32, &'static str)>>();
                let (rh, r) = scope.new_input::<Vec<(u32, char)>>();
                let joined = join_halves(l, r, |a| a.0, |b| b.0);
                let (probe, joined) = joined.probe();
                (lh, rh, probe, joined.capture())
            });
            left.send((1, "one"));
            right.send((2, 'b'));
            left.send((3, "three"));
            right.send((1, 'a'));
            left.advance_to(1);
            right.advance_to(1);
            while probe.less_than(&1) {
                worker.step();
            }
            // The partner of (3, "three") arrives too late: its time-0 half is gone.
            right.send((3, 'c'));
            left.advance_to(2);
            right.advance_to(2);
            while probe.less_than(&2) {
                worker.step();
            }
            let done = !probe.less_than(&2);
            drop(left);
            drop(right);
            while worker.step() {}
            (captured, done)
        });
        assert!(probe_done, "orphans must not hold the frontier");
        let mut pairs: Vec<_> = out.extract().into_iter().flat_map(|(_, v)| v).collect();
        pairs.sort();
        // Keys 2 and 3 never find a partner at their time; only key 1 pairs.
        assert_eq!(pairs, vec![((1, "one"), (1, 'a'))]);
    }
}
