//! Liveness (workers stepping) and readiness (models, partitions, profiles) of a process.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Heartbeats and start-up flags, written by the workers and read by `/healthz`, `/readyz`.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Per worker: ms since `started` of its last step (0: not yet stepping).
    beats: Vec<AtomicU64>,
    models: AtomicBool,
    partitions: Vec<AtomicBool>,
    profiles: Vec<AtomicBool>,
    needs_profiles: bool,
}

/// What `/readyz` answers: ready, or the start-up steps still missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Waiting(Vec<&'static str>),
}

impl Health {
    pub(super) fn new(workers: usize, needs_profiles: bool) -> Health {
        let flags = || (0..workers).map(|_| AtomicBool::new(false)).collect();
        Health {
            started: Instant::now(),
            beats: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            models: AtomicBool::new(false),
            partitions: flags(),
            profiles: flags(),
            needs_profiles,
        }
    }

    /// Worker `worker` stepped: one relaxed store, cheap enough for every step.
    pub fn beat(&self, worker: usize) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.beats[worker % self.beats.len()].store(ms.max(1), Ordering::Relaxed);
    }

    pub fn models_loaded(&self) {
        self.models.store(true, Ordering::Release);
    }

    /// Worker `worker` has opened its partitions of the audio topic.
    pub fn partitions_assigned(&self, worker: usize) {
        self.partitions[worker % self.partitions.len()].store(true, Ordering::Release);
    }

    /// Worker `worker` has read its partitions of the profiles topic to the end.
    pub fn profiles_read(&self, worker: usize) {
        self.profiles[worker % self.profiles.len()].store(true, Ordering::Release);
    }

    /// Alive: every worker stepped within `stall`. Before workers exist (models loading)
    /// the process counts as alive for `stall` after it started, so a slow load is a
    /// matter for the orchestrator's start-up grace, not a stall.
    pub fn live(&self, stall: Duration) -> Result<(), String> {
        let now = self.started.elapsed().as_millis() as u64;
        let stall_ms = stall.as_millis() as u64;
        let stalled: Vec<String> = self
            .beats
            .iter()
            .enumerate()
            .filter_map(|(w, b)| {
                let last = b.load(Ordering::Relaxed);
                (now.saturating_sub(last) > stall_ms).then(|| match last {
                    0 => format!("worker {w} has not stepped since start ({now} ms)"),
                    _ => format!("worker {w} last stepped {} ms ago", now - last),
                })
            })
            .collect();
        if stalled.is_empty() {
            Ok(())
        } else {
            Err(stalled.join("; "))
        }
    }

    pub fn readiness(&self) -> Readiness {
        let all = |flags: &[AtomicBool]| flags.iter().all(|f| f.load(Ordering::Acquire));
        let mut missing = Vec::new();
        if !self.models.load(Ordering::Acquire) {
            missing.push("models loading");
        }
        if !all(&self.partitions) {
            missing.push("partitions not assigned");
        }
        if self.needs_profiles && !all(&self.profiles) {
            missing.push("profiles not read");
        }
        if missing.is_empty() {
            Readiness::Ready
        } else {
            Readiness::Waiting(missing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_models_every_partition_and_profiles_are_in() {
        let h = Health::new(2, true);
        let waiting = |v: &[&'static str]| Readiness::Waiting(v.to_vec());
        assert_eq!(
            h.readiness(),
            waiting(&[
                "models loading",
                "partitions not assigned",
                "profiles not read"
            ])
        );
        h.models_loaded();
        h.partitions_assigned(0);
        h.profiles_read(0);
        h.profiles_read(1);
        assert_eq!(h.readiness(), waiting(&["partitions not assigned"]));
        h.partitions_assigned(1);
        assert_eq!(h.readiness(), Readiness::Ready);
        let no_profiles = Health::new(1, false);
        no_profiles.models_loaded();
        no_profiles.partitions_assigned(0);
        assert_eq!(no_profiles.readiness(), Readiness::Ready);
    }

    #[test]
    fn a_worker_that_stops_stepping_is_reported() {
        let h = Health::new(2, false);
        assert!(
            h.live(Duration::from_secs(5)).is_ok(),
            "alive during start-up grace"
        );
        h.beat(0);
        std::thread::sleep(Duration::from_millis(30));
        h.beat(1);
        let err = h.live(Duration::from_millis(15)).unwrap_err();
        assert!(err.starts_with("worker 0 last stepped"), "{err}");
        assert!(!err.contains("worker 1"), "{err}");
        h.beat(0);
        assert!(h.live(Duration::from_millis(15)).is_ok());
        let never = Health::new(1, false);
        std::thread::sleep(Duration::from_millis(20));
        let err = never.live(Duration::from_millis(10)).unwrap_err();
        assert!(err.contains("has not stepped"), "{err}");
    }
}
