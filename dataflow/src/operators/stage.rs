//! An operator that hands each record to a [`StagePool`] and emits the result at the
//! record's time, holding that time's capability only while the job is out. Partial results
//! of streaming work are emitted as they come, at the same time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::pool::{Reply, StagePool};

pub fn async_stage<'s, I, O>(
    input: Stream<'s, u64, Vec<I>>,
    pool: Arc<StagePool<I, O>>,
    // Called with every result, partial ones included, before it is emitted.
    mut on_done: impl FnMut(&O) + 'static,
) -> Stream<'s, u64, Vec<O>>
where
    I: Send + 'static,
    O: Send + 'static,
{
    let scope = input.scope();
    let name = pool.name().to_string();
    input.unary_frontier(Pipeline, &name, move |_cap, info| {
        let activator = scope.activator_for(info.address.clone());
        let sync_activator = scope.worker().sync_activator_for(info.address.to_vec());
        let (reply, results) = crossbeam_channel::unbounded::<Reply<O>>();
        let mut waiting: VecDeque<(Capability<u64>, I)> = VecDeque::new();
        let mut out: HashMap<u64, Capability<u64>> = HashMap::new();
        let mut next_id = 0u64;
        move |(input, _frontier), output| {
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else {
                    return;
                };
                waiting.extend(data.drain(..).map(|item| (cap.clone(), item)));
            });
            while pool.has_room() {
                let Some((cap, item)) = waiting.pop_front() else {
                    break;
                };
                next_id += 1;
                out.insert(next_id, cap);
                pool.submit(next_id, item, reply.clone(), sync_activator.clone());
            }
            for Reply {
                id,
                output: result,
                last,
            } in results.try_iter()
            {
                let cap = if last {
                    out.remove(&id)
                } else {
                    out.get(&id).cloned()
                };
                if let Some(cap) = cap {
                    on_done(&result);
                    output.session(&cap).give(result);
                }
            }
            // The pool is shared: room may free up without a reply to this operator.
            if !waiting.is_empty() {
                activator.activate_after(Duration::from_millis(5));
            }
        }
    })
}
