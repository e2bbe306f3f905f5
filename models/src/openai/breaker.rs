//! Protecting the server and the child from each other: a circuit breaker that stops
//! asking a server that keeps failing, and a bound on requests in flight.
//!
//! ```text
//! closed ──(breaker_failures in a row)──► open ──(breaker_cooldown_ms)──► half-open
//!   ▲                                      ▲                                  │ one probe
//!   └────────────── probe answered ────────┴──────── probe failed ◄───────────┘
//! ```
//!
//! While open, a reply does not wait for a timeout it knows is coming: it falls back at
//! once, and a dead server sees one probe per cool-down instead of one request per child.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::reply::BreakerState;

pub struct Breaker {
    failures_to_open: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The probe is in flight; every other request is refused until it ends.
    Probing,
}

/// Leave to send one request, from [`Breaker::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The one request that tests a server after its cool-down.
    pub probe: bool,
}

/// What a recorded result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(failures_to_open: u32, cooldown: Duration) -> Breaker {
        Breaker {
            failures_to_open: failures_to_open.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// May a request go now? `None` while open (or while the probe is out).
    pub fn admit(&self) -> Option<Attempt> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<Attempt> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Some(Attempt { probe: false }),
            State::Open { until } if now >= until => {
                *state = State::Probing;
                Some(Attempt { probe: true })
            }
            State::Open { .. } | State::Probing => None,
        }
    }

    /// The server answered: it is alive, whatever it said.
    pub fn succeeded(&self, _attempt: Attempt) -> Change {
        let mut state = self.lock();
        let was_closed = matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        match was_closed {
            true => Change::None,
            false => Change::Closed,
        }
    }

    /// The request failed (no connection, timeout, HTTP error, broken stream).
    pub fn failed(&self, attempt: Attempt) -> Change {
        self.failed_at(attempt, Instant::now())
    }

    fn failed_at(&self, attempt: Attempt, now: Instant) -> Change {
        let mut state = self.lock();
        let open = State::Open {
            until: now + self.cooldown,
        };
        match *state {
            State::Probing if attempt.probe => {
                *state = open;
                Change::None
            }
            State::Closed { failures } if failures + 1 >= self.failures_to_open => {
                *state = open;
                Change::Opened
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                Change::None
            }
            // A request sent before the breaker opened: the breaker already knows.
            State::Open { .. } | State::Probing => Change::None,
        }
    }

    /// The attempt sent nothing (no free request slot): a probe goes back unused.
    pub fn unused(&self, attempt: Attempt) {
        let mut state = self.lock();
        if attempt.probe && matches!(*state, State::Probing) {
            *state = State::Open {
                until: Instant::now(),
            };
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Probing => BreakerState::HalfOpen,
            State::Open { until } if Instant::now() >= until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A counting semaphore: at most `max_concurrency` requests in flight per process.
pub struct Permits {
    free: Mutex<usize>,
    returned: Condvar,
}

/// One request slot, given back when dropped (by the thread reading the response, so a
/// request abandoned at a deadline still counts until its connection is closed).
pub struct Permit {
    permits: Arc<Permits>,
}

impl Permits {
    pub fn new(max: usize) -> Arc<Permits> {
        Arc::new(Permits {
            free: Mutex::new(max.max(1)),
            returned: Condvar::new(),
        })
    }

    /// A slot, waiting until `deadline` at most.
    pub fn acquire(self: &Arc<Self>, deadline: Instant) -> Option<Permit> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            let left = deadline.checked_duration_since(Instant::now())?;
            free = self
                .returned
                .wait_timeout(free, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *free -= 1;
        Some(Permit {
            permits: self.clone(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut free = self.permits.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += 1;
        self.permits.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_probes_after_the_cooldown() {
        let b = Breaker::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        let a = b.admit_at(t0).unwrap();
        assert_eq!(b.failed_at(a, t0), Change::None);
        let a = b.admit_at(t0).unwrap();
        assert_eq!(b.succeeded(a), Change::None, "a success resets the count");
        let a = b.admit_at(t0).unwrap();
        assert_eq!(b.failed_at(a, t0), Change::None);
        let a = b.admit_at(t0).unwrap();
        assert_eq!(b.failed_at(a, t0), Change::Opened);
        assert_eq!(b.admit_at(t0 + Duration::from_secs(9)), None);
        let later = t0 + Duration::from_secs(10);
        let probe = b.admit_at(later).unwrap();
        assert!(probe.probe);
        assert_eq!(b.admit_at(later), None, "one probe at a time");
        assert_eq!(b.failed_at(probe, later), Change::None);
        assert_eq!(
            b.admit_at(later + Duration::from_secs(5)),
            None,
            "open again"
        );
        let probe = b.admit_at(later + Duration::from_secs(10)).unwrap();
        assert_eq!(b.succeeded(probe), Change::Closed);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit_at(later), Some(Attempt { probe: false }));
    }

    #[test]
    fn an_unused_probe_goes_back() {
        let b = Breaker::new(1, Duration::ZERO);
        let a = b.admit().unwrap();
        b.failed(a);
        let probe = b.admit().unwrap();
        assert!(probe.probe && b.admit().is_none());
        b.unused(probe);
        assert!(b.admit().unwrap().probe);
    }

    #[test]
    fn permits_bound_requests_in_flight() {
        let p = Permits::new(2);
        let soon = || Instant::now() + Duration::from_millis(20);
        let (a, b) = (p.acquire(soon()).unwrap(), p.acquire(soon()).unwrap());
        assert!(p.acquire(soon()).is_none(), "a third waits, then gives up");
        drop(a);
        let c = p.acquire(soon());
        assert!(c.is_some());
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.acquire(Instant::now() + Duration::from_secs(5)).is_some())
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(b);
        assert!(waiter.join().unwrap(), "a returned permit wakes a waiter");
    }
}
