//! Reply generation, whichever engine writes it: the trait the answering stage calls.
//! The local engine is SmolLM2 on candle ([`crate::llm`]); engines are chosen by
//! `answering.backend` in the config.

use crate::llm::{Generated, Prompt, ReplyModel, Sampling};

/// Writes replies. One instance serves every reply thread of a process.
pub trait ReplyEngine: Send + Sync {
    /// What `reply.backend` reports: `local`, …
    fn name(&self) -> &'static str;
    /// Whether the engine answers in this language itself (otherwise the curated bank does).
    fn serves(&self, language: &str) -> bool;
    /// Write a reply to `prompt`, handing each finished, cleaned sentence to `on_sentence`
    /// as soon as it is complete. `session` names the conversation, for engines that keep
    /// state between turns.
    fn generate(
        &self,
        session: Option<&str>,
        prompt: &Prompt,
        sampling: &Sampling,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Generated>;
    /// Reply threads this engine wants in a process that may keep `cores` cores busy. The
    /// default, one conversation per thread, wants one per core; an engine that steps
    /// several conversations together on one thread asks for fewer.
    fn threads_wanted(&self, cores: usize) -> usize {
        cores
    }
    /// Whether [`ReplyEngine::prepare`] does anything (a preparing thread runs only then).
    fn prepares(&self) -> bool {
        false
    }
    /// How many conversations' prepared states to keep (called once, before any prepare).
    fn keep_prepared(&self, _conversations: usize) {}
    /// Between turns: run what `session`'s next prompt starts with and keep the state.
    /// Returns the tokens run.
    fn prepare(&self, _session: &str, _next: &Prompt) -> anyhow::Result<usize> {
        Ok(0)
    }
    /// Drop these conversations' prepared state.
    fn forget(&self, _sessions: &[String]) {}
}

impl ReplyEngine for ReplyModel {
    fn name(&self) -> &'static str {
        "local"
    }

    fn serves(&self, language: &str) -> bool {
        crate::reply_bank::model_serves(language)
    }

    fn generate(
        &self,
        session: Option<&str>,
        prompt: &Prompt,
        sampling: &Sampling,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Generated> {
        self.generate_in(session, prompt, sampling, on_sentence)
    }

    fn prepares(&self) -> bool {
        true
    }

    fn keep_prepared(&self, conversations: usize) {
        self.keep_sessions(conversations)
    }

    fn prepare(&self, session: &str, next: &Prompt) -> anyhow::Result<usize> {
        ReplyModel::prepare(self, session, next)
    }

    fn forget(&self, sessions: &[String]) {
        self.forget_sessions(sessions)
    }
}
