//! Model stages run on a pool of threads beside the timely workers, so a 300 ms Whisper
//! call never stalls progress tracking, reading or acknowledging. One pool per stage per
//! process; every worker of the process shares it (and so shares one copy of the weights).
//!
//! A job computes only while it holds cores of the process's budget ([`Cores`], the rule
//! in `threads.rs`), inside a rayon pool as wide as the cores it holds: its thread's own
//! one-thread pool, or one of the stage's wide pools when it got its stage's full width.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rayon::ThreadPool;
use timely::scheduling::SyncActivator;

use crate::threads::{Cores, Lane, Priority};

type Work<I, O> = Arc<dyn Fn(I) -> O + Send + Sync>;
/// Work that hands out partial results (`emit`) before its final one (the return value).
pub type StreamingWork<I, O> = Arc<dyn Fn(I, &mut dyn FnMut(O)) -> O + Send + Sync>;
/// Work over a batch of jobs: one output per input, in the same order.
pub type BatchWork<I, O> = Arc<dyn Fn(Vec<I>) -> Vec<O> + Send + Sync>;

/// Dynamic batching: a stage thread that takes a job also takes the jobs already queued
/// behind it (up to `max_batch`), waiting at most `max_wait` for more to arrive.
/// With `max_wait` zero a lone job never waits, so light load keeps its latency and a
/// backlog is worked off in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max_batch: usize,
    pub max_wait: Duration,
}

impl Batching {
    /// One job per call.
    pub const NONE: Self = Self {
        max_batch: 1,
        max_wait: Duration::ZERO,
    };

    pub fn new(max_batch: usize, max_wait_ms: u64) -> Self {
        Self {
            max_batch: max_batch.max(1),
            max_wait: Duration::from_millis(max_wait_ms),
        }
    }
}

/// How a pool's jobs get cores.
#[derive(Clone)]
pub struct Compute {
    pub lane: Lane,
    pub priority: Priority,
    pub cores: Cores,
    /// Cores every job waits for before it starts (candle's pool size when it is on).
    pub min_cores: usize,
}

impl Compute {
    pub fn new(lane: Lane, priority: Priority, cores: &Cores, min_cores: usize) -> Compute {
        Compute {
            lane,
            priority,
            cores: cores.clone(),
            min_cores: min_cores.clamp(1, cores.total()),
        }
    }

    /// `threads` one-core threads with a core each: nothing waits for another stage.
    pub fn alone(threads: usize) -> Compute {
        let lane = Lane {
            threads: threads.max(1),
            width: 1,
        };
        Compute::new(lane, Priority::Asr, &Cores::new(lane.threads), 1)
    }
}

/// Where jobs run: the cores they hold, and rayon pools as wide as those.
pub struct OnCores {
    compute: Compute,
    /// Pools of `lane.width` threads, each used by one job at a time.
    wide: Vec<Mutex<ThreadPool>>,
}

impl OnCores {
    pub fn new(name: &str, compute: Compute) -> OnCores {
        let Lane { threads, width } = compute.lane;
        let width = width.clamp(1, compute.cores.total());
        // As many wide jobs as the cores allow at once, at most one per thread.
        let count = match width {
            1 => 0,
            w => (compute.cores.total() / w).clamp(1, threads.max(1)),
        };
        let wide = (0..count)
            .map(|i| Mutex::new(rayon_pool(&format!("{name}-wide{i}"), width)))
            .collect();
        OnCores {
            compute: Compute {
                lane: Lane { threads, width },
                ..compute
            },
            wide,
        }
    }

    /// Run `job` once it holds cores: on a wide pool when it got its full width and one is
    /// free, else on `narrow` (one core: the calling thread's own [`one_thread`] pool).
    pub fn run<R: Send>(&self, narrow: &ThreadPool, job: impl FnOnce() -> R + Send) -> R {
        let c = &self.compute;
        let mut held = c.cores.acquire(c.priority, c.min_cores, c.lane.width);
        if held.n >= c.lane.width {
            if let Some(pool) = self.wide.iter().find_map(|p| p.try_lock().ok()) {
                return pool.install(job);
            }
        }
        held.keep(c.min_cores);
        narrow.install(job)
    }
}

/// A rayon pool of one thread: a job's matrix products stay on one core.
pub fn one_thread(name: &str) -> ThreadPool {
    rayon_pool(name, 1)
}

fn rayon_pool(name: &str, threads: usize) -> ThreadPool {
    let name = name.to_string();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
        .expect("build a rayon pool")
}

enum Runner<I, O> {
    Streaming(StreamingWork<I, O>),
    Batch(BatchWork<I, O>, Batching),
}

impl<I, O> Clone for Runner<I, O> {
    fn clone(&self) -> Self {
        match self {
            Self::Streaming(w) => Self::Streaming(w.clone()),
            Self::Batch(w, b) => Self::Batch(w.clone(), *b),
        }
    }
}

/// A result for job `id`; `last` is false for partial results of streaming work.
pub struct Reply<O> {
    pub id: u64,
    pub output: O,
    pub last: bool,
}

struct Job<I, O> {
    input: I,
    ticket: Ticket<O>,
}

/// Where a job's results go.
struct Ticket<O> {
    id: u64,
    reply: Sender<Reply<O>>,
    activator: SyncActivator,
}

pub struct StagePool<I, O> {
    name: String,
    jobs: Sender<Job<I, O>>,
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
    _threads: Vec<JoinHandle<()>>,
}

impl<I: Send + 'static, O: Send + 'static> StagePool<I, O> {
    /// `compute.lane.threads` run `work`; at most `capacity` jobs are queued or running.
    pub fn new(name: &str, compute: Compute, capacity: usize, work: Work<I, O>) -> Self {
        Self::streaming(name, compute, capacity, Arc::new(move |i, _| work(i)))
    }

    /// Like [`StagePool::new`], for work that emits partial results as it goes (a reply
    /// spoken sentence by sentence); the operator passes them on at once.
    pub fn streaming(
        name: &str,
        compute: Compute,
        capacity: usize,
        work: StreamingWork<I, O>,
    ) -> Self {
        Self::start(name, compute, capacity, Runner::Streaming(work))
    }

    /// Like [`StagePool::new`], for work that is cheaper per job on several jobs at once
    /// (one pass over a model's weights for all of them): see [`Batching`].
    pub fn batched(
        name: &str,
        compute: Compute,
        capacity: usize,
        batching: Batching,
        work: BatchWork<I, O>,
    ) -> Self {
        Self::start(name, compute, capacity, Runner::Batch(work, batching))
    }

    fn start(name: &str, compute: Compute, capacity: usize, runner: Runner<I, O>) -> Self {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job<I, O>>();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let threads = compute.lane.threads.max(1);
        let exec = Arc::new(OnCores::new(name, compute));
        let handles = (0..threads)
            .map(|i| {
                let queue: Receiver<Job<I, O>> = queue.clone();
                let runner = runner.clone();
                let in_flight = in_flight.clone();
                let exec = exec.clone();
                let narrow = one_thread(&format!("{name}-{i}-op"));
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        for job in queue.iter() {
                            match &runner {
                                Runner::Streaming(work) => {
                                    exec.run(&narrow, || run_one(job, work, &in_flight))
                                }
                                // Gathered once it has cores: what queued meanwhile joins.
                                Runner::Batch(work, batching) => exec.run(&narrow, || {
                                    let jobs = gather(job, &queue, *batching);
                                    run_batch(jobs, work, &in_flight)
                                }),
                            }
                        }
                    })
                    .expect("spawn stage thread")
            })
            .collect();
        Self {
            name: name.into(),
            jobs,
            in_flight,
            capacity: capacity.max(1),
            _threads: handles,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn has_room(&self) -> bool {
        self.in_flight() < self.capacity
    }

    /// Submit a job; the result arrives on `reply` and `activator` wakes the operator.
    pub fn submit(&self, id: u64, input: I, reply: Sender<Reply<O>>, activator: SyncActivator) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let ticket = Ticket {
            id,
            reply,
            activator,
        };
        let job = Job { input, ticket };
        if self.jobs.send(job).is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<O> Ticket<O> {
    fn send(&self, output: O, last: bool) {
        let reply = Reply {
            id: self.id,
            output,
            last,
        };
        // A closed channel means the operator is gone (shutdown).
        if self.reply.send(reply).is_ok() {
            let _ = self.activator.activate();
        }
    }
}

fn run_one<I, O>(job: Job<I, O>, work: &StreamingWork<I, O>, in_flight: &AtomicUsize) {
    let Job { input, ticket } = job;
    let out = work(input, &mut |part| ticket.send(part, false));
    in_flight.fetch_sub(1, Ordering::AcqRel);
    ticket.send(out, true);
}

/// `first` and whatever else is queued, up to the batch size, waiting at most `max_wait`.
fn gather<T>(first: T, queue: &Receiver<T>, b: Batching) -> Vec<T> {
    let deadline = Instant::now() + b.max_wait;
    let mut jobs = vec![first];
    while jobs.len() < b.max_batch {
        match queue.try_recv().or_else(|_| queue.recv_deadline(deadline)) {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    jobs
}

fn run_batch<I, O>(jobs: Vec<Job<I, O>>, work: &BatchWork<I, O>, in_flight: &AtomicUsize) {
    let (inputs, tickets): (Vec<I>, Vec<Ticket<O>>) =
        jobs.into_iter().map(|j| (j.input, j.ticket)).unzip();
    let outputs = work(inputs);
    assert_eq!(
        outputs.len(),
        tickets.len(),
        "batch work: one output per input"
    );
    in_flight.fetch_sub(tickets.len(), Ordering::AcqRel);
    for (ticket, out) in tickets.into_iter().zip(outputs) {
        ticket.send(out, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use timely::dataflow::operators::{Capture, Input, Probe};

    #[test]
    fn gather_takes_what_is_queued_up_to_the_batch_size() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 1..=3 {
            tx.send(i).unwrap();
        }
        assert_eq!(gather(0, &rx, Batching::new(3, 0)), vec![0, 1, 2]);
        assert_eq!(gather(9, &rx, Batching::new(3, 0)), vec![9, 3]);
        assert_eq!(gather(7, &rx, Batching::NONE), vec![7]);
    }

    #[test]
    fn gather_waits_at_most_max_wait_for_more() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            tx.send(1).unwrap();
            tx
        });
        let t = Instant::now();
        assert_eq!(gather(0, &rx, Batching::new(4, 300)), vec![0, 1]);
        let _tx = late.join().unwrap();
        // Nothing more arrives: the wait ends at the deadline, not never.
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// Through the stage operator: every record comes back exactly once, transformed, and
    /// records that queue behind a busy thread are taken together.
    #[test]
    fn batched_stage_returns_every_record_once() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let work: BatchWork<u64, u64> = Arc::new(move |xs: Vec<u64>| {
            seen.lock().unwrap().push(xs.len());
            std::thread::sleep(Duration::from_millis(20));
            xs.into_iter().map(|x| x * 10).collect()
        });
        let compute = Compute::alone(1);
        let pool = Arc::new(StagePool::batched(
            "test",
            compute,
            64,
            Batching::new(4, 0),
            work,
        ));
        let captured = timely::execute_directly(move |worker| {
            let (mut input, probe, captured) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<u64>>();
                let out = crate::operators::async_stage(stream, pool.clone(), |_| {});
                let (probe, out) = out.probe();
                (input, probe, out.capture())
            });
            for x in 0..20 {
                input.send(x);
            }
            input.advance_to(1);
            drop(input);
            while !probe.done() {
                worker.step();
            }
            captured
        });
        let mut out: Vec<u64> = timely::dataflow::operators::capture::Extract::extract(captured)
            .into_iter()
            .flat_map(|(_, xs)| xs)
            .collect();
        out.sort_unstable();
        assert_eq!(out, (0..20).map(|x| x * 10).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&n| (1..=4).contains(&n)), "{sizes:?}");
        assert!(
            sizes.iter().any(|&n| n > 1),
            "nothing was batched: {sizes:?}"
        );
    }
}
