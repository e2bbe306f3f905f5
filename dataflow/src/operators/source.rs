//! One source operator for every Kafka input: it polls without blocking, stamps what it
//! reads with wall-clock epochs (so an idle worker never holds back another's progress),
//! and leaves the rest — what a record becomes, when to read, when to let go — to a
//! [`Polled`] input.

use std::time::Duration;

use teddyflow_connectors::wire::RawRecord;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, Stream};

/// Low bits of a timestamp count utterance ends within one wall-clock epoch.
const SUB_BITS: u32 = 20;

/// The timestamp of "now": wall-clock epoch in the high bits. Every worker's source keeps
/// up with it, so an idle worker never holds back another worker's commits.
pub fn epoch_now(epoch_ms: u64) -> u64 {
    (crate::envelope::now_ms().max(0) as u64 / epoch_ms) << SUB_BITS
}

/// The first timestamp of the next wall-clock epoch.
pub fn next_epoch(epoch_ms: u64) -> u64 {
    epoch_now(epoch_ms) + (1 << SUB_BITS)
}

/// Where a source's capability stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Keep the time it has (state still loading: nothing downstream may run ahead).
    Still,
    /// Follow the wall clock.
    Epoch,
    /// Follow the wall clock, at the last time of the current epoch. For an input whose
    /// records may take effect an epoch late (profile updates): what others read in this
    /// epoch need not wait for its frontier. Holding an epoch's first time instead, a join
    /// with it waits for the next epoch (`engine.epoch_ms`, ~50 ms mean at 100 ms): the
    /// lookup of every utterance's profile did, before speech-to-text.
    EpochEnd,
    /// Done for good: drop the capability.
    Release,
}

/// What one Kafka input does with the records its source reads.
pub trait Polled<D> {
    /// Whether this worker reads anything at all (it may own no partition).
    fn has_partitions(&self) -> bool;
    /// Where the capability should be, checked first at every activation.
    fn hold(&mut self) -> Hold;
    /// Whether to read now (back-pressure, a stop in progress).
    fn read_now(&mut self) -> bool {
        true
    }
    /// Up to `max` records, without waiting.
    fn poll(&mut self, max: usize) -> Vec<RawRecord>;
    /// Turn one record read at `time` into output; `true` moves later records to `time + 1`
    /// (an utterance ended, so its offsets become committable on their own).
    fn record(&mut self, rec: RawRecord, time: u64, give: &mut dyn FnMut(D)) -> bool;
    /// After each activation's reading, with the time its capability holds now.
    fn after(&mut self, _time: u64) {}
}

#[derive(Debug, Clone, Copy)]
pub struct SourceSettings {
    pub epoch_ms: u64,
    pub poll_batch: usize,
}

/// A source over `input`, reactivated at once while it reads full batches, else every 10 ms.
pub fn kafka_source<'s, D: 'static>(
    scope: Scope<'s, u64>,
    name: &str,
    settings: SourceSettings,
    mut input: impl Polled<D> + 'static,
) -> Stream<'s, u64, Vec<D>> {
    let activator_scope = scope;
    source(scope, name, move |cap, info| {
        let activator = activator_scope.activator_for(info.address);
        // A worker without partitions must release its capability, or it would hold
        // back every frontier.
        let mut cap = input.has_partitions().then_some(cap);
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            match input.hold() {
                Hold::Release => {
                    cap = None;
                    return;
                }
                Hold::Still => {}
                Hold::Epoch => {
                    let now = epoch_now(settings.epoch_ms).max(*c.time());
                    c.downgrade(&now);
                }
                Hold::EpochEnd => {
                    let end = next_epoch(settings.epoch_ms) - 1;
                    c.downgrade(&end.max(*c.time()));
                }
            }
            let mut read = 0;
            if input.read_now() {
                let records = input.poll(settings.poll_batch);
                read = records.len();
                for rec in records {
                    let time = *c.time();
                    let mut session = output.session(&*c);
                    let advance = input.record(rec, time, &mut |d| session.give(d));
                    drop(session);
                    if advance {
                        c.downgrade(&(time + 1));
                    }
                }
            }
            input.after(*c.time());
            if read == settings.poll_batch {
                activator.activate();
            } else {
                activator.activate_after(Duration::from_millis(10));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, Probe};

    /// An input of numbered records: record `n` ends an utterance when `n % 3 == 2`; it
    /// holds still until `loaded` and releases when `stop`.
    struct Numbers {
        left: Rc<RefCell<Vec<i64>>>,
        loaded: Rc<RefCell<bool>>,
        stop: Rc<RefCell<bool>>,
    }

    impl Polled<(i64, u64)> for Numbers {
        fn has_partitions(&self) -> bool {
            true
        }
        fn hold(&mut self) -> Hold {
            match (*self.stop.borrow(), *self.loaded.borrow()) {
                (true, _) => Hold::Release,
                (false, true) => Hold::Epoch,
                (false, false) => Hold::Still,
            }
        }
        fn poll(&mut self, max: usize) -> Vec<RawRecord> {
            let mut left = self.left.borrow_mut();
            let n = max.min(left.len());
            left.drain(..n)
                .map(|offset| RawRecord {
                    topic: "t".into(),
                    partition: 0,
                    offset,
                    key: None,
                    value: None,
                    headers: Vec::new(),
                })
                .collect()
        }
        fn record(&mut self, rec: RawRecord, time: u64, give: &mut dyn FnMut((i64, u64))) -> bool {
            give((rec.offset, time));
            rec.offset % 3 == 2
        }
    }

    /// Oracle: every record comes out once, at a time that moves on after each utterance end
    /// and never goes back; a source that is still loading does not follow the clock; a
    /// released source lets the dataflow complete.
    #[test]
    fn records_are_stamped_in_order_and_the_source_lets_go() {
        let got = timely::execute_directly(|worker| {
            let loaded = Rc::new(RefCell::new(false));
            let stop = Rc::new(RefCell::new(false));
            let left = Rc::new(RefCell::new((0..4).collect()));
            let input = Numbers {
                left: left.clone(),
                loaded: loaded.clone(),
                stop: stop.clone(),
            };
            let settings = SourceSettings {
                epoch_ms: 100,
                poll_batch: 4,
            };
            let (probe, captured) = worker.dataflow::<u64, _, _>(|scope| {
                let s = kafka_source(scope, "Numbers", settings, input);
                let (probe, s) = s.probe();
                (probe, s.capture())
            });
            for _ in 0..5 {
                worker.step();
            }
            assert!(
                probe.less_equal(&1),
                "loading: only utterance ends move time"
            );
            *loaded.borrow_mut() = true;
            left.borrow_mut().extend(4..7);
            // A source that read less than a batch looks again 10 ms later.
            for _ in 0..20 {
                worker.step_or_park(Some(Duration::from_millis(5)));
            }
            *stop.borrow_mut() = true;
            while !probe.done() {
                worker.step();
            }
            captured
        });
        let out: Vec<(i64, u64)> = got.extract().into_iter().flat_map(|(_, v)| v).collect();
        let offsets: Vec<i64> = out.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (0..7).collect::<Vec<_>>());
        // Loading: the first batch (0..4) is at time 0, 1 after the end at offset 2.
        assert_eq!(out[0].1, 0);
        assert_eq!(out[2].1, 0);
        assert_eq!(out[3].1, 1);
        assert!(out.windows(2).all(|w| w[0].1 <= w[1].1), "{out:?}");
        assert!(
            out[4].1 >= epoch_now(100) - (1 << SUB_BITS),
            "follows the clock"
        );
    }

    /// An input that reads nothing and follows the clock as told.
    struct Idle(Rc<RefCell<Hold>>);

    impl Polled<()> for Idle {
        fn has_partitions(&self) -> bool {
            true
        }
        fn hold(&mut self) -> Hold {
            *self.0.borrow()
        }
        fn poll(&mut self, _max: usize) -> Vec<RawRecord> {
            Vec::new()
        }
        fn record(&mut self, _: RawRecord, _: u64, _: &mut dyn FnMut(())) -> bool {
            false
        }
    }

    /// Where an idle source's frontier stands within the current epoch: at its start
    /// (`Epoch`: a join with it waits for the epoch to end) or at its end (`EpochEnd`: times
    /// others stamp within the epoch are passed at once).
    fn idle_frontier(hold: Hold, epoch_ms: u64) -> u64 {
        timely::execute_directly(move |worker| {
            let settings = SourceSettings {
                epoch_ms,
                poll_batch: 4,
            };
            let hold = Rc::new(RefCell::new(hold));
            let input = Idle(hold.clone());
            let probe = worker.dataflow::<u64, _, _>(|scope| {
                kafka_source(scope, "Idle", settings, input).probe().0
            });
            for _ in 0..3 {
                worker.step();
            }
            let frontier = probe.with_frontier(|f| f.first().copied().unwrap_or(u64::MAX));
            *hold.borrow_mut() = Hold::Release;
            while !probe.done() {
                worker.step();
            }
            frontier
        })
    }

    #[test]
    fn an_epoch_end_source_does_not_hold_back_this_epochs_times() {
        // An hour-long epoch: the test does not straddle two.
        let hour = 3_600_000;
        let start = epoch_now(hour);
        let utterance_end = start + 5;
        assert!(idle_frontier(Hold::Epoch, hour) <= utterance_end);
        assert_eq!(idle_frontier(Hold::EpochEnd, hour), next_epoch(hour) - 1);
        assert!(idle_frontier(Hold::EpochEnd, hour) > utterance_end);
    }
}
