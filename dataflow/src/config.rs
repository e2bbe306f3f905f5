//! The job's configuration: one TOML file (`configs/teddyflow.toml`), every key
//! overridable on the command line. Every knob is documented here and in the README.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
pub use teddyflow_connectors::kafka::KafkaSettings;
pub use teddyflow_models::openai::OpenAiSettings;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub engine: Engine,
    pub limits: Limits,
    pub models: Models,
    pub asr: Asr,
    pub understanding: Understanding,
    pub answering: Answering,
    pub speech: Speech,
}

/// Where the engines' weights live: each engine has its own folder under `dir`
/// (`whisper-tiny.en/`, `minilm/`, `smollm2/`, …), installed by `scripts/setup.sh`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Models {
    pub dir: PathBuf,
}

impl Default for Models {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(".assets/models"),
        }
    }
}

/// The reply engine (`answering.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyBackend {
    /// SmolLM2-135M-Instruct on candle, in process (`[answering.local]`).
    Local,
    /// Any OpenAI-compatible chat-completions server: vLLM, llama.cpp's server, Ollama, a
    /// hosted API (`[answering.openai]`); failed turns fall back to the local model.
    Openai,
}

/// The local reply engine: SmolLM2-135M-Instruct, from `<models.dir>/smollm2/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalReply {
    /// Conversations per process whose history the model runs between turns, so the next
    /// reply starts speaking sooner (each holds ~20 MiB of model state at 2 turns of
    /// memory; least recently used dropped; 0 = off).
    pub prepared_conversations: usize,
}

impl Default for LocalReply {
    fn default() -> Self {
        Self {
            prepared_conversations: 8,
        }
    }
}

/// The speech-synthesis engine (`speech.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpeechEngine {
    /// Debian's espeak-ng, run as a process.
    EspeakNg,
}

/// Reply speech: the engine and the format written to the speech topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Speech {
    pub engine: SpeechEngine,
    /// Sample rate of the speech written to the speech topic (the toy's playback rate).
    pub rate: u32,
    /// Audio per speech chunk record, ms.
    pub chunk_ms: u64,
}

impl Default for Speech {
    fn default() -> Self {
        Self {
            engine: SpeechEngine::EspeakNg,
            rate: 16_000,
            chunk_ms: 500,
        }
    }
}

/// Replies: child profiles, conversation memory, the reply model and speech synthesis.
/// Needs `understanding` (every reply is gated by the child-safety verdict).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Answering {
    /// Answer each utterance with a reply and speech; when off, responses stop at understanding.
    pub enabled: bool,
    /// Which engine writes replies; each has its own section (`[answering.local]`,
    /// `[answering.openai]`).
    pub backend: ReplyBackend,
    pub local: LocalReply,
    /// The server the `openai` backend asks, its deadlines, breaker and fallback.
    pub openai: OpenAiSettings,
    /// Threads generating replies (and speaking them) in this process; weights shared.
    /// 0 = what the reply engine asks for with the core budget (one per core, and with
    /// batching one per place in the batch, so that many conversations can be in
    /// generation and join the batch at once).
    pub threads: usize,
    /// Most cores one reply (or one batched step) computes on when cores are idle; 0 =
    /// derived (1: the local forward is single-threaded, a wider step would idle cores).
    pub intra_op_threads: usize,
    /// Local engine: replies generated together in one batch (one forward pass serves the
    /// next token of each, as they join and leave); 1 = one reply at a time, no batch thread.
    pub batch_max_sequences: usize,
    /// Local engine: prompt tokens of joining replies run per batched pass, beside one token
    /// of each reply already speaking (they slow down while a prompt runs, never stop).
    pub batch_prefill_chunk: usize,
    /// Local engine: batches generated side by side, each on a thread of its own (a reply
    /// joins the least busy); 0 = one per 4 cores of the budget (the forward is one
    /// thread, but a fuller batch costs less CPU per reply).
    pub batch_threads: usize,
    /// Sampling temperature; 0 = greedy (deterministic, what the tests use).
    pub temperature: f64,
    /// Nucleus sampling cut-off when temperature > 0 (1 = off).
    pub top_p: f64,
    /// Seed of the sampler (and of the choice among curated bank replies).
    pub seed: u64,
    /// Most tokens generated per reply (the reply stops after three sentences anyway).
    pub max_tokens: usize,
    /// Above 1 discourages repeated words (1 = off).
    pub repeat_penalty: f32,
    /// Earlier turns (child said, teddy replied) kept per conversation and put in the prompt.
    pub memory_turns: usize,
    /// A conversation idle for this long is forgotten.
    pub memory_ttl_ms: u64,
    /// Conversations remembered per worker; the least recently used is forgotten beyond it.
    pub memory_max_conversations: usize,
    /// Reply language for a child without a profile (or a profile without a language).
    pub default_language: String,
    /// How long to wait at start-up for the profiles topic to be read to its end before
    /// answering anyway (profiles still arriving then apply to later utterances).
    pub profiles_load_timeout_ms: u64,
}

impl Default for Answering {
    fn default() -> Self {
        Self {
            enabled: true,
            backend: ReplyBackend::Local,
            local: LocalReply::default(),
            openai: OpenAiSettings::default(),
            threads: 0,
            intra_op_threads: 0,
            batch_max_sequences: 8,
            batch_prefill_chunk: 128,
            batch_threads: 0,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            max_tokens: 60,
            repeat_penalty: 1.1,
            memory_turns: 2,
            memory_ttl_ms: 15 * 60 * 1000,
            memory_max_conversations: 10_000,
            default_language: "en".into(),
            profiles_load_timeout_ms: 10_000,
        }
    }
}

/// Emotion and child safety (acoustic features, MiniLM text emotion, safety verdicts).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Understanding {
    /// Run emotion + safety; when off, responses carry the transcript only.
    pub enabled: bool,
    /// Folder with the labelled examples the classifiers learn from at start-up.
    pub data_dir: PathBuf,
    /// Threads for text emotion + safety in this process; 0 = one per 4 cores.
    pub threads: usize,
    /// Most cores one understanding batch computes on when cores are idle; 0 = derived
    /// (1: it batches across utterances instead).
    pub intra_op_threads: usize,
    /// Replace phone numbers, emails, addresses, schools and full names in transcripts
    /// written to any topic.
    pub redact_pii: bool,
    /// Most transcripts embedded (MiniLM) in one call when they queue up; 1 = never batch.
    pub max_batch: usize,
    /// How long to wait for a batch to fill; 0 = take only what is already queued.
    pub max_wait_ms: u64,
}

impl Default for Understanding {
    fn default() -> Self {
        Self {
            enabled: true,
            data_dir: PathBuf::from("data"),
            threads: 0,
            intra_op_threads: 0,
            redact_pii: true,
            max_batch: 8,
            max_wait_ms: 0,
        }
    }
}

/// Topic names. `partitions` is used only when teddyflow creates a missing topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    pub audio: String,
    pub responses: String,
    pub metrics: String,
    pub deadletter: String,
    pub alerts: String,
    /// Output: reply speech, in the audio wire format.
    pub speech: String,
    /// Input: compacted topic of child profiles (key = child id, JSON value, tombstone = delete).
    pub profiles: String,
    /// Create missing topics at start-up.
    pub create: bool,
    /// Partitions for topics teddyflow creates.
    pub partitions: i32,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            audio: "teddy.audio".into(),
            responses: "teddy.responses".into(),
            metrics: "teddy.metrics".into(),
            deadletter: "teddy.deadletter".into(),
            alerts: "teddy.alerts".into(),
            speech: "teddy.speech".into(),
            profiles: "teddy.profiles".into(),
            create: true,
            partitions: 4,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Engine {
    /// Cores this process may keep busy; 0 = detected (CPU affinity and cgroup quota, the
    /// smaller). Every thread count left at 0 is derived from it (`threads.rs`).
    pub cores: usize,
    /// Threads of candle's own pool (quantized matmuls, large element-wise ops), process
    /// wide; 0 or 1 = off. Above 1 every model job waits for that many idle cores and runs
    /// alone on them (the pool spin-waits for its threads, so they must not be preempted).
    pub candle_threads: usize,
    /// Timely worker threads in this process; 0 = one per 8 cores.
    pub workers: usize,
    /// Width of one timestamp (epoch) in ms: input read in the same epoch is committed together.
    pub epoch_ms: u64,
    /// Records read per source activation before yielding to other operators.
    pub poll_batch: usize,
    /// How often committable offsets are sent to the broker.
    pub commit_interval_ms: u64,
    /// On SIGTERM/Ctrl-C, how long to wait for in-flight work before exiting
    /// (what is not finished by then is re-read on restart).
    pub drain_timeout_ms: u64,
    /// How often each worker writes a metrics snapshot.
    pub metrics_interval_ms: u64,
    /// Utterances assembled but not yet through their last model stage, per process, before
    /// sources pause reading (bounds every stage's queue under a burst).
    pub max_pending_utterances: usize,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`host:port`, port 0 for any
    /// free one; empty: no HTTP server). One per process.
    pub http_addr: String,
    /// `/healthz` fails when a worker has not stepped for this long.
    pub health_stall_ms: u64,
}

impl Default for Engine {
    fn default() -> Self {
        Self {
            cores: 0,
            candle_threads: 0,
            workers: 0,
            epoch_ms: 100,
            poll_batch: 256,
            commit_interval_ms: 1000,
            drain_timeout_ms: 20_000,
            metrics_interval_ms: 5000,
            max_pending_utterances: 16,
            http_addr: "127.0.0.1:9464".into(),
            health_stall_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted chunk (record value).
    pub max_chunk_bytes: usize,
    /// Most chunks in one utterance.
    pub max_chunks_per_utterance: u32,
    /// Most bytes in one utterance, all chunks together.
    pub max_utterance_bytes: usize,
    /// Longest accepted utterance, decoded.
    pub max_utterance_ms: u64,
    /// An utterance with no new chunk for this long is closed without its final chunk.
    pub utterance_idle_timeout_ms: u64,
    /// Completed utterance ids remembered per worker, so late duplicates are dropped.
    pub remember_completed: usize,
    /// Bytes held by partly received utterances per worker (chunk bytes plus a small fixed
    /// cost per chunk and utterance). A chunk that would go over it dead-letters the oldest
    /// partial utterances first, so a flood of first chunks cannot exhaust memory.
    pub max_pending_bytes: usize,
    /// Largest dead-letter record (key + value + headers). A bigger one is cut to fit, with
    /// headers `truncated=1` and `original_bytes=N`: librdkafka refuses records over its
    /// `message.max.bytes` (1,000,000 by default), and a refused dead letter must not block
    /// the records behind it. Keep it below `message.max.bytes` if that is lowered.
    pub max_deadletter_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_chunk_bytes: 256 * 1024,
            max_chunks_per_utterance: 1024,
            max_utterance_bytes: 8 * 1024 * 1024,
            max_utterance_ms: 30_000,
            utterance_idle_timeout_ms: 10_000,
            remember_completed: 10_000,
            max_pending_bytes: 64 * 1024 * 1024,
            max_deadletter_bytes: 900 * 1024,
        }
    }
}

/// The speech-to-text engine (`asr.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AsrEngine {
    /// Whisper on candle (`[asr.whisper]`).
    Whisper,
    /// Moonshine base on candle, English only (`[asr.moonshine]`).
    Moonshine,
}

/// Moonshine base, from `<models.dir>/moonshine-base/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MoonshineSettings {
    /// Silence put before the audio, ms: without it Moonshine ends many utterances whose
    /// speech starts at the first sample with no text at all (docs/performance.md).
    pub lead_silence_ms: u32,
    /// An utterance that opens with a pause (at least 150 ms of 10 ms frames 20 dB under its
    /// speech level) gets only what tops the pause up to `lead_silence_ms`; one that starts
    /// with speech gets all of it (`moonshine::lead_in`). `false`: all of it, always.
    pub lead_top_up: bool,
    /// Hypotheses kept at each decoding step: 1 decodes greedily; more runs a beam search
    /// whose best ending is the transcript and whose other endings the safety check screens
    /// too (a line misheard one way is often heard right by another ending).
    pub beam: usize,
    /// How far (natural-log probability) a hypothesis may trail the step's best and stay in
    /// the beam: on clear speech the beam narrows to the one likely reading and costs less.
    pub beam_margin: f32,
    /// The lead-in of the second Moonshine when `asr.second_opinion = "moonshine:base"`:
    /// Moonshine's words on a clip move with its lead-in, so another lead-in is another
    /// hearing (docs/performance.md).
    pub second_opinion_lead_ms: u32,
}

impl Default for MoonshineSettings {
    fn default() -> Self {
        Self {
            lead_silence_ms: 500,
            lead_top_up: true,
            beam: 4,
            beam_margin: 4.0,
            second_opinion_lead_ms: 250,
        }
    }
}

/// Whisper, from `<models.dir>/whisper-<model>/` and `<models.dir>/mel_filters.npz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WhisperSettings {
    /// `tiny.en` or `base` (multilingual).
    pub model: String,
    /// Encoder window: audio is padded with silence to at least this long. 30000 is
    /// openai's behaviour and the most accurate on short child phrases; 15000 halves the
    /// encoder cost (see docs/performance.md for measured WER/RTF).
    pub min_window_ms: u64,
    /// Silence appended after the audio before the encoder.
    pub tail_pad_ms: u64,
}

impl Default for WhisperSettings {
    fn default() -> Self {
        Self {
            model: "tiny.en".into(),
            min_window_ms: 30_000,
            tail_pad_ms: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Asr {
    /// The engine that hears English-speaking children (the child's profile language, or
    /// `answering.default_language` for a child without one); each engine has its own
    /// section (`[asr.moonshine]`, `[asr.whisper]`).
    pub engine: AsrEngine,
    pub moonshine: MoonshineSettings,
    pub whisper: WhisperSettings,
    /// Whisper model that hears children whose language is not English, in their language
    /// and with an English translation from the same encoder output (what understanding
    /// judges): `"base"` (multilingual), or `""` to hear every child with `engine`.
    pub other_languages: String,
    /// A second English engine, `"<engine>:<model>"` (e.g. `"whisper:tiny.en"`), that hears
    /// every English utterance beside `engine` for the safety check only: both transcripts
    /// are judged and the more severe verdict wins (engines mishear differently); the reply
    /// still answers `engine`'s transcript. `""` = off (see docs/performance.md for its cost).
    pub second_opinion: String,
    /// A transcript whose confidence (0–1, see docs/wire-format.md) is below this gets a
    /// gentle "say that again?" instead of an answer, unless it is unsafe or distressed.
    pub clarify_below: f32,
    /// Threads running speech-to-text in this process (one copy of the weights is shared);
    /// 0 = one per core.
    pub threads: usize,
    /// Most cores one transcription computes on when cores are idle; 0 = derived
    /// (min(cores, 4)).
    pub intra_op_threads: usize,
    /// Most utterances transcribed in one call when they queue up (dynamic batching: their
    /// greedy decodes step together, one pass over the decoder weights per step for all).
    /// Texts are the same as one by one. 1 = never batch, the default: with short
    /// utterances on a small CPU the encoder dominates and batching measured no faster,
    /// while each batched clip holds ~18 MiB (docs/performance.md).
    pub max_batch: usize,
    /// How long a thread holding fewer than `max_batch` utterances waits for more; 0 = take
    /// only what is already queued, so a lone utterance never waits.
    pub max_wait_ms: u64,
}

impl Default for Asr {
    fn default() -> Self {
        Self {
            engine: AsrEngine::Moonshine,
            moonshine: MoonshineSettings::default(),
            whisper: WhisperSettings::default(),
            other_languages: "base".into(),
            second_opinion: String::new(),
            clarify_below: 0.5,
            threads: 0,
            intra_op_threads: 0,
            max_batch: 1,
            max_wait_ms: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid override `{0}`: expected key.path=value")]
    Override(String),
}

impl Config {
    /// Load `path` (if given), apply `key.path=value` overrides, and validate.
    pub fn load(path: Option<&std::path::Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.into(),
                source,
            })?,
            None => String::new(),
        };
        let mut value: toml::Table =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let config: Config = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Parse(m.into()));
        if self.engine.epoch_ms == 0 {
            return bad("engine.epoch_ms must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.asr.clarify_below) {
            return bad("asr.clarify_below must be between 0 and 1");
        }
        // NaN would drop every hypothesis; a negative margin, all but the best.
        if self.asr.moonshine.beam_margin.is_nan() || self.asr.moonshine.beam_margin < 0.0 {
            return bad("asr.moonshine.beam_margin must be 0 or more (inf: no pruning)");
        }
        if self.asr.max_batch == 0 || self.understanding.max_batch == 0 {
            return bad("asr.max_batch and understanding.max_batch must be at least 1");
        }
        if self.answering.enabled && !self.understanding.enabled {
            return bad("answering needs understanding (replies are gated by the safety verdict)");
        }
        if self.speech.chunk_ms == 0 {
            return bad("speech.chunk_ms must be at least 1");
        }
        let o = &self.answering.openai;
        if o.timeout_ms == 0 || o.reply_timeout_ms < o.timeout_ms || o.max_concurrency == 0 {
            return bad("answering.openai: timeout_ms and max_concurrency must be at least 1, reply_timeout_ms at least timeout_ms");
        }
        if !(8_000..=48_000).contains(&self.speech.rate) {
            return bad("speech.rate must be between 8000 and 48000");
        }
        if self.engine.max_pending_utterances == 0 {
            return bad("engine.max_pending_utterances must be at least 1");
        }
        if self.limits.max_pending_bytes < self.limits.max_chunk_bytes {
            return bad("limits.max_pending_bytes must be at least limits.max_chunk_bytes");
        }
        if self.limits.max_deadletter_bytes < 4096 {
            return bad("limits.max_deadletter_bytes must be at least 4096");
        }
        Ok(())
    }
}

/// `a.b.c=value`: value is parsed as TOML (numbers, booleans) and falls back to a string.
fn apply_override(root: &mut toml::Table, text: &str) -> Result<(), ConfigError> {
    let (path, raw) = text
        .split_once('=')
        .ok_or_else(|| ConfigError::Override(text.into()))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(ConfigError::Override(text.into()));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut table = root;
    for key in &keys[..keys.len() - 1] {
        let entry = table
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::Override(text.into()))?;
    }
    table.insert(keys[keys.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_without_a_file() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c.topics.audio, "teddy.audio");
        // Thread counts are derived from the core budget unless set.
        assert_eq!((c.engine.workers, c.engine.cores, c.asr.threads), (0, 0, 0));
    }

    #[test]
    fn overrides_reach_every_key_with_types() {
        let c = Config::load(
            None,
            &[
                "kafka.brokers=10.0.0.1:9092".into(),
                "engine.workers=3".into(),
                "topics.create=false".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "10.0.0.1:9092");
        assert_eq!(c.engine.workers, 3);
        assert!(!c.topics.create);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Config::load(None, &["engine.wokers=3".into()]).is_err());
        assert!(Config::load(None, &["engine.epoch_ms=0".into()]).is_err());
        assert!(Config::load(None, &["noequals".into()]).is_err());
        assert!(Config::load(None, &["asr.moonshine.beam_margin=-1.0".into()]).is_err());
        assert!(Config::load(None, &["asr.moonshine.beam_margin=nan".into()]).is_err());
        let open = Config::load(None, &["asr.moonshine.beam_margin=inf".into()]).unwrap();
        assert_eq!(open.asr.moonshine.beam_margin, f32::INFINITY);
    }

    #[test]
    fn the_openai_backend_is_configured_by_its_section() {
        let c = Config::load(
            None,
            &[
                "answering.backend=openai".into(),
                "answering.openai.base_url=http://10.0.0.2:8000/v1".into(),
                "answering.openai.fallback=bank".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.answering.backend, ReplyBackend::Openai);
        assert_eq!(c.answering.openai.base_url, "http://10.0.0.2:8000/v1");
        assert_eq!(
            c.answering.openai.fallback,
            teddyflow_models::openai::Fallback::Bank
        );
        assert!(Config::load(None, &["answering.openai.api_key=sk-1".into()]).is_err());
        assert!(Config::load(None, &["answering.openai.max_concurrency=0".into()]).is_err());
    }

    #[test]
    fn the_shipped_config_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/teddyflow.toml");
        Config::load(Some(&path), &[]).unwrap();
    }
}
