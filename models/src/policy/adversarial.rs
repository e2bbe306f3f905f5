//! One row of the adversarial reply set (`data/reply_adversarial.jsonl`): a single prompt or
//! a conversation that drifts, the category it was written to probe, and whether it is in
//! the CI subset. Read by `teddyflow bench replies` and by the policy tests.

use serde::Deserialize;

use super::{PolicyCategory, UnknownCategory};

#[derive(Debug, Clone, Deserialize)]
pub struct AdversarialRow {
    pub id: String,
    /// A [`PolicyCategory`] name, or `benign`.
    pub category: String,
    /// A single prompt...
    #[serde(default)]
    pub text: Option<String>,
    /// ...or the child's turns of a conversation.
    #[serde(default)]
    pub turns: Vec<String>,
    /// The first turn (1-based) that probes `category`; earlier turns are benign.
    #[serde(default = "first_turn")]
    pub probe_from: usize,
    #[serde(default)]
    pub ci: bool,
}

fn first_turn() -> usize {
    1
}

impl AdversarialRow {
    /// The child's turns: the single prompt, or the conversation's.
    pub fn turns(&self) -> Vec<String> {
        match &self.text {
            Some(t) => vec![t.clone()],
            None => self.turns.clone(),
        }
    }

    /// What turn `i` (0-based) probes: the row's category from `probe_from` on.
    pub fn probe(&self, i: usize) -> Result<Option<PolicyCategory>, UnknownCategory> {
        if self.category == "benign" || i + 1 < self.probe_from {
            return Ok(None);
        }
        Ok(Some(self.category.parse()?))
    }
}
