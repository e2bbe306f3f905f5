//! Reassembly of chunks into utterances, as a plain state machine so it can be tested
//! against an oracle without a graph. The operator in `operators::reassemble` drives it.
//!
//! Chunks may be duplicated or out of order; an utterance is ready when chunks `0..=final`
//! are all present (chunks past `final` are dropped and counted). One that stops receiving
//! chunks is closed after the idle timeout with the contiguous prefix it has (marked
//! `incomplete`). Late duplicates of a finished utterance are dropped, so a repeat never
//! produces a second response.
//!
//! Two guards against the world outside:
//! - **Time only runs while reading does.** When back-pressure pauses the sources, the
//!   chunks an utterance waits for may still be in Kafka. Every `now` given to the
//!   reassembler is therefore a *reading clock* (`Admission::reading_clock`): wall-clock
//!   time minus the time admission has been closed, so an utterance is never cut short by
//!   teddyflow's own slowness.
//! - **Bounded memory.** Partial utterances hold at most `limits.max_pending_bytes` (chunk
//!   bytes plus a small fixed cost per chunk and utterance); a chunk that would overflow it
//!   first dead-letters the oldest partial utterances.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use teddyflow_connectors::wire::Chunk;

use crate::config::Limits;
use crate::envelope::{now_ms, Failed, Meta, SourceRange};
use crate::stage::Stage;

type Key = (String, String);

/// Bookkeeping cost counted per stored chunk (map node, vector header) and per partial
/// utterance (its metadata and ids), so a flood of tiny chunks is bounded too.
const CHUNK_OVERHEAD: usize = 64;
const UTTERANCE_OVERHEAD: usize = 512;

struct Pending<C> {
    meta: Meta,
    chunks: BTreeMap<u32, Vec<u8>>,
    final_seq: Option<u32>,
    /// Chunk bytes (what `max_utterance_bytes` limits).
    bytes: usize,
    /// Bytes counted against `max_pending_bytes`: chunk bytes plus overheads.
    cost: usize,
    sources: BTreeMap<i32, (i64, i64)>,
    last_seen: Instant,
    /// Arrival order, to find the oldest partial utterance.
    born: u64,
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

/// Totals since start, for the worker's metrics (no ids, only counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Chunks with a `seq` past their utterance's `final`, dropped.
    pub stray_chunks: u64,
    /// Chunks of an utterance already answered or dead-lettered, dropped.
    pub late_chunks: u64,
    /// Partial utterances dead-lettered because `max_pending_bytes` was reached.
    pub evicted: u64,
}

pub struct Reassembler<C> {
    limits: Limits,
    topic: String,
    pending: HashMap<Key, Pending<C>>,
    /// Pending utterances by arrival, oldest first.
    order: BTreeMap<u64, Key>,
    next_born: u64,
    pending_bytes: usize,
    done: HashSet<Key>,
    done_order: VecDeque<Key>,
    counters: Counters,
}

impl<C> Reassembler<C> {
    pub fn new(limits: Limits, topic: &str) -> Self {
        Self {
            limits,
            topic: topic.into(),
            pending: HashMap::new(),
            order: BTreeMap::new(),
            next_born: 0,
            pending_bytes: 0,
            done: HashSet::new(),
            done_order: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes held by partial utterances, as counted against `limits.max_pending_bytes`.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Dropped chunks and evicted utterances since start.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Tokens of pending utterances: the operator must hold these capabilities.
    pub fn tokens(&self) -> impl Iterator<Item = &C> {
        self.pending.values().map(|p| &p.token)
    }

    /// Add a chunk. `keep_min` merges the chunk's token into the one already held, keeping
    /// the earlier one (a pending utterance holds back progress from its first chunk).
    /// Returns what became ready or was rejected: this utterance, and any older partial
    /// utterances dead-lettered to make room for the chunk.
    pub fn push(
        &mut self,
        chunk: Chunk,
        token: C,
        now: Instant,
        keep_min: impl FnOnce(&mut C, C),
    ) -> Vec<Outcome<C>> {
        let key = (chunk.conversation.clone(), chunk.headers.utterance.clone());
        if self.done.contains(&key) {
            self.counters.late_chunks += 1;
            return Vec::new();
        }
        let seq = chunk.headers.seq;
        if let Some(f) = self.pending.get(&key).and_then(|p| p.final_seq) {
            if seq > f {
                self.counters.stray_chunks += 1;
                return Vec::new();
            }
        }
        let max_chunks = self.limits.max_chunks_per_utterance;
        let pending = match self.pending.get_mut(&key) {
            Some(p) => {
                keep_min(&mut p.token, token);
                p
            }
            None => {
                let born = self.next_born;
                self.next_born += 1;
                self.order.insert(born, key.clone());
                self.pending_bytes += UTTERANCE_OVERHEAD;
                self.pending
                    .entry(key.clone())
                    .or_insert_with(|| new_pending(&chunk, token, now, born))
            }
        };
        pending.last_seen = now;
        let range = pending
            .sources
            .entry(chunk.partition)
            .or_insert((chunk.offset, chunk.offset));
        range.0 = range.0.min(chunk.offset);
        range.1 = range.1.max(chunk.offset);
        if seq == 0 {
            pending.meta.headers = chunk.headers.clone();
        }
        if seq >= max_chunks {
            let error = format!("utterance has more than {max_chunks} chunks");
            return vec![self.reject(&key, error)];
        }
        if pending.chunks.contains_key(&seq) {
            return Vec::new(); // a duplicate
        }
        let mut out = self.make_room(&key, chunk.bytes.len() + CHUNK_OVERHEAD);
        let Some(pending) = self.pending.get_mut(&key) else {
            return out; // it was the one that could not fit
        };
        pending.bytes += chunk.bytes.len();
        pending.cost += chunk.bytes.len() + CHUNK_OVERHEAD;
        self.pending_bytes += chunk.bytes.len() + CHUNK_OVERHEAD;
        pending.chunks.insert(seq, chunk.bytes);
        if chunk.headers.is_final && pending.final_seq.is_none_or(|f| seq < f) {
            pending.final_seq = Some(seq);
            let stray = drop_after(pending, seq);
            self.pending_bytes -= stray.1;
            self.counters.stray_chunks += stray.0;
        }
        if pending.bytes > self.limits.max_utterance_bytes {
            let error = format!(
                "utterance exceeds {} bytes",
                self.limits.max_utterance_bytes
            );
            out.push(self.reject(&key, error));
            return out;
        }
        // Only chunks 0..=final are kept once `final` is known, so a full count is complete.
        let complete = pending
            .final_seq
            .is_some_and(|f| pending.chunks.len() as u64 == f as u64 + 1);
        if complete {
            out.push(self.finish(&key, false));
        }
        out
    }

    /// Dead-letter the oldest partial utterances other than `key` until `extra` more bytes
    /// fit under `max_pending_bytes`; if they still do not, `key` itself goes too.
    fn make_room(&mut self, key: &Key, extra: usize) -> Vec<Outcome<C>> {
        let max = self.limits.max_pending_bytes;
        let mut out = Vec::new();
        while self.pending_bytes + extra > max {
            let oldest = self.order.values().find(|k| *k != key).cloned();
            let victim = oldest.unwrap_or_else(|| key.clone());
            let error = format!(
                "reassembly buffers are full (limits.max_pending_bytes = {max}): the oldest \
                 partial utterance was dropped"
            );
            self.counters.evicted += 1;
            out.push(self.reject(&victim, error));
            if victim == *key {
                break;
            }
        }
        out
    }

    /// Close utterances idle for longer than the timeout, on the reading clock.
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

    /// When the next idle timeout falls due on the reading clock, if anything is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timeout = Duration::from_millis(self.limits.utterance_idle_timeout_ms);
        self.pending.values().map(|p| p.last_seen + timeout).min()
    }

    fn remove(&mut self, key: &Key) -> Pending<C> {
        let mut p = self.pending.remove(key).expect("pending utterance");
        self.order.remove(&p.born);
        self.pending_bytes -= p.cost + UTTERANCE_OVERHEAD;
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

/// Drop the chunks after `last`; returns how many, and the cost they freed.
fn drop_after<C>(p: &mut Pending<C>, last: u32) -> (u64, usize) {
    let Some(first_stray) = last.checked_add(1) else {
        return (0, 0);
    };
    let stray = p.chunks.split_off(&first_stray);
    let bytes: usize = stray.values().map(Vec::len).sum();
    let cost = bytes + stray.len() * CHUNK_OVERHEAD;
    p.bytes -= bytes;
    p.cost -= cost;
    (stray.len() as u64, cost)
}

fn new_pending<C>(chunk: &Chunk, token: C, now: Instant, born: u64) -> Pending<C> {
    Pending {
        meta: Meta::new(&chunk.conversation, &chunk.headers),
        chunks: BTreeMap::new(),
        final_seq: None,
        bytes: 0,
        cost: 0,
        sources: BTreeMap::new(),
        last_seen: now,
        born,
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

    fn one(mut out: Vec<Outcome<u64>>) -> Option<Outcome<u64>> {
        assert!(out.len() <= 1, "{out:?}");
        out.pop()
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
            if let Some(Outcome::Ready(u, tok)) = one(r.push(c, t as u64, now, keep_min)) {
                ready.push((u, tok));
            }
        }
        assert_eq!(ready.len(), 20, "each utterance exactly once");
        assert_eq!(r.pending(), 0);
        assert_eq!(r.pending_bytes(), 0);
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
            .is_empty());
        assert!(r
            .push(chunk("c", "u", 0, 2, 10), 3, now, keep_min)
            .is_empty());
        assert_eq!(r.tokens().copied().collect::<Vec<_>>(), vec![3]);
        match one(r.push(chunk("c", "u", 2, 2, 12), 9, now, keep_min)) {
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
        match one(r.push(chunk("c", "u", 5, 9, 0), 0, now, keep_min)) {
            Some(Outcome::Rejected(f, _)) => assert!(f.error.contains("more than 3 chunks")),
            other => panic!("{other:?}"),
        }
        assert!(
            r.push(chunk("c", "u", 0, 9, 1), 0, now, keep_min)
                .is_empty(),
            "rejected id is done"
        );
        r.push(chunk("c", "big", 0, 2, 2), 0, now, keep_min);
        match one(r.push(chunk("c", "big", 1, 2, 3), 0, now, keep_min)) {
            Some(Outcome::Rejected(f, _)) => assert!(f.error.contains("exceeds 12 bytes")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            one(r.push(chunk("c", "ok", 0, 0, 4), 0, now, keep_min)),
            Some(Outcome::Ready(..))
        ));
        assert!(
            r.push(chunk("c", "ok", 0, 0, 5), 0, now, keep_min)
                .is_empty(),
            "late duplicate"
        );
        assert_eq!(r.pending(), 0);
        assert_eq!(r.pending_bytes(), 0);
        assert_eq!(r.counters().late_chunks, 2);
    }

    /// Issue 11, defect 4: chunks `0..=final` complete an utterance; a stray chunk past
    /// `final` neither delays it to the idle timeout nor makes it `incomplete`.
    #[test]
    fn stray_chunks_past_final_are_dropped_and_counted() {
        let now = Instant::now();
        let stray = |seq: u32| {
            let mut c = chunk("c", "u", seq, 99, 50 + seq as i64);
            c.bytes = b"STRAY".to_vec();
            c
        };
        // The stray arrives first (final on seq 0, a seq 5 already received) ...
        let mut r = Reassembler::new(limits(), "t");
        assert!(r.push(stray(5), 1, now, keep_min).is_empty());
        match one(r.push(chunk("c", "u", 0, 0, 10), 2, now, keep_min)) {
            Some(Outcome::Ready(u, tok)) => {
                assert_eq!(u.bytes, expected("c", "u", 0));
                assert!(!u.meta.incomplete);
                assert_eq!(tok, 1, "the earliest chunk's token is still held");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((r.pending(), r.pending_bytes()), (0, 0));
        assert_eq!(r.counters().stray_chunks, 1);
        // ... or after `final`, while earlier chunks are still missing.
        let mut r = Reassembler::new(limits(), "t");
        assert!(r
            .push(chunk("c", "u", 2, 2, 12), 0, now, keep_min)
            .is_empty());
        assert!(r.push(stray(3), 0, now, keep_min).is_empty());
        assert!(r.push(stray(7), 0, now, keep_min).is_empty());
        assert!(r
            .push(chunk("c", "u", 0, 2, 10), 0, now, keep_min)
            .is_empty());
        match one(r.push(chunk("c", "u", 1, 2, 11), 0, now, keep_min)) {
            Some(Outcome::Ready(u, _)) => {
                assert_eq!(u.bytes, expected("c", "u", 2));
                assert!(!u.meta.incomplete);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.counters().stray_chunks, 2);
        // Once `final` is known, a seq far past `max_chunks_per_utterance` is only a stray.
        let mut r = Reassembler::new(limits(), "t");
        assert!(r
            .push(chunk("c", "u", 1, 1, 11), 0, now, keep_min)
            .is_empty());
        assert!(r.push(stray(50_000), 0, now, keep_min).is_empty());
        assert_eq!(r.pending(), 1, "{:?}", r.counters());
        assert!(matches!(
            one(r.push(chunk("c", "u", 0, 1, 10), 0, now, keep_min)),
            Some(Outcome::Ready(u, _)) if u.bytes == expected("c", "u", 1)
        ));
    }

    /// Issue 11, defect 6: 1,500 first-chunk-only utterances of 250 kB stay under
    /// `max_pending_bytes`; the oldest are dead-lettered with a reason and counted.
    #[test]
    fn partial_utterances_are_bounded_in_bytes() {
        let l = limits();
        let max = l.max_pending_bytes;
        let mut r = Reassembler::new(l, "t");
        let now = Instant::now();
        let mut evicted = Vec::new();
        for u in 0..1_500u32 {
            let mut c = chunk("c", &format!("u{u}"), 0, 9, u as i64);
            c.bytes = vec![(u % 251) as u8; 250_000];
            for o in r.push(c, u as u64, now, keep_min) {
                match o {
                    Outcome::Rejected(f, tok) => {
                        assert!(f.error.contains("max_pending_bytes"), "{}", f.error);
                        assert_eq!(f.bytes.len(), 250_000, "the dead letter keeps the bytes");
                        evicted.push(tok);
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert!(r.pending_bytes() <= max, "{} > {max}", r.pending_bytes());
        }
        let held = r.pending();
        assert!(held > 200 && held < 269, "{held} partial utterances held");
        assert_eq!(evicted.len() + held, 1_500);
        assert_eq!(r.counters().evicted as usize, evicted.len());
        // The oldest went first, in order.
        assert_eq!(evicted, (0..evicted.len() as u64).collect::<Vec<_>>());
        // A later chunk of an evicted utterance is late, not a new utterance.
        assert!(r
            .push(chunk("c", "u0", 1, 9, 9_999), 0, now, keep_min)
            .is_empty());
        assert_eq!(r.counters().late_chunks, 1);
        // Expiring the rest frees every byte.
        let later = now + Duration::from_millis(limits().utterance_idle_timeout_ms);
        assert_eq!(r.expire(later).len(), held);
        assert_eq!(r.pending_bytes(), 0);
    }
}
