//! Reassembly of chunks into utterances, as a plain state machine so it can be tested
//! against an oracle without a graph. The operator in `operators::reassemble` drives it.
//!
//! Chunks may be duplicated or out of order; an utterance is ready when chunks `0..=final`
//! are all present. One that stops receiving chunks is closed after the idle timeout with
//! the contiguous prefix it has (marked `incomplete`). Late duplicates of a finished
//! utterance are dropped, so a repeat never produces a second response.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use teddyflow_connectors::wire::Chunk;

use crate::config::Limits;
use crate::envelope::{now_ms, Failed, Meta, SourceRange};
use crate::stage::Stage;

type Key = (String, String);

struct Pending<C> {
    meta: Meta,
    chunks: BTreeMap<u32, Vec<u8>>,
    final_seq: Option<u32>,
    bytes: usize,
    sources: BTreeMap<i32, (i64, i64)>,
    last_seen: Instant,
    token: C,
}

/// A complete utterance: the chunks' bytes concatenated in `seq` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Assembled {
    pub meta: Meta,
    pub bytes: Vec<u8>,
}

/// What pushing a chunk or expiring led to. `C` is the token (capability) held for it.
#[derive(Debug)]
pub enum Outcome<C> {
    Ready(Assembled, C),
    Rejected(Failed, C),
}

pub struct Reassembler<C> {
    limits: Limits,
    topic: String,
    pending: HashMap<Key, Pending<C>>,
    done: HashSet<Key>,
    done_order: VecDeque<Key>,
}

impl<C> Reassembler<C> {
    pub fn new(limits: Limits, topic: &str) -> Self {
        Self {
            limits,
            topic: topic.into(),
            pending: HashMap::new(),
            done: HashSet::new(),
            done_order: VecDeque::new(),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Tokens of pending utterances: the operator must hold these capabilities.
    pub fn tokens(&self) -> impl Iterator<Item = &C> {
        self.pending.values().map(|p| &p.token)
    }

    /// Add a chunk. `keep_min` merges the chunk's token into the one already held, keeping
    /// the earlier one (a pending utterance holds back progress from its first chunk).
    pub fn push(
        &mut self,
        chunk: Chunk,
        token: C,
        now: Instant,
        keep_min: impl FnOnce(&mut C, C),
    ) -> Option<Outcome<C>> {
        let key = (chunk.conversation.clone(), chunk.headers.utterance.clone());
        if self.done.contains(&key) {
            return None;
        }
        let max_chunks = self.limits.max_chunks_per_utterance;
        let pending = match self.pending.get_mut(&key) {
            Some(p) => {
                keep_min(&mut p.token, token);
                p
            }
            None => self
                .pending
                .entry(key.clone())
                .or_insert_with(|| new_pending(&chunk, token, now)),
        };
        pending.last_seen = now;
        let range = pending
            .sources
            .entry(chunk.partition)
            .or_insert((chunk.offset, chunk.offset));
        range.0 = range.0.min(chunk.offset);
        range.1 = range.1.max(chunk.offset);
        if chunk.headers.seq == 0 {
            pending.meta.headers = chunk.headers.clone();
        }
        let error = if chunk.headers.seq >= max_chunks {
            Some(format!("utterance has more than {max_chunks} chunks"))
        } else if !pending.chunks.contains_key(&chunk.headers.seq) {
            pending.bytes += chunk.bytes.len();
            if chunk.headers.is_final {
                pending.final_seq = Some(chunk.headers.seq);
            }
            pending.chunks.insert(chunk.headers.seq, chunk.bytes);
            (pending.bytes > self.limits.max_utterance_bytes).then(|| {
                format!(
                    "utterance exceeds {} bytes",
                    self.limits.max_utterance_bytes
                )
            })
        } else {
            None
        };
        if let Some(error) = error {
            return Some(self.reject(&key, error));
        }
        let complete = pending.final_seq.is_some_and(|f| {
            pending.chunks.len() as u32 == f + 1 && pending.chunks.keys().next_back() == Some(&f)
        });
        complete.then(|| self.finish(&key, false))
    }

    /// Close utterances idle for longer than the timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<Outcome<C>> {
        let timeout = Duration::from_millis(self.limits.utterance_idle_timeout_ms);
        let idle: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        idle.into_iter()
            .map(|key| {
                if self.pending[&key].chunks.contains_key(&0) {
                    self.finish(&key, true)
                } else {
                    self.reject(
                        &key,
                        "utterance timed out without its first chunk (seq 0)".into(),
                    )
                }
            })
            .collect()
    }

    /// When the next idle timeout falls due, if anything is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = Duration::from_millis(self.limits.utterance_idle_timeout_ms);
        self.pending.values().map(|p| p.last_seen + timeout).min()
    }

    fn remove(&mut self, key: &Key) -> Pending<C> {
        let mut p = self.pending.remove(key).expect("pending utterance");
        self.done.insert(key.clone());
        self.done_order.push_back(key.clone());
        while self.done_order.len() > self.limits.remember_completed {
            if let Some(old) = self.done_order.pop_front() {
                self.done.remove(&old);
            }
        }
        p.meta.sources = p
            .sources
            .iter()
            .map(|(partition, (first, last))| SourceRange {
                topic: self.topic.clone(),
                partition: *partition,
                first_offset: *first,
                last_offset: *last,
            })
            .collect();
        p.meta.completed_ms = now_ms();
        p
    }

    /// Concatenate the contiguous prefix `0..` of chunks.
    fn finish(&mut self, key: &Key, incomplete: bool) -> Outcome<C> {
        let mut p = self.remove(key);
        p.meta.incomplete = incomplete;
        let mut bytes = Vec::with_capacity(p.bytes);
        for (expected, (seq, chunk)) in p.chunks.iter().enumerate() {
            if *seq != expected as u32 {
                break;
            }
            bytes.extend_from_slice(chunk);
        }
        Outcome::Ready(
            Assembled {
                meta: p.meta,
                bytes,
            },
            p.token,
        )
    }

    fn reject(&mut self, key: &Key, error: String) -> Outcome<C> {
        let p = self.remove(key);
        let bytes = p.chunks.into_values().flatten().collect();
        let failed = Failed {
            meta: p.meta,
            bytes,
            stage: Stage::Reassembly,
            error,
        };
        Outcome::Rejected(failed, p.token)
    }
}

fn new_pending<C>(chunk: &Chunk, token: C, now: Instant) -> Pending<C> {
    Pending {
        meta: Meta::new(&chunk.conversation, &chunk.headers),
        chunks: BTreeMap::new(),
        final_seq: None,
        bytes: 0,
        sources: BTreeMap::new(),
        last_seen: now,
        token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use teddyflow_connectors::wire::ChunkHeaders;

    fn chunk(conv: &str, utt: &str, seq: u32, last: u32, offset: i64) -> Chunk {
        Chunk {
            conversation: conv.into(),
            headers: ChunkHeaders {
                utterance: utt.into(),
                seq,
                is_final: seq == last,
                codec: teddyflow_connectors::wire::Codec::Wav,
                rate: None,
                channels: 1,
                child: None,
                sent_ms: None,
            },
            bytes: format!("{conv}/{utt}/{seq};").into_bytes(),
            partition: 0,
            offset,
        }
    }

    fn limits() -> Limits {
        Limits::default()
    }

    fn keep_min(a: &mut u64, b: u64) {
        *a = (*a).min(b);
    }

    /// Oracle: the bytes of chunks 0..=last in order.
    fn expected(conv: &str, utt: &str, last: u32) -> Vec<u8> {
        (0..=last)
            .flat_map(|s| format!("{conv}/{utt}/{s};").into_bytes())
            .collect()
    }

    #[test]
    fn shuffled_duplicated_chunks_match_the_oracle_exactly_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut input = Vec::new();
        let mut offset = 0;
        for c in 0..5 {
            for u in 0..4 {
                let last = rng.gen_range(0..6);
                for s in 0..=last {
                    input.push(chunk(&format!("c{c}"), &format!("u{u}"), s, last, offset));
                    offset += 1;
                }
            }
        }
        let dups: Vec<Chunk> = input.choose_multiple(&mut rng, 15).cloned().collect();
        input.extend(dups);
        input.shuffle(&mut rng);

        let mut r = Reassembler::new(limits(), "teddy.audio");
        let now = Instant::now();
        let mut ready = Vec::new();
        for (t, c) in input.into_iter().enumerate() {
            if let Some(Outcome::Ready(u, tok)) = r.push(c, t as u64, now, keep_min) {
                ready.push((u, tok));
            }
        }
        assert_eq!(ready.len(), 20, "each utterance exactly once");
        assert_eq!(r.pending(), 0);
        for (u, _) in &ready {
            let last = u.bytes.split(|b| *b == b';').count() as u32 - 2;
            assert_eq!(
                u.bytes,
                expected(&u.meta.conversation, &u.meta.utterance, last)
            );
            assert!(!u.meta.incomplete);
        }
    }

    #[test]
    fn token_is_the_earliest_chunk_time() {
        let mut r = Reassembler::new(limits(), "t");
        let now = Instant::now();
        assert!(r
            .push(chunk("c", "u", 1, 2, 11), 5, now, keep_min)
            .is_none());
        assert!(r
            .push(chunk("c", "u", 0, 2, 10), 3, now, keep_min)
            .is_none());
        assert_eq!(r.tokens().copied().collect::<Vec<_>>(), vec![3]);
        match r.push(chunk("c", "u", 2, 2, 12), 9, now, keep_min) {
            Some(Outcome::Ready(u, t)) => {
                assert_eq!(t, 3);
                assert_eq!(u.meta.sources[0].first_offset, 10);
                assert_eq!(u.meta.sources[0].last_offset, 12);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn idle_utterances_close_with_their_prefix_or_are_rejected() {
        let mut r = Reassembler::new(limits(), "t");
        let t0 = Instant::now();
        r.push(chunk("c", "a", 0, 9, 0), 0, t0, keep_min);
        r.push(chunk("c", "a", 1, 9, 1), 0, t0, keep_min);
        r.push(chunk("c", "a", 3, 9, 2), 0, t0, keep_min);
        r.push(chunk("c", "b", 2, 9, 3), 0, t0, keep_min);
        assert!(r.expire(t0 + Duration::from_millis(10)).is_empty());
        let later = t0 + Duration::from_millis(limits().utterance_idle_timeout_ms);
        let mut out = r.expire(later);
        out.sort_by_key(|o| matches!(o, Outcome::Rejected(..)));
        match &out[..] {
            [Outcome::Ready(u, _), Outcome::Rejected(f, _)] => {
                assert!(u.meta.incomplete);
                assert_eq!(u.bytes, expected("c", "a", 1));
                assert!(f.error.contains("seq 0"), "{}", f.error);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn limits_reject_and_late_duplicates_are_dropped() {
        let mut l = limits();
        l.max_chunks_per_utterance = 3;
        l.max_utterance_bytes = 12;
        let mut r = Reassembler::new(l, "t");
        let now = Instant::now();
        match r.push(chunk("c", "u", 5, 9, 0), 0, now, keep_min) {
            Some(Outcome::Rejected(f, _)) => assert!(f.error.contains("more than 3 chunks")),
            other => panic!("{other:?}"),
        }
        assert!(
            r.push(chunk("c", "u", 0, 9, 1), 0, now, keep_min).is_none(),
            "rejected id is done"
        );
        r.push(chunk("c", "big", 0, 2, 2), 0, now, keep_min);
        match r.push(chunk("c", "big", 1, 2, 3), 0, now, keep_min) {
            Some(Outcome::Rejected(f, _)) => assert!(f.error.contains("exceeds 12 bytes")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.push(chunk("c", "ok", 0, 0, 4), 0, now, keep_min),
            Some(Outcome::Ready(..))
        ));
        assert!(
            r.push(chunk("c", "ok", 0, 0, 5), 0, now, keep_min)
                .is_none(),
            "late duplicate"
        );
        assert_eq!(r.pending(), 0);
    }
}
