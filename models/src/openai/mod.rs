//! Replies from any OpenAI-compatible chat-completions server: vLLM, llama.cpp's server,
//! Ollama, or a hosted API (`answering.backend = "openai"`, `[answering.openai]`).
//!
//! ```text
//! prompt ─► chat messages (the persona of llm::prompt) ─► POST {base_url}/chat/completions
//!   stream: true ─► server-sent events ─► text ─► SentenceStream ─► on_sentence, one by one
//!
//! breaker open, no free slot, no connection, timeout, HTTP error, broken stream, refusal
//!   nothing spoken yet ─► the local engine (if loaded), else nothing: the curated bank answers
//!   something spoken   ─► a curated closing line; nothing is said twice
//! ```
//!
//! The reply threads that call this are plain pool threads, not timely workers, so the
//! client is blocking (`ureq`), and each request is read on its own short-lived thread
//! ([`stream`]) so that deadlines hold even when a server stops mid-reply.

pub mod breaker;
pub mod chat;
pub mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::{Deserialize, Serialize};

use crate::llm::text::SentenceStream;
use crate::llm::{Generated, Prompt, Query, Sampling};
use crate::reply::{FallbackReason, Provenance, ReplyEngine};
use crate::reply_bank;
use breaker::{Attempt, Breaker, Change, Permits};
use chat::ReplyText;
use stream::{Failure, Finish, Piece};

/// `[answering.openai]`: where the server is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiSettings {
    /// The API root, up to and including `/v1` (requests go to `{base_url}/chat/completions`).
    pub base_url: String,
    /// The model name the server knows (llama.cpp's server takes any name).
    pub model: String,
    /// Environment variable holding the API key, sent as `Authorization: Bearer`. The key
    /// itself is never in the config or the logs. "" or an unset variable: no key.
    pub api_key_env: String,
    /// Longest wait for the reply's first text, and between later pieces of it; past it,
    /// the server has failed and the reply falls back.
    pub timeout_ms: u64,
    /// Longest a whole reply may take.
    pub reply_timeout_ms: u64,
    /// Requests in flight at once, per process (beyond it, replies wait up to `timeout_ms`).
    pub max_concurrency: usize,
    /// Failed requests in a row that open the circuit breaker: no requests then, replies
    /// fall back at once.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe request tests the server again.
    pub breaker_cooldown_ms: u64,
    /// Who answers when the server does not: the local model, or the curated bank only.
    pub fallback: Fallback,
    /// Languages the server's model answers in (codes, `*` for any); others get the bank.
    pub languages: Vec<String>,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080/v1".into(),
            model: "SmolLM2-135M-Instruct".into(),
            api_key_env: "TEDDYFLOW_LLM_API_KEY".into(),
            timeout_ms: 2_000,
            reply_timeout_ms: 15_000,
            max_concurrency: 4,
            breaker_failures: 3,
            breaker_cooldown_ms: 10_000,
            fallback: Fallback::Local,
            languages: vec!["en".into()],
        }
    }
}

/// The fallback for a server that does not answer (`answering.openai.fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// The local SmolLM2 model, loaded beside the client (~150 MiB).
    Local,
    /// The curated reply bank only: nothing is loaded.
    Bank,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    #[error("answering.openai.base_url must start with http:// or https://, got {0:?}")]
    BaseUrl(String),
}

/// The API key, kept out of every `Debug` print.
#[derive(Clone)]
struct ApiKey(String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(…)")
    }
}

/// The `openai` reply engine. One per process, shared by every reply thread.
pub struct OpenAiEngine {
    settings: OpenAiSettings,
    url: String,
    key: Option<ApiKey>,
    agent: ureq::Agent,
    permits: Arc<Permits>,
    breaker: Breaker,
    fallback: Option<Arc<dyn ReplyEngine>>,
}

impl OpenAiEngine {
    /// The client for `settings`, handing failed turns to `fallback` (the local engine) if
    /// given. Sends nothing yet: a server that is down at start-up is found by the breaker.
    pub fn new(
        settings: OpenAiSettings,
        fallback: Option<Arc<dyn ReplyEngine>>,
    ) -> Result<OpenAiEngine, OpenAiError> {
        let base = settings.base_url.trim().trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(OpenAiError::BaseUrl(settings.base_url.clone()));
        }
        let url = format!("{base}/chat/completions");
        let key = api_key(&settings.api_key_env);
        let timeout = Duration::from_millis(settings.timeout_ms);
        let whole = Duration::from_millis(settings.reply_timeout_ms);
        // Backstops for the reader threads; the reply thread keeps its own deadlines.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_per_read(Some(timeout))
            .timeout_global(Some(whole + timeout))
            .build()
            .into();
        tracing::info!(
            model = %settings.model,
            key = key.is_some(),
            fallback = ?settings.fallback,
            "reply engine: an OpenAI-compatible server"
        );
        Ok(OpenAiEngine {
            permits: Permits::new(settings.max_concurrency),
            breaker: Breaker::new(
                settings.breaker_failures,
                Duration::from_millis(settings.breaker_cooldown_ms),
            ),
            settings,
            url,
            key,
            agent,
            fallback,
        })
    }

    /// Ask the server; the sentences it wrote have been handed to `on_sentence`.
    fn ask(
        &self,
        prompt: &Prompt,
        sampling: &Sampling,
        started: Instant,
        on_sentence: &mut dyn FnMut(&str),
    ) -> Asked {
        let mut asked = Asked::default();
        let Some(attempt) = self.breaker.admit() else {
            asked.failure = Some(Failure::new(FallbackReason::BreakerOpen, "breaker open"));
            return asked;
        };
        let first_deadline = started + Duration::from_millis(self.settings.timeout_ms);
        let Some(permit) = self.permits.acquire(first_deadline) else {
            self.breaker.unused(attempt);
            let detail = "every request slot busy";
            asked.failure = Some(Failure::new(FallbackReason::Busy, detail));
            return asked;
        };
        let request = chat::request(&self.settings.model, prompt, sampling);
        let body = serde_json::to_string(&request).expect("a chat request serializes");
        let pieces = stream::open(stream::Request {
            agent: self.agent.clone(),
            url: self.url.clone(),
            bearer: self.key.as_ref().map(|k| format!("Bearer {}", k.0)),
            body,
            permit,
        });
        asked.sent = true;
        asked.failure = self
            .read(&pieces, prompt, started, &mut asked, on_sentence)
            .err();
        if asked.failure.is_none() && asked.sentences.is_empty() {
            let detail = "no speakable sentence";
            asked.failure = Some(Failure::new(FallbackReason::Refused, detail));
        }
        self.record(attempt, &mut asked);
        asked
    }

    /// Read the stream until the reply is complete, enough sentences were spoken, or a
    /// deadline passed.
    fn read(
        &self,
        pieces: &Receiver<Piece>,
        prompt: &Prompt,
        started: Instant,
        asked: &mut Asked,
        on_sentence: &mut dyn FnMut(&str),
    ) -> Result<(), Failure> {
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        let whole = started + Duration::from_millis(self.settings.reply_timeout_ms);
        let mut text = ReplyText::new(prompt);
        let mut sentences = SentenceStream::new().with_child_name(prompt.child_name.as_deref());
        let mut deadline = started + timeout;
        loop {
            let piece = match pieces.recv_deadline(deadline.min(whole)) {
                Ok(p) => p,
                Err(RecvTimeoutError::Timeout) => {
                    let what = if text.has_content() {
                        "stream stalled"
                    } else {
                        "no first token"
                    };
                    return Err(Failure::new(FallbackReason::Timeout, what));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Failure::new(FallbackReason::BrokenStream, "reader gone"));
                }
            };
            let finished = match piece {
                Piece::Text(t) => {
                    if !text.has_content() {
                        asked.first_text_ms = ms_since(started);
                    }
                    text.push(&t);
                    asked.pieces += 1;
                    deadline = Instant::now() + timeout;
                    None
                }
                Piece::End(Finish::Stop) => Some(true),
                // The unfinished last sentence is dropped, as the local engine drops it.
                Piece::End(Finish::Length) => Some(false),
                Piece::End(Finish::ContentFilter) | Piece::Refusal => {
                    return Err(Failure::new(FallbackReason::Refused, "refused"));
                }
                Piece::Failed(f) => return Err(f),
            };
            let ended = finished == Some(true);
            if let Some(raw) = text.raw(ended) {
                let new = match ended {
                    true => sentences.finish(&raw),
                    false => sentences.push(&raw),
                };
                for s in new {
                    asked.say(s, started, on_sentence);
                }
            }
            // Enough sentences: dropping the channel closes the connection, and the
            // server stops generating.
            if finished.is_some() || sentences.done() {
                return Ok(());
            }
        }
    }

    /// Tell the breaker; log what an operator needs (never content).
    fn record(&self, attempt: Attempt, asked: &mut Asked) {
        let failed = asked.failure.as_ref().filter(|f| server_failed(f.reason));
        let change = match failed {
            Some(f) => {
                asked.failed = true;
                tracing::warn!(reason = ?f.reason, detail = %f.detail, "LLM server request failed");
                self.breaker.failed(attempt)
            }
            None => self.breaker.succeeded(attempt),
        };
        match change {
            Change::Opened => {
                asked.opened = true;
                tracing::warn!(
                    failures = self.settings.breaker_failures,
                    cooldown_ms = self.settings.breaker_cooldown_ms,
                    "LLM server failing: circuit breaker open, replies fall back"
                );
            }
            Change::Closed => tracing::info!("LLM server answering again: circuit breaker closed"),
            Change::None => {}
        }
    }

    /// Nothing was spoken: the local engine writes the reply, or nobody does (the answering
    /// stage then speaks the curated bank reply).
    fn fall_back(&self, query: Query<'_>, on_sentence: &mut dyn FnMut(&str)) -> Option<Generated> {
        let local = self
            .fallback
            .as_ref()
            .filter(|e| e.serves(&query.prompt.language))?;
        match local.generate(query, on_sentence) {
            Ok(mut g) => {
                g.provenance.engine = Some(local.name());
                Some(g)
            }
            Err(e) => {
                tracing::warn!(error = %e, "fallback reply engine failed too; the bank answers");
                None
            }
        }
    }
}

/// Failures that say the server is unwell (a refusal or a busy client says nothing of it).
fn server_failed(reason: FallbackReason) -> bool {
    !matches!(
        reason,
        FallbackReason::Refused | FallbackReason::Busy | FallbackReason::BreakerOpen
    )
}

fn api_key(var: &str) -> Option<ApiKey> {
    if var.is_empty() {
        return None;
    }
    match std::env::var(var) {
        Ok(k) if !k.trim().is_empty() => Some(ApiKey(k.trim().to_string())),
        _ => {
            tracing::info!(
                variable = var,
                "no API key in the environment: requests go without one"
            );
            None
        }
    }
}

/// What one request to the server gave.
#[derive(Debug, Default)]
struct Asked {
    /// A request went out (not refused by the breaker or for want of a slot).
    sent: bool,
    /// It failed in a way that counts against the server.
    failed: bool,
    /// Its failure opened the breaker.
    opened: bool,
    sentences: Vec<String>,
    pieces: usize,
    first_text_ms: f64,
    first_sentence_ms: Option<f64>,
    failure: Option<Failure>,
}

impl Asked {
    fn say(&mut self, sentence: String, started: Instant, on_sentence: &mut dyn FnMut(&str)) {
        self.first_sentence_ms
            .get_or_insert_with(|| ms_since(started));
        on_sentence(&sentence);
        self.sentences.push(sentence);
    }
}

impl ReplyEngine for OpenAiEngine {
    fn name(&self) -> &'static str {
        "openai"
    }

    /// One caller per request the server may have in flight (`max_concurrency`): each
    /// waits for its reply's sentences and speaks them.
    fn threads_wanted(&self, _cores: usize) -> usize {
        self.settings.max_concurrency
    }

    /// The server computes. A turn handed to the local fallback runs on the caller outside
    /// the core permits: it is rare, and brief overcommit beats holding cores while waiting.
    fn computes_on_caller(&self) -> bool {
        false
    }

    /// Conversations are not prepared for the fallback: it answers rarely, and running
    /// histories between turns would spend the CPU the server was meant to save. What it
    /// kept of a conversation while answering is dropped with it.
    fn forget(&self, sessions: &[String]) {
        if let Some(local) = &self.fallback {
            local.forget(sessions);
        }
    }

    fn serves(&self, language: &str) -> bool {
        let wanted = reply_bank::base_language(language);
        self.settings
            .languages
            .iter()
            .any(|l| l == "*" || reply_bank::base_language(l) == wanted)
    }

    fn generate(
        &self,
        query: Query<'_>,
        on_sentence: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Generated> {
        let started = Instant::now();
        let mut asked = self.ask(query.prompt, query.sampling, started, on_sentence);
        let mut provenance = Provenance {
            requests: u32::from(asked.sent),
            failures: u32::from(asked.failed),
            breaker_opened: asked.opened,
            fallback: asked.failure.as_ref().map(|f| f.reason),
            ..Provenance::default()
        };
        let spoke = !asked.sentences.is_empty();
        let mut generated = match &asked.failure {
            Some(_) if !spoke => {
                let waited = ms_since(started);
                self.fall_back(query, on_sentence).map(|g| Generated {
                    first_sentence_ms: g.first_sentence_ms + waited,
                    total_ms: g.total_ms + waited,
                    ..g
                })
            }
            Some(_) => {
                // Part of the reply was heard: end it kindly, never start it again.
                asked.say(
                    reply_bank::closing_line(&query.prompt.language),
                    started,
                    on_sentence,
                );
                None
            }
            None => None,
        };
        if let Some(g) = &mut generated {
            provenance.engine = g.provenance.engine;
        }
        provenance.breaker = Some(self.breaker.state());
        let total_ms = ms_since(started);
        let g = generated.unwrap_or_else(|| Generated {
            text: asked.sentences.join(" "),
            tokens: asked.pieces,
            prefill_ms: asked.first_text_ms,
            first_sentence_ms: asked.first_sentence_ms.unwrap_or(total_ms),
            total_ms,
            sentences: asked.sentences,
            ..Generated::default()
        });
        Ok(Generated { provenance, ..g })
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nobody listens on: connections are refused, as from a server that died.
    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn mia() -> Prompt {
        Prompt {
            child_name: Some("Mia".into()),
            language: "en".into(),
            utterance: "I built a tower".into(),
            ..Prompt::default()
        }
    }

    #[test]
    fn a_dead_server_fails_fast_then_the_breaker_stops_asking() {
        let settings = OpenAiSettings {
            base_url: format!("http://127.0.0.1:{}/v1", dead_port()),
            breaker_failures: 2,
            breaker_cooldown_ms: 60_000,
            ..OpenAiSettings::default()
        };
        let engine = OpenAiEngine::new(settings, None).unwrap();
        let mut spoken = Vec::new();
        let mut ask = || {
            let g = engine
                .generate(
                    Query {
                        session: None,
                        prompt: &mia(),
                        sampling: &Sampling::default(),
                    },
                    &mut |s| spoken.push(s.to_string()),
                )
                .unwrap();
            assert!(g.text.is_empty() && g.sentences.is_empty(), "{g:?}");
            assert!(g.total_ms < 1_500.0, "refused at once, no timeout: {g:?}");
            g.provenance
        };
        let p = ask();
        assert_eq!(p.fallback, Some(FallbackReason::Unreachable));
        assert_eq!((p.requests, p.failures, p.breaker_opened), (1, 1, false));
        assert_eq!(p.engine, None, "no fallback engine: the bank answers");
        let p = ask();
        assert_eq!((p.requests, p.failures, p.breaker_opened), (1, 1, true));
        assert_eq!(p.breaker, Some(crate::reply::BreakerState::Open));
        let p = ask();
        assert_eq!(p.fallback, Some(FallbackReason::BreakerOpen));
        assert_eq!((p.requests, p.failures), (0, 0), "no request while open");
        assert!(spoken.is_empty());
    }

    #[test]
    fn settings_are_checked_and_the_key_stays_out_of_prints() {
        let bad = OpenAiSettings {
            base_url: "127.0.0.1:8080".into(),
            ..OpenAiSettings::default()
        };
        assert!(OpenAiEngine::new(bad, None).is_err());
        assert_eq!(format!("{:?}", ApiKey("sk-secret".into())), "ApiKey(…)");
        let engine = OpenAiEngine::new(OpenAiSettings::default(), None).unwrap();
        assert!(engine.serves("en-GB") && !engine.serves("fr"));
    }
}
