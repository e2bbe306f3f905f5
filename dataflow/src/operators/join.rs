//! Join two streams of per-utterance records by key, one operator behind two uses.
//! `join_halves`: both halves of an utterance carry the same timestamp (they fork from one
//! decoded utterance). A half whose partner can no longer arrive — the other input's
//! frontier has passed its time, e.g. speech-to-text failed and went to the dead-letter
//! topic — is dropped, so no capability is held forever. `join_lookup`: a left outer join.

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
    // A left half waits while the right input could still deliver at its own time.
    let keys = (key_a, key_b);
    keyed_join(
        left,
        right,
        "JoinHalves",
        keys,
        |a, b| (a, b),
        |_, t| t,
        |_| None,
    )
}

/// Left outer join of each record with its lookup. A left record waits for its lookup until
/// the right input can no longer produce one at or before `ready(a)`, then goes on with
/// `None`; a lookup waits only while the left input could still deliver at its time. Output
/// carries the earlier of the two times, so nothing is released before its input is.
pub fn join_lookup<'s, K, A, B>(
    left: Stream<'s, u64, Vec<A>>,
    right: Stream<'s, u64, Vec<B>>,
    key_a: impl Fn(&A) -> K + 'static,
    key_b: impl Fn(&B) -> K + 'static,
    ready: impl Fn(&A) -> u64 + 'static,
) -> Stream<'s, u64, Vec<(A, Option<B>)>>
where
    K: Hash + Eq + 'static,
    A: Clone + 'static,
    B: Clone + 'static,
{
    let keys = (key_a, key_b);
    let lone = |a| Some((a, None));
    keyed_join(
        left,
        right,
        "JoinLookup",
        keys,
        |a, b| (a, Some(b)),
        move |a, _| ready(a),
        lone,
    )
}

/// The one operator behind both joins: records meet by key and leave as `pair(a, b)` at the
/// earlier of their times. A left record waits until the right frontier passes
/// `wait_until(a, its time)`, then leaves as `lone(a)` (or not at all); a right record waits
/// only while the left input could still deliver at its time.
fn keyed_join<'s, K, A, B, O, FA, FB>(
    left: Stream<'s, u64, Vec<A>>,
    right: Stream<'s, u64, Vec<B>>,
    name: &str,
    (key_a, key_b): (FA, FB),
    pair: impl Fn(A, B) -> O + 'static,
    wait_until: impl Fn(&A, u64) -> u64 + 'static,
    lone: impl Fn(A) -> Option<O> + 'static,
) -> Stream<'s, u64, Vec<O>>
where
    K: Hash + Eq + 'static,
    A: Clone + 'static,
    B: Clone + 'static,
    O: 'static,
    FA: Fn(&A) -> K + 'static,
    FB: Fn(&B) -> K + 'static,
{
    left.binary_frontier(right, Pipeline, Pipeline, name, move |_cap, _info| {
        let mut lefts: Waiting<K, A> = HashMap::new();
        let mut rights: Waiting<K, B> = HashMap::new();
        move |(in1, frontier1), (in2, frontier2), output| {
            in1.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else {
                    return;
                };
                let emit = |at: &Capability<u64>, a, b| output.session(at).give(pair(a, b));
                pair_or_wait(&cap, data.drain(..), &key_a, &mut rights, &mut lefts, emit);
            });
            in2.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else {
                    return;
                };
                let emit = |at: &Capability<u64>, b, a| output.session(at).give(pair(a, b));
                pair_or_wait(&cap, data.drain(..), &key_b, &mut lefts, &mut rights, emit);
            });
            let gone =
                lefts.extract_if(|_, (cap, a)| !frontier2.less_equal(&wait_until(a, *cap.time())));
            for (_, (cap, a)) in gone {
                if let Some(o) = lone(a) {
                    output.session(&cap).give(o);
                }
            }
            rights.retain(|_, (cap, _)| frontier1.less_equal(cap.time()));
        }
    })
}

/// Records waiting for their partner, by key, with the capability of their time.
type Waiting<K, X> = HashMap<K, (Capability<u64>, X)>;

/// Pair each arriving record with its waiting partner (emitted at the earlier of the two
/// capabilities), or make it wait.
fn pair_or_wait<K: Hash + Eq, X, Y>(
    cap: &Capability<u64>,
    arriving: impl Iterator<Item = X>,
    key: &impl Fn(&X) -> K,
    partners: &mut Waiting<K, Y>,
    waiting: &mut Waiting<K, X>,
    mut emit: impl FnMut(&Capability<u64>, X, Y),
) {
    for x in arriving {
        let k = key(&x);
        match partners.remove(&k) {
            Some((other, y)) => emit(earlier(cap, &other), x, y),
            None => {
                waiting.insert(k, (cap.clone(), x));
            }
        }
    }
}

fn earlier<'a>(a: &'a Capability<u64>, b: &'a Capability<u64>) -> &'a Capability<u64> {
    if b.time() < a.time() {
        b
    } else {
        a
    }
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

    /// Oracle: every left record comes out exactly once, with its lookup when one arrived by
    /// its ready time, at the earlier of the two times; late lookups are dropped.
    #[test]
    fn lookups_attach_by_their_ready_time_and_lefts_never_vanish() {
        let out = timely::execute_directly(|worker| {
            let (mut left, mut right, probe, captured) = worker.dataflow::<u64, _, _>(|scope| {
                let (lh, l) = scope.new_input::<Vec<(u32, u64)>>();
                let (rh, r) = scope.new_input::<Vec<(u32, char)>>();
                // A left record is (key, ready time).
                let joined = join_lookup(l, r, |a| a.0, |b| b.0, |a| a.1);
                let (probe, joined) = joined.probe();
                (lh, rh, probe, joined.capture())
            });
            left.send((1, 3)); // its lookup comes later, at time 3: still attached
            left.send((2, 0)); // no lookup ever: goes on with None
            right.advance_to(3);
            right.send((1, 'a'));
            right.send((9, 'z')); // no left partner: dropped
            left.advance_to(4);
            right.advance_to(4);
            while probe.less_than(&4) {
                worker.step();
            }
            drop(left);
            drop(right);
            while worker.step() {}
            captured
        });
        let mut got: Vec<_> = out
            .extract()
            .into_iter()
            .flat_map(|(t, v)| v.into_iter().map(move |x| (t, x)))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![(0, ((1, 3), Some((1, 'a')))), (0, ((2, 0), None))]
        );
    }
}
