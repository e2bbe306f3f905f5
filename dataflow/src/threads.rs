//! Every thread count of a process, derived from its core budget ([`crate::cores`]), and
//! the permits that keep busy model threads within it.
//!
//! **The rule.** A model job (a transcription, an understanding batch, a reply, a
//! preparation) computes only while it holds one core permit per thread it computes on,
//! and a process has as many permits as cores. So however many stage threads exist, busy
//! model threads never exceed cores; the others sleep until a core is free (no spinning).
//! A job takes one permit and, when cores are idle and nobody is waiting, up to its
//! stage's intra-op width: at light load one utterance runs its matrix products on several
//! cores, under load every core runs a different utterance. Later stages are served first
//! (reply, then understanding, speech-to-text, preparation), so utterances that are
//! further along finish first. Acoustic analysis (~15–25 ms, the branch beside
//! speech-to-text) takes no permit: waiting for the core speech-to-text holds would put it
//! after speech-to-text on the critical path.
//!
//! **The counts** (B = cores; explicit config values win):
//! - timely workers: 1 per 8 cores (they decode and route; the models run on the pools);
//! - speech-to-text and reply threads: B each, so either stage can use every core when the
//!   other is idle (the reply count is what the reply engine asks for, see
//!   `ReplyEngine::threads_wanted`);
//! - understanding threads: 1 per 4 cores (it batches; ~15 ms per utterance);
//! - acoustic threads: 1 per 8 cores (~25 ms per utterance, beside speech-to-text);
//! - intra-op width (most cores one job uses): speech-to-text min(B, 4), reply 1 (its
//!   forward is single-threaded), understanding 1 (`asr.intra_op_threads`, … override); chosen from `bench cores`
//!   (docs/performance.md, "Cores");
//! - candle's own thread pool (quantized matmuls, large element-wise ops): 1 thread, off.
//!   It is one pool per process that spin-waits for its workers; with other stages busy its
//!   workers are preempted and the caller burns its core waiting (seen at 89 % of a reply
//!   thread's samples). Intra-op parallelism goes through rayon pools instead, which sleep.

use std::sync::{Arc, Condvar, Mutex};

use crate::config::Config;
use crate::cores::CoreBudget;

/// How a stage's pool runs: its threads and the most cores one of its jobs computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lane {
    pub threads: usize,
    /// Intra-op width: threads of one job's matrix products (1 = one core per job).
    pub width: usize,
}

/// Which waiting job gets a free core first: the further along, the sooner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Between turns, only while nothing else is in flight.
    Prepare = 0,
    Asr = 1,
    Acoustic = 2,
    Understand = 3,
    Reply = 4,
}

const PRIORITIES: usize = 5;

/// The thread counts of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadPlan {
    pub budget: CoreBudget,
    /// Timely worker threads (`engine.workers`).
    pub workers: usize,
    pub asr: Lane,
    pub acoustic: Lane,
    pub understanding: Lane,
    /// Reply threads as derived; the reply engine may ask for fewer ([`ThreadPlan::reply`]).
    pub answering: Lane,
    /// Threads of candle's own pool (`CANDLE_NUM_THREADS`).
    pub candle: usize,
    /// Explicit values that go beyond the budget, said at start-up.
    pub notes: Vec<String>,
}

fn per(cores: usize, n: usize) -> usize {
    cores.div_ceil(n).max(1)
}

/// The widest intra-op split derived by default: tiny models gain little beyond it.
const MAX_WIDTH: usize = 4;

impl ThreadPlan {
    /// The counts for `budget`, with the config's explicit values (those above 0) kept.
    pub fn derive(budget: CoreBudget, config: &Config) -> ThreadPlan {
        let b = budget.cores.max(1);
        let width = b.min(MAX_WIDTH);
        let mut notes = Vec::new();
        let mut pick = |key: &str, configured: usize, derived: usize| match configured {
            0 => derived,
            n => {
                if n > b {
                    notes.push(format!(
                        "{key} = {n} is more than the {b} cores of the budget: at most {b} compute at once, the rest wait for a core"
                    ));
                }
                n
            }
        };
        let workers = pick("engine.workers", config.engine.workers, per(b, 8));
        let lane = |threads, width| Lane { threads, width };
        let asr = lane(
            pick("asr.threads", config.asr.threads, b),
            pick("asr.intra_op_threads", config.asr.intra_op_threads, width),
        );
        let u = &config.understanding;
        let understanding = lane(
            pick("understanding.threads", u.threads, per(b, 4)),
            pick("understanding.intra_op_threads", u.intra_op_threads, 1),
        );
        let a = &config.answering;
        // The local reply forward (`llm::q8`, its attention) is one thread: a wider pass would
        // hold cores it leaves idle (`bench cores`: 0.50 of 2 cores used at width 2; with
        // the q8 matmuls split over rayon, 0.71 used, no lower latency, +47 % CPU a reply).
        let answering = lane(
            pick("answering.threads", a.threads, b),
            pick("answering.intra_op_threads", a.intra_op_threads, 1),
        );
        let acoustic = lane(per(b, 8), 1);
        let candle = config.engine.candle_threads.max(1);
        if candle > b {
            notes.push(format!(
                "engine.candle_threads = {candle} is more than the {b} cores of the budget: candle's spinning pool will be preempted"
            ));
        }
        if config.engine.cores > 0 {
            if let Some(cpus) = budget.cpus.as_ref().filter(|c| c.len() < b) {
                notes.push(format!(
                    "engine.cores = {b} but this process may run on {} cpus: threads will share them",
                    cpus.len()
                ));
            }
        }
        ThreadPlan {
            budget,
            workers,
            asr,
            acoustic,
            understanding,
            answering,
            candle: candle.min(b),
            notes,
        }
    }

    pub fn cores(&self) -> usize {
        self.budget.cores.max(1)
    }

    /// Cores every model job waits for: 1, or candle's pool size when it is on (the pool
    /// spins while it waits for its threads, so none of them may be preempted).
    pub fn min_cores(&self) -> usize {
        self.candle
    }

    /// Reply threads: `answering.threads` when set, else what the engine asks for with
    /// this many cores (one thread per conversation in flight, or fewer for an engine that
    /// steps several conversations on one thread).
    pub fn reply(&self, config: &Config, wanted: impl FnOnce(usize) -> usize) -> Lane {
        match config.answering.threads {
            0 => Lane {
                threads: wanted(self.cores()).max(1),
                ..self.answering
            },
            _ => self.answering,
        }
    }

    /// The widest intra-op split any stage uses: gemm splits each product in as many
    /// parts (`RAYON_NUM_THREADS`, read by candle on every matmul).
    pub fn widest(&self) -> usize {
        [self.asr, self.understanding, self.answering, self.acoustic]
            .iter()
            .map(|l| l.width)
            .max()
            .unwrap_or(1)
    }

    /// Set the environment candle reads: its pool size (read once, when a quantized
    /// matmul first runs) and the split count of its products. Call before any model is
    /// loaded and before other threads start (the environment is process-wide).
    pub fn export_env(&self) {
        std::env::set_var("CANDLE_NUM_THREADS", self.candle.to_string());
        std::env::set_var("RAYON_NUM_THREADS", self.widest().to_string());
    }

    /// One line for the start-up log: the budget, where it came from, every count.
    pub fn summary(&self, reply: Lane) -> String {
        let b = &self.budget;
        let quota = b.quota.map_or("none".into(), |q| format!("{q:.2}"));
        let cpus = b.cpus.as_ref().map_or("?".into(), |c| cpu_list(c));
        format!(
            "{} cores from {} (cpus {cpus}, cgroup quota {quota}); workers {}, asr {}x{}, acoustic {}, understanding {}x{}, reply {}x{} (threads x intra-op width); candle pool {}; at most {} model threads compute at once",
            b.cores,
            b.source.name(),
            self.workers,
            self.asr.threads,
            self.asr.width,
            self.acoustic.threads,
            self.understanding.threads,
            self.understanding.width,
            reply.threads,
            reply.width,
            self.candle,
            self.cores(),
        )
    }
}

/// `[0, 1, 2, 5]` → `0-2,5`.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
            i += 1;
        }
        parts.push(match cpus[i] {
            end if end == start => start.to_string(),
            end => format!("{start}-{end}"),
        });
        i += 1;
    }
    parts.join(",")
}

/// The core permits of a process. Cloning shares them.
#[derive(Clone)]
pub struct Cores {
    inner: Arc<(Mutex<CoreState>, Condvar)>,
    total: usize,
}

struct CoreState {
    free: usize,
    /// Jobs waiting for a first core, by priority.
    waiting: [usize; PRIORITIES],
}

impl CoreState {
    fn higher_waiting(&self, p: Priority) -> bool {
        self.waiting[p as usize + 1..].iter().any(|&n| n > 0)
    }
}

/// Cores held by one job; released when dropped.
pub struct Held {
    cores: Cores,
    pub n: usize,
}

impl Cores {
    pub fn new(total: usize) -> Cores {
        let total = total.max(1);
        let state = CoreState {
            free: total,
            waiting: [0; PRIORITIES],
        };
        Cores {
            inner: Arc::new((Mutex::new(state), Condvar::new())),
            total,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// `min` cores for a job (usually 1), and up to `width` while they are idle and no job
    /// is waiting for one. Blocks (sleeping) until `min` are free and no job of a higher
    /// priority waits.
    pub fn acquire(&self, priority: Priority, min: usize, width: usize) -> Held {
        let min = min.clamp(1, self.total);
        let (lock, freed) = &*self.inner;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting[priority as usize] += 1;
        while s.free < min || s.higher_waiting(priority) {
            s = freed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.waiting[priority as usize] -= 1;
        let nobody_waits = s.waiting.iter().all(|&n| n == 0);
        let n = match nobody_waits {
            true => width.clamp(min, s.free.max(min)),
            false => min,
        };
        s.free -= n;
        Held {
            cores: self.clone(),
            n,
        }
    }

    fn release(&self, n: usize) {
        let (lock, freed) = &*self.inner;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        s.free += n;
        drop(s);
        // Every waiter re-checks: the highest priority one takes the core.
        freed.notify_all();
    }

    /// Cores held by jobs right now.
    pub fn busy(&self) -> usize {
        let s = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        self.total - s.free
    }
}

impl Held {
    /// Give back all but `keep` cores (a job that cannot use what it got).
    pub fn keep(&mut self, keep: usize) {
        let keep = keep.clamp(1, self.n);
        self.cores.release(self.n - keep);
        self.n = keep;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.cores.release(self.n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cores::Source;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn budget(cores: usize) -> CoreBudget {
        CoreBudget::choose(0, Some((0..cores).collect()), None, cores)
    }

    fn config(sets: &[&str]) -> Config {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::load(None, &sets).unwrap()
    }

    #[test]
    fn derived_counts_never_exceed_the_budget() {
        let configs = [
            config(&[]),
            config(&["answering.enabled=false"]),
            config(&["asr.max_batch=4", "understanding.max_batch=1"]),
            config(&["engine.max_pending_utterances=64"]),
        ];
        for cores in [1, 2, 3, 4, 8, 16] {
            for c in &configs {
                let plan = ThreadPlan::derive(budget(cores), c);
                let reply = plan.reply(c, |b| b);
                assert_eq!(plan.cores(), cores);
                assert!(plan.notes.is_empty(), "{cores}: {:?}", plan.notes);
                for lane in [plan.asr, plan.acoustic, plan.understanding, reply] {
                    assert!(
                        lane.threads >= 1 && lane.threads <= cores,
                        "{cores}: {lane:?}"
                    );
                    assert!(lane.width >= 1 && lane.width <= cores, "{cores}: {lane:?}");
                }
                assert!(plan.workers >= 1 && plan.workers <= cores);
                assert!(plan.widest() <= cores);
                assert_eq!(plan.candle, 1, "candle's spinning pool stays off");
                // An engine stepping several conversations on one thread gets one.
                assert_eq!(plan.reply(c, |_| 1).threads, 1);
            }
        }
    }

    #[test]
    fn counts_grow_with_the_budget() {
        let c = config(&[]);
        let one = ThreadPlan::derive(budget(1), &c);
        assert_eq!(
            (one.workers, one.asr, one.understanding),
            (
                1,
                Lane {
                    threads: 1,
                    width: 1
                },
                Lane {
                    threads: 1,
                    width: 1
                }
            )
        );
        let two = ThreadPlan::derive(budget(2), &c);
        assert_eq!(
            two.asr,
            Lane {
                threads: 2,
                width: 2
            }
        );
        assert_eq!(
            two.answering,
            Lane {
                threads: 2,
                width: 1
            }
        );
        let sixteen = ThreadPlan::derive(budget(16), &c);
        assert_eq!(sixteen.workers, 2);
        assert_eq!(
            sixteen.asr,
            Lane {
                threads: 16,
                width: 4
            }
        );
        assert_eq!(sixteen.understanding.threads, 4);
        assert_eq!(sixteen.acoustic.threads, 2);
        assert_eq!(sixteen.widest(), 4);
    }

    #[test]
    fn explicit_values_win_and_oversubscription_is_said() {
        let c = config(&[
            "asr.threads=3",
            "engine.workers=1",
            "answering.threads=1",
            "asr.intra_op_threads=1",
        ]);
        let plan = ThreadPlan::derive(budget(2), &c);
        assert_eq!(
            plan.asr,
            Lane {
                threads: 3,
                width: 1
            }
        );
        assert_eq!(
            plan.reply(&c, |_| 7).threads,
            1,
            "explicit beats the engine"
        );
        assert_eq!(plan.notes.len(), 1, "{:?}", plan.notes);
        assert!(plan.notes[0].contains("asr.threads = 3"));
        let c = config(&["engine.cores=4"]);
        let plan = ThreadPlan::derive(CoreBudget::choose(4, Some(vec![0, 1]), None, 2), &c);
        assert_eq!(plan.budget.source, Source::Config);
        assert!(
            plan.notes[0].contains("may run on 2 cpus"),
            "{:?}",
            plan.notes
        );
    }

    #[test]
    fn cpu_lists_print_as_ranges() {
        assert_eq!(cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(cpu_list(&[3]), "3");
    }

    #[test]
    fn permits_bound_concurrency_and_widen_only_when_idle() {
        let cores = Cores::new(2);
        let a = cores.acquire(Priority::Asr, 1, 2);
        assert_eq!(a.n, 2, "idle: the job takes its width");
        drop(a);
        let a = cores.acquire(Priority::Asr, 1, 1);
        let mut b = cores.acquire(Priority::Reply, 1, 4);
        assert_eq!((a.n, b.n), (1, 1), "only one core was left");
        assert_eq!(cores.busy(), 2);
        b.keep(1);
        drop((a, b));
        assert_eq!(cores.busy(), 0);

        // Many threads, two permits: never more than two at once.
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (cores, running, most) = (cores.clone(), running.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let p = [Priority::Asr, Priority::Reply][i % 2];
                        let held = cores.acquire(p, 1, 2);
                        let now = running.fetch_add(held.n, Ordering::SeqCst) + held.n;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        running.fetch_sub(held.n, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(cores.busy(), 0);
    }

    #[test]
    fn a_later_stage_waiting_goes_first() {
        let cores = Cores::new(1);
        let held = cores.acquire(Priority::Asr, 1, 1);
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |p: Priority| {
            let (cores, order) = (cores.clone(), order.clone());
            std::thread::spawn(move || {
                let _h = cores.acquire(p, 1, 1);
                order.lock().unwrap().push(p);
            })
        };
        let asr = spawn(Priority::Asr);
        std::thread::sleep(Duration::from_millis(50));
        let reply = spawn(Priority::Reply);
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        asr.join().unwrap();
        reply.join().unwrap();
        assert_eq!(*order.lock().unwrap(), [Priority::Reply, Priority::Asr]);
    }
}
