//! The pipeline's stages, named once. Timings in responses, metrics, `bench e2e` and `plan`
//! all key on [`Stage`], and the graph's shape (what runs after what, what runs side by
//! side) lives in [`PIPELINE`] — so adding a stage means adding it here and nowhere else.

use serde::{Deserialize, Serialize};

/// A stage of the pipeline, or a point in it that is timed (a queue wait, a whole path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Chunks → utterances (on the worker that owns the conversation; not timed).
    Reassembly,
    /// Container/codec decode, downmix and resample (on the timely worker).
    Decode,
    /// Queued for a speech-to-text thread (includes the hand-off to the pool).
    AsrWait,
    /// Speech-to-text.
    Asr,
    /// The second English engine (`asr.second_opinion`), beside speech-to-text: what the
    /// safety check also reads.
    AsrSecond,
    /// Acoustic analysis (pitch, energy, rate), beside speech-to-text.
    Acoustic,
    /// Text emotion and the child-safety verdict.
    Understand,
    /// Queued for a reply thread.
    ReplyWait,
    /// From the start of the reply to its first sentence (a point inside `Reply`).
    ReplyFirstSentence,
    /// Reply generation and its checks (speech synthesis excluded).
    Reply,
    /// Speech synthesis of the reply.
    Tts,
    /// Utterance complete → first reply speech acknowledged by the broker.
    FirstAudio,
    /// Produce → broker acknowledgement of one record.
    SinkAck,
    /// Utterance complete → response acknowledged.
    EndToEnd,
    /// Utterance complete → response handed to the producer (responses' `timings_ms.total`).
    Total,
}

/// What a stage's time is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Work done on one of the process's thread pools.
    Compute(Pool),
    /// Time spent queued for a pool, not compute.
    Wait,
    /// A point inside another stage, or a whole path.
    Point,
    /// Engine work that is not timed per utterance.
    Untimed,
}

/// The thread pools of one process (what `plan` sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// `engine.workers`: decode runs on the timely worker threads.
    Workers,
    /// `asr.threads`
    Asr,
    /// Acoustic analysis: one thread per process.
    Acoustic,
    /// `understanding.threads`
    Understanding,
    /// `answering.threads` (reply generation and speech)
    Answering,
}

/// The pipeline of one utterance: each step runs after the previous one; the stages of a
/// step run side by side (speech-to-text beside acoustic analysis). `Reply` and `Tts`
/// overlap too (speech is synthesised while the reply is written), but are listed apart
/// because their costs add up on one thread.
pub const PIPELINE: &[&[Stage]] = &[
    &[Stage::Decode],
    &[Stage::Asr, Stage::AsrSecond, Stage::Acoustic],
    &[Stage::Understand],
    &[Stage::Reply],
    &[Stage::Tts],
];

pub const ALL: [Stage; 15] = [
    Stage::Reassembly,
    Stage::Decode,
    Stage::AsrWait,
    Stage::Asr,
    Stage::AsrSecond,
    Stage::Acoustic,
    Stage::Understand,
    Stage::ReplyWait,
    Stage::ReplyFirstSentence,
    Stage::Reply,
    Stage::Tts,
    Stage::FirstAudio,
    Stage::SinkAck,
    Stage::EndToEnd,
    Stage::Total,
];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Reassembly => "reassembly",
            Stage::Decode => "decode",
            Stage::AsrWait => "asr_wait",
            Stage::Asr => "asr",
            Stage::AsrSecond => "asr_second",
            Stage::Acoustic => "acoustic",
            Stage::Understand => "understand",
            Stage::ReplyWait => "reply_wait",
            Stage::ReplyFirstSentence => "reply_first_sentence",
            Stage::Reply => "reply",
            Stage::Tts => "tts",
            Stage::FirstAudio => "first_audio",
            Stage::SinkAck => "sink_ack",
            Stage::EndToEnd => "end_to_end",
            Stage::Total => "total",
        }
    }

    pub fn parse(name: &str) -> Option<Stage> {
        ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn kind(self) -> Kind {
        match self {
            Stage::Reassembly => Kind::Untimed,
            Stage::Decode => Kind::Compute(Pool::Workers),
            // Its own threads, but under the same core permits and lane as `Asr`: the
            // capacity both transcriptions share.
            Stage::Asr | Stage::AsrSecond => Kind::Compute(Pool::Asr),
            Stage::Acoustic => Kind::Compute(Pool::Acoustic),
            Stage::Understand => Kind::Compute(Pool::Understanding),
            Stage::Reply | Stage::Tts => Kind::Compute(Pool::Answering),
            Stage::AsrWait | Stage::ReplyWait => Kind::Wait,
            Stage::ReplyFirstSentence
            | Stage::FirstAudio
            | Stage::SinkAck
            | Stage::EndToEnd
            | Stage::Total => Kind::Point,
        }
    }

    /// The pool a compute stage runs on.
    pub fn pool(self) -> Option<Pool> {
        match self.kind() {
            Kind::Compute(p) => Some(p),
            _ => None,
        }
    }

    pub fn is_wait(self) -> bool {
        self.kind() == Kind::Wait
    }
}

impl std::fmt::Display for Stage {
    /// Padded like a string, so tables line up (`{:<30}`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// Model compute on the critical path of one utterance: the sum over [`PIPELINE`]'s steps of
/// each step's longest stage, with `cost` giving a stage's time (0 when it did not run).
pub fn critical_path(cost: impl Fn(Stage) -> f64) -> f64 {
    PIPELINE
        .iter()
        .map(|step| step.iter().map(|s| cost(*s)).fold(0.0, f64::max))
        .sum()
}

impl Pool {
    /// The config key that sizes the pool.
    pub fn key(self) -> &'static str {
        match self {
            Pool::Workers => "engine.workers",
            Pool::Asr => "asr.threads",
            Pool::Acoustic => "(acoustic: 1 thread)",
            Pool::Understanding => "understanding.threads",
            Pool::Answering => "answering.threads",
        }
    }

    /// The knob of the pools that batch (see `pool::Batching`).
    pub fn batch_key(self) -> Option<&'static str> {
        match self {
            Pool::Asr => Some("asr.max_batch"),
            Pool::Understanding => Some("understanding.max_batch"),
            _ => None,
        }
    }

    /// The stage whose batch size (`Meta::batches`) this pool reports.
    pub fn batch_stage(self) -> Option<Stage> {
        match self {
            Pool::Asr => Some(Stage::Asr),
            Pool::Understanding => Some(Stage::Understand),
            _ => None,
        }
    }

    /// Pools whose size is not a knob.
    pub fn fixed_threads(self) -> Option<usize> {
        (self == Pool::Acoustic).then_some(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for s in ALL {
            assert_eq!(Stage::parse(s.name()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
        }
        assert_eq!(Stage::parse("nope"), None);
    }

    #[test]
    fn critical_path_takes_the_longer_side_by_side_stage() {
        let cost = |s: Stage| match s {
            Stage::Decode => 1.0,
            Stage::Asr => 200.0,
            Stage::Acoustic => 300.0,
            Stage::Understand => 10.0,
            Stage::AsrWait => 1000.0, // waits are not on the model path
            _ => 0.0,
        };
        assert_eq!(critical_path(cost), 311.0);
        // A second opinion slower than both halves is the step's time.
        let second = |s: Stage| match s {
            Stage::AsrSecond => 700.0,
            other => cost(other),
        };
        assert_eq!(critical_path(second), 711.0);
    }

    #[test]
    fn the_second_opinion_shares_the_speech_to_text_pool() {
        assert_eq!(Stage::AsrSecond.pool(), Some(Pool::Asr));
        assert_eq!(Stage::parse("asr_second"), Some(Stage::AsrSecond));
    }

    #[test]
    fn every_compute_stage_is_in_the_pipeline() {
        let listed: Vec<Stage> = PIPELINE.iter().flat_map(|s| s.iter().copied()).collect();
        for s in ALL {
            assert_eq!(s.pool().is_some(), listed.contains(&s), "{s}");
        }
    }
}
