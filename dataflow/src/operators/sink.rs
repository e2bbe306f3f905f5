//! The Kafka sink: writes records and holds each record's time until the broker has
//! acknowledged it, so the probe after this operator says what is durable. It knows nothing
//! of what it writes: each record comes with a receipt `R` that is handed back to `on_ack`
//! with the broker's answer. Failed deliveries are retried: output is at least once,
//! and ids make repeats recognisable.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use teddyflow_connectors::kafka::AckedWriter;
use teddyflow_connectors::wire::OutRecord;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// What the broker said about one record.
#[derive(Debug, PartialEq)]
pub enum Delivered<'a, R> {
    /// Durable, `after_ms` after it was produced.
    Acked(R, f64),
    /// Refused for now; it goes back in the queue.
    Retrying(&'a R),
}

/// Records queued or awaiting acknowledgement, for the `in_flight` gauge.
pub type Pending = Rc<Cell<usize>>;

pub fn kafka_sink<'s, R: 'static>(
    stream: Stream<'s, u64, Vec<(OutRecord, R)>>,
    writer: Rc<AckedWriter>,
    pending: Pending,
    mut on_ack: impl FnMut(Delivered<'_, R>) + 'static,
) -> Stream<'s, u64, Vec<()>> {
    let scope = stream.scope();
    stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "KafkaSink", move |_cap, info| {
        let activator = scope.activator_for(info.address);
        let mut queue: VecDeque<(Capability<u64>, OutRecord, R)> = VecDeque::new();
        let mut sent: HashMap<u64, (Capability<u64>, OutRecord, R, Instant)> = HashMap::new();
        let mut next_id = 0u64;
        move |(input, _frontier), _output| {
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else { return };
                queue.extend(data.drain(..).map(|(rec, r)| (cap.clone(), rec, r)));
            });
            while let Some((cap, rec, r)) = queue.pop_front() {
                next_id += 1;
                match writer.send(next_id, &rec) {
                    Ok(()) => {
                        sent.insert(next_id, (cap, rec, r, Instant::now()));
                    }
                    Err(e) => {
                        // Queue full or a transient error: keep it and try again shortly.
                        tracing::debug!(error = %e, "produce deferred");
                        queue.push_front((cap, rec, r));
                        break;
                    }
                }
            }
            for delivery in writer.poll() {
                let Some((cap, rec, r, at)) = sent.remove(&delivery.id) else { continue };
                match delivery.result {
                    Ok(()) => on_ack(Delivered::Acked(r, at.elapsed().as_secs_f64() * 1e3)),
                    Err(e) => {
                        tracing::warn!(error = %e, topic = %rec.topic, "delivery failed; retrying");
                        on_ack(Delivered::Retrying(&r));
                        queue.push_back((cap, rec, r));
                    }
                }
            }
            pending.set(queue.len() + sent.len());
            if !queue.is_empty() || !sent.is_empty() {
                activator.activate_after(Duration::from_millis(2));
            }
        }
    })
}
