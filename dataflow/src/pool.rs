//! Model stages run on a pool of threads beside the timely workers, so a 300 ms Whisper
//! call never stalls progress tracking, reading or acknowledging. One pool per stage per
//! process; every worker of the process shares it (and so shares one copy of the weights).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use timely::scheduling::SyncActivator;

type Work<I, O> = Arc<dyn Fn(I) -> O + Send + Sync>;
/// Work that hands out partial results (`emit`) before its final one (the return value).
pub type StreamingWork<I, O> = Arc<dyn Fn(I, &mut dyn FnMut(O)) -> O + Send + Sync>;

/// A result for job `id`; `last` is false for partial results of streaming work.
pub struct Reply<O> {
    pub id: u64,
    pub output: O,
    pub last: bool,
}

struct Job<I, O> {
    id: u64,
    input: I,
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
    /// `threads` run `work`; at most `capacity` jobs are queued or running at once.
    pub fn new(name: &str, threads: usize, capacity: usize, work: Work<I, O>) -> Self {
        Self::streaming(name, threads, capacity, Arc::new(move |i, _| work(i)))
    }

    /// Like [`StagePool::new`], for work that emits partial results as it goes (a reply
    /// spoken sentence by sentence); the operator passes them on at once.
    pub fn streaming(
        name: &str,
        threads: usize,
        capacity: usize,
        work: StreamingWork<I, O>,
    ) -> Self {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job<I, O>>();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let handles = (0..threads.max(1))
            .map(|i| {
                let queue: Receiver<Job<I, O>> = queue.clone();
                let work = work.clone();
                let in_flight = in_flight.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        for job in queue.iter() {
                            let send = |output, last| {
                                let reply = Reply {
                                    id: job.id,
                                    output,
                                    last,
                                };
                                // A closed channel means the operator is gone (shutdown).
                                if job.reply.send(reply).is_ok() {
                                    let _ = job.activator.activate();
                                }
                            };
                            let out = work(job.input, &mut |part| send(part, false));
                            in_flight.fetch_sub(1, Ordering::AcqRel);
                            send(out, true);
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
        let job = Job {
            id,
            input,
            reply,
            activator,
        };
        if self.jobs.send(job).is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Shared count of utterances admitted to the graph but not yet through their last model
/// stage (speech-to-text, understanding or the reply, whichever is last);
/// sources stop reading while it is at its limit (back-pressure that cannot deadlock,
/// because partially received utterances are never counted).
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pending: Arc<AtomicUsize>,
    limit: usize,
}

impl Admission {
    pub fn new(limit: usize) -> Self {
        Self {
            pending: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }
    pub fn open(&self) -> bool {
        self.pending.load(Ordering::Acquire) < self.limit
    }
    pub fn enter(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }
    pub fn leave(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}
