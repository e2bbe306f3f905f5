//! Conversation memory: the last few turns of each conversation, held by the worker that
//! owns the conversation (so no locks and no cross-worker state). Bounded three ways: turns
//! per conversation, an idle TTL, and a cap on conversations (least recently used goes).

use std::collections::{HashMap, VecDeque};

/// One exchange: what the child said (redacted transcript) and what teddy replied.
pub type Turn = (String, String);

#[derive(Debug)]
struct Entry {
    child: Option<String>,
    turns: VecDeque<Turn>,
    last_ms: i64,
}

#[derive(Debug)]
pub struct ConversationMemory {
    entries: HashMap<String, Entry>,
    max_turns: usize,
    ttl_ms: i64,
    max_conversations: usize,
    next_sweep_ms: i64,
}

/// Expired conversations are swept at most this often (a sweep visits every entry).
const SWEEP_EVERY_MS: i64 = 10_000;

impl ConversationMemory {
    pub fn new(max_turns: usize, ttl_ms: u64, max_conversations: usize) -> Self {
        Self {
            entries: HashMap::new(),
            max_turns,
            ttl_ms: ttl_ms.min(i64::MAX as u64) as i64,
            max_conversations: max_conversations.max(1),
            next_sweep_ms: 0,
        }
    }

    /// Recent turns of `conversation`, oldest first. Nothing when it has expired or when
    /// it was held for another child (a toy handed to a sibling starts afresh).
    pub fn history(&mut self, conversation: &str, child: Option<&str>, now_ms: i64) -> Vec<Turn> {
        if now_ms >= self.next_sweep_ms {
            self.expire(now_ms);
            self.next_sweep_ms = now_ms + SWEEP_EVERY_MS;
        }
        let fresh = match self.entries.get(conversation) {
            Some(e) => now_ms - e.last_ms <= self.ttl_ms && e.child.as_deref() == child,
            None => return Vec::new(),
        };
        if !fresh {
            self.entries.remove(conversation);
            return Vec::new();
        }
        self.entries[conversation].turns.iter().cloned().collect()
    }

    /// Remember a finished turn.
    pub fn record(&mut self, conversation: &str, child: Option<&str>, turn: Turn, now_ms: i64) {
        if self.max_turns == 0 {
            return;
        }
        if !self.entries.contains_key(conversation) && self.entries.len() >= self.max_conversations
        {
            self.evict_oldest();
        }
        let entry = self
            .entries
            .entry(conversation.to_string())
            .or_insert_with(|| Entry {
                child: child.map(String::from),
                turns: VecDeque::new(),
                last_ms: now_ms,
            });
        if entry.child.as_deref() != child {
            entry.child = child.map(String::from);
            entry.turns.clear();
        }
        entry.turns.push_back(turn);
        while entry.turns.len() > self.max_turns {
            entry.turns.pop_front();
        }
        entry.last_ms = now_ms;
    }

    /// Forget every conversation of `child` (their profile was deleted); returns their ids.
    pub fn forget_child(&mut self, child: &str) -> Vec<String> {
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.child.as_deref() == Some(child))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.entries.remove(k);
        }
        gone
    }

    /// Drop conversations idle longer than the TTL.
    pub fn expire(&mut self, now_ms: i64) {
        let ttl = self.ttl_ms;
        self.entries.retain(|_, e| now_ms - e.last_ms <= ttl);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.last_ms)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.entries.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(i: usize) -> Turn {
        (format!("said {i}"), format!("replied {i}"))
    }

    #[test]
    fn keeps_the_last_turns_per_conversation() {
        let mut m = ConversationMemory::new(2, 1000, 10);
        for i in 0..3 {
            m.record("a", Some("c1"), turn(i), 0);
        }
        assert_eq!(m.history("a", Some("c1"), 10), vec![turn(1), turn(2)]);
        assert!(m.history("b", Some("c1"), 10).is_empty());
    }

    #[test]
    fn expires_forgets_children_and_stays_bounded() {
        let mut m = ConversationMemory::new(4, 1000, 2);
        m.record("a", Some("c1"), turn(0), 0);
        assert!(
            m.history("a", Some("c1"), 1001).is_empty(),
            "idle past the TTL"
        );
        m.record("a", Some("c1"), turn(1), 2000);
        assert!(m.history("a", Some("c2"), 2001).is_empty(), "another child");
        m.record("a", Some("c1"), turn(1), 2000);
        m.record("b", Some("c1"), turn(2), 2100);
        m.record("c", Some("c9"), turn(3), 2200);
        assert_eq!(m.len(), 2, "the least recently used conversation went");
        assert!(m.history("a", Some("c1"), 2300).is_empty());
        assert_eq!(m.forget_child("c1"), vec!["b".to_string()]);
        assert!(m.history("b", Some("c1"), 2300).is_empty());
        assert_eq!(m.history("c", Some("c9"), 2300), vec![turn(3)]);
        m.expire(5000);
        assert!(m.is_empty());
    }
}
