//! The offered load: utterances synthesized and encoded before the clock starts, sent
//! open-loop on a schedule (evenly spaced or Poisson), so a slow processor cannot slow the
//! arrivals down and hide its own queueing.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use teddyflow_connectors::fleet::{
    encode, synthesize, to_records, Encoded, Utterance, Voice, CHILD_PHRASES,
};
use teddyflow_connectors::kafka::{AckedWriter, KafkaSettings};
use teddyflow_connectors::wire::Codec;

use crate::cmd::fleet::{check, send_with_retry, wait_acks};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// One utterance every 1/rate seconds.
    Even,
    /// Exponential gaps with mean 1/rate (independent toys).
    Poisson,
}

/// One utterance of the load: who says it, its audio, and when (after the clock starts).
pub struct Planned {
    pub conversation: usize,
    pub turn: usize,
    pub audio: Encoded,
    pub at: Duration,
}

impl Planned {
    /// Ids carry the run's prefix, so runs on one broker never share a conversation.
    pub fn ids(&self, prefix: &str) -> (String, String) {
        (
            format!("{prefix}-toy-{}", self.conversation),
            format!("u{}", self.turn),
        )
    }
}

pub struct LoadSpec {
    pub conversations: usize,
    pub codecs: Vec<Codec>,
    pub voices: Vec<Voice>,
}

/// Synthesize and encode `count` utterances: phrases, voices and codecs cycled; each
/// distinct (phrase, voice, codec) is made once.
pub fn prepare(spec: &LoadSpec, count: usize, times: &[Duration]) -> anyhow::Result<Vec<Planned>> {
    let mut speech: HashMap<(usize, usize), Vec<u8>> = HashMap::new();
    let mut encoded: HashMap<(usize, usize, usize), Encoded> = HashMap::new();
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let key = (
            n % CHILD_PHRASES.len(),
            n % spec.voices.len(),
            n % spec.codecs.len(),
        );
        if let Entry::Vacant(slot) = encoded.entry(key) {
            let wav = match speech.entry((key.0, key.1)) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    e.insert(synthesize(CHILD_PHRASES[key.0], &spec.voices[key.1])?)
                }
            };
            slot.insert(encode(wav, spec.codecs[key.2])?);
        }
        out.push(Planned {
            conversation: n % spec.conversations.max(1),
            turn: n / spec.conversations.max(1),
            audio: encoded[&key].clone(),
            at: times.get(n).copied().unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Send times after the clock starts. `rate` ≤ 0 sends everything at once: a saturating
/// load, used for throughput and scaling.
pub fn schedule(count: usize, rate: f64, arrival: Arrival, seed: u64) -> Vec<Duration> {
    if rate <= 0.0 {
        return vec![Duration::ZERO; count];
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = 0.0f64;
    (0..count)
        .map(|_| {
            let at = t;
            t += match arrival {
                Arrival::Even => 1.0 / rate,
                // Inverse CDF of the exponential; 1 - u keeps ln away from 0.
                Arrival::Poisson => -(1.0 - rng.gen::<f64>()).ln() / rate,
            };
            Duration::from_secs_f64(at)
        })
        .collect()
}

/// Send every planned utterance at its time after `start`; returns when each final chunk
/// was handed to the producer, in plan order. Waits for the broker's acks at the end.
pub fn send(
    settings: &KafkaSettings,
    topic: &str,
    prefix: &str,
    chunk_bytes: usize,
    plan: &[Planned],
    start: Instant,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Instant>> {
    let writer = AckedWriter::open(settings)?;
    let mut finals = Vec::with_capacity(plan.len());
    let mut id = 0u64;
    for p in plan {
        sleep_until(start + p.at, stop)?;
        let (conversation, utterance) = p.ids(prefix);
        let u = Utterance {
            conversation,
            utterance,
            child: Some(format!("{prefix}-child-{}", p.conversation)),
            audio: p.audio.clone(),
        };
        let now_ms = teddyflow_dataflow::envelope::now_ms();
        for rec in to_records(&u, chunk_bytes, topic, now_ms) {
            id += 1;
            send_with_retry(&writer, id, &rec)?;
        }
        finals.push(Instant::now());
        // Surface failed deliveries early without waiting for acks (open loop).
        check(writer.poll())?;
    }
    wait_acks(&writer)?;
    Ok(finals)
}

/// Sleep in short steps so a stop request is noticed.
fn sleep_until(due: Instant, stop: &AtomicBool) -> anyhow::Result<()> {
    loop {
        anyhow::ensure!(!stop.load(Ordering::Acquire), "stopped");
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_schedule_is_evenly_spaced_and_zero_rate_is_a_burst() {
        let s = schedule(3, 2.0, Arrival::Even, 1);
        assert_eq!(s, [0.0, 0.5, 1.0].map(Duration::from_secs_f64));
        assert_eq!(schedule(2, 0.0, Arrival::Poisson, 1), [Duration::ZERO; 2]);
    }

    #[test]
    fn poisson_schedule_has_the_requested_mean_rate_and_is_seeded() {
        let s = schedule(4001, 10.0, Arrival::Poisson, 7);
        let mean_gap = s.last().unwrap().as_secs_f64() / 4000.0;
        assert!((mean_gap - 0.1).abs() < 0.01, "{mean_gap}");
        assert_eq!(s, schedule(4001, 10.0, Arrival::Poisson, 7));
        assert!(s.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn ids_cycle_conversations_then_turns() {
        let p = |n: usize| Planned {
            conversation: n % 3,
            turn: n / 3,
            audio: Encoded {
                codec: Codec::Wav,
                rate: None,
                channels: 1,
                bytes: vec![],
            },
            at: Duration::ZERO,
        };
        assert_eq!(p(4).ids("r1"), ("r1-toy-1".into(), "u1".into()));
    }
}
