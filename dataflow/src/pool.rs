//! Model stages run on a pool of threads beside the timely workers, so a 300 ms Whisper
//! call never stalls progress tracking, reading or acknowledging. One pool per stage per
//! process; every worker of the process shares it (and so shares one copy of the weights).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use timely::scheduling::SyncActivator;

type Work<I, O> = Arc<dyn Fn(I) -> O + Send + Sync>;

struct Job<I, O> {
    id: u64,
    input: I,
    reply: Sender<(u64, O)>,
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
                            let out = work(job.input);
                            in_flight.fetch_sub(1, Ordering::AcqRel);
                            // A closed reply channel means the operator is gone (shutdown).
                            if job.reply.send((job.id, out)).is_ok() {
                                let _ = job.activator.activate();
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
    pub fn submit(&self, id: u64, input: I, reply: Sender<(u64, O)>, activator: SyncActivator) {
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

/// Shared count of utterances admitted to the graph but not yet through the model stages;
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
