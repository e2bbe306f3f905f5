//! The reply to one understood utterance, spoken sentence by sentence.
//!
//! ```text
//! unsafe utterance         ─► curated redirect (child's language) ─┐
//! no words heard           ─► nothing (no reply, no speech)         │
//! heard unclearly (safe)   ─► curated "say that again?"             │
//! language the engine lacks ─► curated bank reply                  ├─► speech ─► speech chunks
//! otherwise ─► reply engine, each sentence judged by the policy as it ends ┘  (emitted at once)
//! ```
//!
//! Safety comes before doubt: an utterance judged unsafe is redirected (or comforted) however
//! unsure the engine was of its words, and a distressed child is answered, never asked to
//! repeat. Only a safe utterance below `asr.clarify_below` is met with "say that again?".
//!
//! A generated sentence that breaks the reply policy (`docs/reply-policy.md`, judged with the
//! utterance and recent turns as context; it includes the safety model's lexical signals) is
//! never spoken: it and the rest of the reply are replaced by the policy's safe line (or a
//! gentle redirect), and the reply is marked `fallback`. The policy is applied here, not in
//! an engine, so every backend's sentences are judged the same way. The work runs on a
//! streaming [`StagePool`]: speech chunks leave while the engine is still generating.

use std::sync::Arc;
use std::time::Instant;

use teddyflow_connectors::wire::{ChunkHeaders, Codec};
use teddyflow_models::audio;
use teddyflow_models::llm::{Prompt, Query, Sampling};
use teddyflow_models::policy::ReplyPolicy;
use teddyflow_models::reply::{Provenance, ReplyEngine};
use teddyflow_models::reply_bank::{self, ReplyKind};
use teddyflow_models::reply_quality::FreshStart;
use teddyflow_models::safety::Verdict;
use teddyflow_models::tts::{self, SpeechStyle, Synthesizer};

use super::memory::Turn;
use crate::config::Config;
use crate::envelope::{now_ms, Envelope, Meta};
use crate::operators::stable_hash;
use crate::outputs::{Origin, Out, Output, ReplyInfo, SpeechChunk};
use crate::pool::StagePool;
use crate::stage::Stage;
use crate::stages::profiles::Profile;
use crate::stages::understand::Understood;

/// An understood utterance with what is known about the child and the conversation.
#[derive(Debug, Clone)]
pub struct ReplyJob {
    /// With the child's profile in `meta.profile` (`None`: the defaults in `[answering]`).
    pub understood: Envelope<Understood>,
    pub history: Vec<Turn>,
    /// When the job was handed to the pool: the wait for a reply thread is `reply_wait`.
    pub queued_at: Instant,
}

#[derive(Debug, Clone)]
pub struct Replied {
    pub understood: Envelope<Understood>,
    pub reply: ReplyInfo,
    pub profile_known: bool,
    /// What the conversation's next turn will be told about the child, if the engine would
    /// answer it (its history is added by the worker that remembers the conversation).
    pub next_turn: Option<Prompt>,
    /// Who wrote the reply and what it cost a server (requests, failures, breaker): counted
    /// in the metrics.
    pub provenance: Provenance,
}

/// What the reply stage emits: speech as it is ready, then the reply.
#[derive(Debug, Clone)]
pub enum ReplyEvent {
    /// A speech chunk, as the output it is written as.
    Speech(Output),
    Done(Box<Replied>),
}

pub type ReplyPool = StagePool<ReplyJob, ReplyEvent>;

/// Everything a reply thread needs; the engines are shared by every thread.
pub struct Answerer {
    engine: Arc<dyn ReplyEngine>,
    /// Judges every generated sentence (it holds the safety model).
    policy: ReplyPolicy,
    speech: Arc<dyn Synthesizer>,
    sampling: Sampling,
    seed: u64,
    default_language: String,
    clarify_below: f32,
    speech_rate: u32,
    chunk_samples: usize,
}

impl Answerer {
    pub fn new(
        config: &Config,
        engine: Arc<dyn ReplyEngine>,
        policy: ReplyPolicy,
        speech: Arc<dyn Synthesizer>,
    ) -> Answerer {
        let (a, s) = (&config.answering, &config.speech);
        Answerer {
            engine,
            policy,
            speech,
            sampling: Sampling {
                temperature: a.temperature,
                top_p: (a.top_p < 1.0).then_some(a.top_p),
                seed: a.seed,
                max_tokens: a.max_tokens,
                repeat_penalty: a.repeat_penalty,
            },
            seed: a.seed,
            default_language: a.default_language.clone(),
            clarify_below: config.asr.clarify_below,
            speech_rate: s.rate,
            chunk_samples: (s.rate as u64 * s.chunk_ms / 1000).max(1) as usize,
        }
    }

    pub fn answer(&self, job: ReplyJob, emit: &mut dyn FnMut(ReplyEvent)) -> Replied {
        let started = Instant::now();
        let waited = started.duration_since(job.queued_at).as_secs_f64() * 1e3;
        let u = &job.understood.body;
        let profile = job.understood.meta.profile.clone().unwrap_or_default();
        let language = profile
            .language
            .clone()
            .unwrap_or_else(|| self.default_language.clone());
        let name = profile.name.as_deref();
        let (verdict, emotion) = (u.safety.verdict, u.emotion.label);
        let voice = self.speech.voice_for(&language, profile.voice.as_deref());
        let style = tts::style_for(Some(emotion), Some(verdict));
        let meta = &job.understood.meta;
        let mut speaker = Speaker::new(self, meta, &voice, style);
        let seed = self.seed ^ stable_hash(&meta.utterance);
        let first_turn = job.history.is_empty();
        // The curated reply for this turn: spoken when the engine is not used or says nothing.
        let kind = reply_bank::kind_for(
            Some(emotion),
            Some(verdict),
            &u.safety.categories,
            first_turn,
        );
        let curated = reply_bank::bank_reply(&language, kind, name, seed)
            .unwrap_or_else(|| reply_bank::fallback_reply(&language, name, seed));
        let transcript = &u.heard.transcript;
        let said = if verdict == Verdict::Unsafe {
            // Comfort when the child is distressed, whatever else was said (issue 11).
            let context = self.policy.context(&u.heard.transcript, &job.history);
            let text = self
                .policy
                .reply_to_unsafe(&context, kind, &language, name, seed);
            speaker.say(&text, emit);
            Said::curated(text, Origin::Redirect)
        } else if u.heard.is_silent() {
            // Nothing was said that could be answered: no made-up reply, no speech.
            Said::curated(String::new(), Origin::Silence)
        } else if self.unclear(u, kind) {
            let text = reply_bank::bank_reply(&language, ReplyKind::Clarify, name, seed)
                .or_else(|| reply_bank::bank_reply("en", ReplyKind::Clarify, name, seed))
                .expect("the English bank has clarify replies");
            speaker.say(&text, emit);
            Said::curated(text, Origin::Clarify)
        } else if !self.engine.serves(&language) || !has_words(transcript) {
            speaker.say(&curated, emit);
            Said::curated(curated, Origin::Bank)
        } else {
            let prompt = Prompt {
                emotion: Some(emotion),
                verdict: Some(verdict),
                history: job.history.clone(),
                // Redacted: the engine never sees a phone number it could repeat.
                utterance: transcript.clone(),
                ..about_child(&profile, &language)
            };
            let redirect = reply_bank::fallback_reply(&language, name, seed);
            self.engine_reply(&prompt, curated, redirect, &mut speaker, emit)
        };
        if said.origin != Origin::Silence {
            speaker.finish(emit);
        }
        let (chunks, samples, errors, tts_ms) =
            (speaker.seq, speaker.samples, speaker.errors, speaker.tts_ms);
        let history_turns = job.history.len();
        let profile_known = job.understood.meta.profile.is_some();
        let next_turn = self
            .engine
            .serves(&language)
            .then(|| about_child(&profile, &language));
        let mut understood = job.understood;
        let meta = &mut understood.meta;
        meta.time(Stage::ReplyWait, waited);
        if let Some(ms) = said.first_sentence_ms {
            meta.time(Stage::ReplyFirstSentence, ms);
        }
        meta.time(Stage::Reply, ms_since(started) - tts_ms);
        meta.time(Stage::Tts, tts_ms);
        let backend = self.backend(&said).to_string();
        Replied {
            reply: ReplyInfo {
                text: said.text,
                language,
                voice,
                fallback: said.fallback.is_some(),
                fallback_categories: said.fallback.unwrap_or_default(),
                origin: said.origin,
                backend,
                backend_fallback: said.provenance.fallback.is_some(),
                backend_fallback_reason: said.provenance.fallback,
                history_turns,
                reused_tokens: said.reused_tokens,
                speech_chunks: chunks,
                speech_ms: samples as u64 * 1000 / self.speech_rate as u64,
                tts_errors: errors,
            },
            understood,
            profile_known,
            next_turn,
            provenance: said.provenance,
        }
    }

    /// What `reply.backend` says: the engine that wrote the generated sentences (the
    /// configured one, or the one it handed the turn to), `bank` when none did.
    fn backend(&self, said: &Said) -> &'static str {
        match (said.origin, said.provenance.engine) {
            (Origin::Model, Some(engine)) => engine,
            (Origin::Model, None) => self.engine.name(),
            (Origin::Bank | Origin::Redirect | Origin::Clarify | Origin::Silence, _) => "bank",
        }
    }

    /// Heard with too little confidence to answer, and nothing that must be answered anyway
    /// (the verdict is safe and the child is not distressed).
    fn unclear(&self, u: &Understood, kind: ReplyKind) -> bool {
        u.safety.verdict == Verdict::Safe
            && kind != ReplyKind::Comfort
            && u.heard.asr.confidence < self.clarify_below
    }

    /// The engine's reply, spoken as it is generated. The reply is made to start with the
    /// child's name (see `reply_opening`), so the name is said at once, while the engine
    /// works on the rest. A sentence that breaks the policy is replaced by its safe line (else
    /// `redirect`); an engine that says nothing usable is replaced by `curated`.
    fn engine_reply(
        &self,
        prompt: &Prompt,
        curated: String,
        redirect: String,
        speaker: &mut Speaker,
        emit: &mut dyn FnMut(ReplyEvent),
    ) -> Said {
        let opening = teddyflow_models::llm::prompt::reply_opening(prompt);
        if let Some(o) = &opening {
            speaker.say(o.trim_end_matches(','), emit);
        }
        let checked = self.generate_checked(prompt, opening.clone(), speaker, emit);
        // The text says what was spoken: the opening too, when no sentence carried it.
        let nothing_spoken = checked.spoken.is_empty();
        let mut said: Vec<String> = match &opening {
            Some(o) if nothing_spoken => vec![o.clone()],
            _ => checked.spoken,
        };
        let origin = match &checked.replaced {
            Some(_) => {
                let line = checked.safe_line.unwrap_or(redirect);
                speaker.say(&line, emit);
                said.push(line);
                Origin::Model
            }
            None if nothing_spoken => {
                speaker.say(&curated, emit);
                said.push(curated);
                Origin::Bank
            }
            None => Origin::Model,
        };
        Said {
            text: said.join(" "),
            origin,
            fallback: checked.replaced,
            first_sentence_ms: checked.first_ms,
            reused_tokens: checked.reused_tokens,
            provenance: checked.provenance,
        }
    }

    /// Generate and speak sentence by sentence; stop speaking at the first sentence that
    /// breaks the reply policy. `already_said` (the opening) is not spoken again.
    fn generate_checked(
        &self,
        prompt: &Prompt,
        mut already_said: Option<String>,
        speaker: &mut Speaker,
        emit: &mut dyn FnMut(ReplyEvent),
    ) -> Checked {
        let started = Instant::now();
        let mut spoken = Vec::new();
        let mut replaced = None;
        let mut safe_line = None;
        let mut first = None;
        // What this turn asks about, once: each sentence is judged in its light.
        let context = self.policy.context(&prompt.utterance, &prompt.history);
        let earlier = prompt.history.iter().map(|(_, teddy)| teddy.as_str());
        let mut fresh = FreshStart::new(
            earlier,
            prompt.child_name.as_deref(),
            already_said.as_deref(),
        );
        let mut say =
            |sentence: String, speaker: &mut Speaker, emit: &mut dyn FnMut(ReplyEvent)| {
                let rest = match already_said.take() {
                    Some(o) => sentence
                        .strip_prefix(o.as_str())
                        .unwrap_or(&sentence)
                        .trim(),
                    None => &sentence,
                };
                if has_words(rest) {
                    speaker.say(rest, emit);
                }
                spoken.push(sentence);
            };
        // The conversation's history may have been run already, between turns.
        let query = Query {
            session: Some(speaker.conversation),
            prompt,
            sampling: &self.sampling,
        };
        let result = self.engine.generate(query, &mut |sentence| {
                if replaced.is_some() {
                    return;
                }
                first.get_or_insert_with(|| ms_since(started) - speaker.tts_ms);
                let check = self.policy.check_in(&context, sentence);
                if !check.ok {
                    tracing::debug!(violations = ?check.violations, sentence, "generated sentence not spoken");
                    replaced = Some(check.category_names());
                    // The opening has said the name already.
                    safe_line = check.safe_line(None);
                    return;
                }
                if let Some(sentence) = fresh.admit(sentence) {
                    say(sentence, speaker, emit);
                }
            });
        // A stale opening held back, and nothing followed it but (maybe) a violation: the
        // safe line says enough then; otherwise the stale sentence beats silence.
        if replaced.is_none() {
            if let Some(sentence) = fresh.finish() {
                say(sentence, speaker, emit);
            }
        }
        let mut reused_tokens = 0;
        let mut provenance = Provenance::default();
        match result {
            Ok(g) => {
                reused_tokens = g.reused_tokens;
                provenance = g.provenance;
                tracing::debug!(
                    prompt_tokens = g.prompt_tokens,
                    reused_tokens = g.reused_tokens,
                    tokens = g.tokens,
                    prefill_ms = g.prefill_ms as u64,
                    first_sentence_ms = g.first_sentence_ms as u64,
                    total_ms = g.total_ms as u64,
                    "reply generated"
                )
            }
            Err(e) => tracing::warn!(error = %e, "reply engine failed; answering from the bank"),
        }
        Checked {
            spoken,
            replaced,
            safe_line,
            first_ms: first,
            reused_tokens,
            provenance,
        }
    }
}

/// What a prompt says about the child: the part of a turn known before the child speaks.
fn about_child(profile: &Profile, language: &str) -> Prompt {
    Prompt {
        child_name: profile.name.clone(),
        age: profile.age,
        language: language.to_string(),
        ..Prompt::default()
    }
}

/// What a reply said and where it came from.
struct Said {
    text: String,
    origin: Origin,
    /// A generated sentence broke the policy and was replaced; its categories.
    fallback: Option<Vec<String>>,
    first_sentence_ms: Option<f64>,
    reused_tokens: usize,
    provenance: Provenance,
}

impl Said {
    fn curated(text: String, origin: Origin) -> Self {
        Self {
            text,
            origin,
            fallback: None,
            first_sentence_ms: None,
            reused_tokens: 0,
            provenance: Provenance::default(),
        }
    }
}

/// What [`Answerer::generate_checked`] spoke.
struct Checked {
    spoken: Vec<String>,
    /// The policy categories of the sentence that was not spoken, if one was not.
    replaced: Option<Vec<String>>,
    /// What the policy says instead (`None`: the curated redirect).
    safe_line: Option<String>,
    /// When the first sentence was ready (ms).
    first_ms: Option<f64>,
    reused_tokens: usize,
    provenance: Provenance,
}

/// Turns sentences into speech chunks in the audio wire format: utterance/seq/final
/// headers, PCM16 payloads.
struct Speaker<'a> {
    answerer: &'a Answerer,
    conversation: &'a str,
    utterance: &'a str,
    completed_ms: i64,
    voice: &'a str,
    style: SpeechStyle,
    seq: u32,
    samples: usize,
    errors: u32,
    tts_ms: f64,
}

impl<'a> Speaker<'a> {
    fn new(answerer: &'a Answerer, meta: &'a Meta, voice: &'a str, style: SpeechStyle) -> Self {
        Self {
            answerer,
            conversation: &meta.conversation,
            utterance: &meta.utterance,
            completed_ms: meta.completed_ms,
            voice,
            style,
            seq: 0,
            samples: 0,
            errors: 0,
            tts_ms: 0.0,
        }
    }

    fn say(&mut self, text: &str, emit: &mut dyn FnMut(ReplyEvent)) {
        let started = Instant::now();
        let rate = self.answerer.speech_rate;
        let spoken = self
            .answerer
            .speech
            .speak(text, self.voice, &self.style, rate);
        self.tts_ms += ms_since(started);
        let samples = match spoken {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, voice = self.voice, "speech synthesis failed");
                self.errors += 1;
                return;
            }
        };
        self.samples += samples.len();
        for chunk in samples.chunks(self.answerer.chunk_samples) {
            let pcm = audio::encode_pcm_s16le(chunk);
            emit(ReplyEvent::Speech(self.chunk(pcm, false)));
        }
    }

    /// The end-of-reply marker: an empty chunk with `final` set, so a toy knows the reply is
    /// over without waiting for a timeout (sentences are sent before the next is known).
    fn finish(&mut self, emit: &mut dyn FnMut(ReplyEvent)) {
        emit(ReplyEvent::Speech(self.chunk(Vec::new(), true)));
    }

    fn chunk(&mut self, pcm: Vec<u8>, is_final: bool) -> Output {
        let headers = ChunkHeaders {
            utterance: self.utterance.to_string(),
            seq: self.seq,
            is_final,
            codec: Codec::PcmS16le,
            rate: Some(self.answerer.speech_rate),
            channels: 1,
            child: None,
            sent_ms: Some(now_ms()),
        };
        self.seq += 1;
        let chunk = SpeechChunk {
            conversation: self.conversation.to_string(),
            headers,
            pcm,
        };
        Output::new(Out::Speech(chunk), self.completed_ms)
    }
}

fn has_words(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
