//! The Kafka sink: writes records and holds each record's time until the broker has
//! acknowledged it, so the probe after this operator says what is durable. It knows nothing
//! of what it writes: each record comes with a receipt `R` that is handed back to its
//! [`Receipts`] with the broker's answer.
//!
//! - A failure a retry can cure (queue full, broker away) is retried, at least once
//!   delivery, more slowly while the broker is away (the writer logs the outage once when
//!   it starts and once when it ends).
//! - A record the broker will never take (too large, invalid) is set aside at once and
//!   reported to [`Receipts::refused`]: it must never hold back the records behind it or
//!   its time's progress. The answer may be a replacement record (a small dead letter
//!   saying what was refused), sent in its place.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use teddyflow_connectors::kafka::{AckedWriter, ProduceError};
use teddyflow_connectors::wire::OutRecord;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// Who hears what the broker said about each record.
pub trait Receipts<R> {
    /// Durable, `after_ms` after it was produced.
    fn acked(&mut self, receipt: R, after_ms: f64);
    /// The broker will never take `record`; it was set aside. A replacement, if any, is
    /// sent in its place.
    fn refused(
        &mut self,
        receipt: R,
        record: OutRecord,
        error: &ProduceError,
    ) -> Option<(OutRecord, R)>;
}

/// Records queued or awaiting acknowledgement, for the `in_flight` gauge.
pub type Pending = Rc<Cell<usize>>;

type Queued<R> = (Capability<u64>, OutRecord, R);

pub fn kafka_sink<'s, R: 'static>(
    stream: Stream<'s, u64, Vec<(OutRecord, R)>>,
    writer: Rc<AckedWriter>,
    pending: Pending,
    mut receipts: impl Receipts<R> + 'static,
) -> Stream<'s, u64, Vec<()>> {
    let scope = stream.scope();
    stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "KafkaSink",
        move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut queue: VecDeque<Queued<R>> = VecDeque::new();
            let mut sent: HashMap<u64, (Queued<R>, Instant)> = HashMap::new();
            let mut next_id = 0u64;
            let mut outage = Outage::default();
            move |(input, _frontier), _output| {
                input.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    queue.extend(data.drain(..).map(|(rec, r)| (cap.clone(), rec, r)));
                });
                while let Some((cap, rec, r)) = queue.pop_front() {
                    next_id += 1;
                    match writer.send(next_id, &rec) {
                        Ok(()) => {
                            sent.insert(next_id, ((cap, rec, r), Instant::now()));
                        }
                        Err(e) if e.is_retriable() => {
                            // Queue full or the broker away: keep it and try again shortly.
                            outage.retrying(&e);
                            queue.push_front((cap, rec, r));
                            break;
                        }
                        Err(e) => set_aside((cap, rec, r), &e, &mut receipts, &mut queue),
                    }
                }
                for delivery in writer.poll() {
                    let Some((queued, at)) = sent.remove(&delivery.id) else {
                        continue;
                    };
                    match delivery.result {
                        Ok(()) => {
                            outage.delivered();
                            receipts.acked(queued.2, at.elapsed().as_secs_f64() * 1e3);
                        }
                        Err(e) if e.is_retriable() => {
                            outage.retrying(&e);
                            queue.push_back(queued);
                        }
                        Err(e) => set_aside(queued, &e, &mut receipts, &mut queue),
                    }
                }
                pending.set(queue.len() + sent.len());
                if !queue.is_empty() || !sent.is_empty() {
                    let wait = if outage.since.is_some() { 50 } else { 2 };
                    activator.activate_after(Duration::from_millis(wait));
                }
            }
        },
    )
}

/// A record the broker will never take: its time is released (the capability drops here
/// unless a replacement takes it over), so it holds back nothing.
fn set_aside<R>(
    (cap, rec, r): Queued<R>,
    e: &ProduceError,
    receipts: &mut impl Receipts<R>,
    queue: &mut VecDeque<Queued<R>>,
) {
    tracing::warn!(error = %e, topic = %rec.topic, bytes = rec.payload.len(), "the broker refused a record for good; set aside");
    if let Some((rec, r)) = receipts.refused(r, rec, e) {
        queue.push_front((cap, rec, r));
    }
}

/// Whether the broker has stopped taking records (retries then come less often). The
/// writer logs the outage itself, once as it starts and once as it ends.
#[derive(Default)]
struct Outage {
    since: Option<Instant>,
    retries: u64,
}

impl Outage {
    fn retrying(&mut self, e: &ProduceError) {
        self.retries += 1;
        if self.since.is_none() && !e.is_queue_full() {
            tracing::debug!(error = %e, "records are retried until the broker takes them");
            self.since = Some(Instant::now());
        }
    }

    fn delivered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::debug!(
                after_s = since.elapsed().as_secs(),
                retries = self.retries,
                "records are delivered again"
            );
        }
        self.retries = 0;
    }
}
