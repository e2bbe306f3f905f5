//! Hearing: speech-to-text in the child's language and, beside it, acoustic analysis of how
//! the child sounded; the two halves of each utterance meet again in a join. Both run on
//! thread pools shared by the process's workers.
//!
//! ```text
//! decoded + profile ─┬─► speech-to-text (batched) ─┬─► join ─┬─► join ─► heard
//!                    ├─► second opinion (optional) ┘         │
//!                    └─► acoustic analysis ──────────────────┘
//! ```
//!
//! The second opinion (`asr.second_opinion`) is another English engine hearing the same
//! audio; only the safety check reads what it heard (`understand::judge`). Its time is the
//! `asr_second` stage, recorded on the heard envelope when the halves join.
//!
//! The profile (looked up before this stage, `stages::profiles`) decides the engine: a child
//! whose language is English (or who has no profile, when `answering.default_language` is
//! English) is heard by `asr.engine`; any other language by the multilingual Whisper of
//! `asr.other_languages`, in that language, with an English translation of the same encoder
//! output for understanding (the classifiers are English).

use std::sync::Arc;
use std::time::Instant;

use teddyflow_models::emotion::acoustic::{self, AcousticFeatures};
use teddyflow_models::moonshine::{MoonshineModel, MoonshineOptions};
use teddyflow_models::reply_bank;
use teddyflow_models::stt::{SpeechToText, Transcript};
use teddyflow_models::whisper::{WhisperModel, WhisperOptions, WhisperVariant};
use timely::dataflow::operators::core::Map;

use super::decode::Decoded;
use super::profiles::Profile;
use super::{Ctx, Flow, Then};
use crate::config::{AsrEngine, Config};
use crate::envelope::{now_ms_f64, Envelope, Failed};
use crate::operators::{async_stage, join_halves};
use crate::outputs::Heard;
use crate::pool::{Batching, Compute, StagePool};
use crate::stage::Stage;
use crate::threads::{Cores, Priority, ThreadPlan};

pub type AsrPool = StagePool<Envelope<Decoded>, Result<Envelope<Heard>, Failed>>;
pub type AcousticPool = StagePool<Envelope<Decoded>, Envelope<Sound>>;
pub type SecondPool = StagePool<Envelope<Decoded>, Envelope<Second>>;

/// What the second English engine heard in an utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Second {
    /// `None`: the utterance is not heard in English, or the engine failed on it (the first
    /// transcript still decides).
    pub text: Option<String>,
    /// Time and span (ms after the utterance completed) of the second transcription;
    /// `None` when the utterance was not heard twice.
    pub timed: Option<(f64, (f64, f64))>,
}

/// The acoustic half of an utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Sound {
    pub features: AcousticFeatures,
    pub ms: f64,
    /// When the analysis started and ended, in ms after the utterance completed.
    pub span: (f64, f64),
}

/// The hearing stage of a process: the speech-to-text engines, and acoustic analysis when
/// understanding needs it.
#[derive(Clone)]
pub struct Hearing {
    asr: Arc<AsrPool>,
    acoustic: Option<Arc<AcousticPool>>,
    second: Option<Arc<SecondPool>>,
    listeners: Arc<Listeners>,
}

impl Hearing {
    pub fn load(config: &Config, plan: &ThreadPlan, cores: &Cores) -> anyhow::Result<Hearing> {
        let listeners = Arc::new(Listeners::load(config)?);
        let l = listeners.clone();
        let work = Arc::new(move |batch: Vec<Envelope<Decoded>>| transcribe_batch(&l, batch));
        let a = &config.asr;
        let capacity = config.engine.max_pending_utterances;
        let batching = Batching::new(a.max_batch, a.max_wait_ms);
        let min = plan.min_cores();
        let compute = Compute::new(plan.asr, Priority::Asr, cores, min);
        let asr = StagePool::batched("asr", compute, capacity, batching, work);
        let acoustic = config.understanding.enabled.then(|| {
            let work = Arc::new(analyse);
            // Beside speech-to-text, without a core permit: it is the other branch of the
            // same utterance (~15-25 ms), and waiting for the core speech-to-text holds would
            // put it after speech-to-text on the critical path, the join waiting for both.
            let compute = Compute::alone(plan.acoustic.threads);
            Arc::new(StagePool::new("acoustic", compute, capacity, work))
        });
        // A second whole transcription per English utterance, competing with the first for
        // the same core permits: on a small machine it delays this utterance's join and the
        // utterances behind it (docs/performance.md, spoken safety).
        let second = listeners.second.is_some().then(|| {
            let l = listeners.clone();
            let work = Arc::new(move |d: Envelope<Decoded>| second_opinion(&l, d));
            let compute = Compute::new(plan.asr, Priority::Asr, cores, min);
            Arc::new(StagePool::new("asr_second", compute, capacity, work))
        });
        Ok(Hearing {
            asr: Arc::new(asr),
            acoustic,
            second,
            listeners,
        })
    }

    /// Whether a second English engine hears every English utterance (its pool is another
    /// speech-to-text lane).
    pub fn hears_twice(&self) -> bool {
        self.second.is_some()
    }

    /// The engines: what start-up logs report.
    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }
}

/// The speech-to-text engines of a process, and which one hears which child.
pub struct Listeners {
    /// Hears English.
    pub english: Arc<dyn SpeechToText>,
    /// Hears every other language, with an English translation; `None`: `english` hears all.
    pub other: Option<Arc<dyn SpeechToText>>,
    /// The language of a child without a profile (or without a language in it).
    pub default_language: String,
    /// A second English engine whose transcript only the safety check reads
    /// (`asr.second_opinion`); `None`: off.
    pub second: Option<Arc<dyn SpeechToText>>,
}

/// Which engine hears an utterance, and in what language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    English,
    /// The multilingual engine, in this language (a base code such as "es").
    Other(String),
}

impl Listeners {
    pub fn load(config: &Config) -> anyhow::Result<Listeners> {
        // One set of Moonshine weights for the English engine and a second Moonshine.
        let mut weights = Weights::default();
        let english = weights.speech_to_text(config)?;
        let other = match config.asr.other_languages.trim() {
            "" => None,
            model => Some(multilingual_whisper(config, model)?),
        };
        let second = match config.asr.second_opinion.trim() {
            "" => None,
            spec => Some(engine_named(config, spec, &mut weights)?),
        };
        Ok(Listeners {
            english,
            other,
            default_language: config.answering.default_language.clone(),
            second,
        })
    }

    /// The child's language, as a base code ("es-MX" → "es").
    pub fn language_of(&self, profile: Option<&Profile>) -> String {
        let language = profile.and_then(|p| p.language.as_deref());
        reply_bank::base_language(language.unwrap_or(&self.default_language))
    }

    pub fn route(&self, language: &str) -> Route {
        match (language, &self.other) {
            ("en", _) | (_, None) => Route::English,
            (other, Some(_)) => Route::Other(other.to_string()),
        }
    }

    /// Transcripts of English clips, in order.
    pub fn hear_english(&self, clips: &[&[f32]]) -> Vec<anyhow::Result<Heard>> {
        let engine = self.english.as_ref();
        let results = engine.transcribe_batch(clips, Some("en"));
        let heard = |(clip, r): (&&[f32], anyhow::Result<Transcript>)| {
            r.map(|t| Heard::from_transcript(engine, t, None, clip.len()))
        };
        clips.iter().zip(results).map(heard).collect()
    }

    /// A clip in another language: the transcript in it, and an English translation of the
    /// same audio. A language the engine does not know is detected instead.
    pub fn hear_other(&self, clip: &[f32], language: &str) -> anyhow::Result<Heard> {
        let engine = self.other.as_deref().unwrap_or(self.english.as_ref());
        let (t, english) = match engine.transcribe_with_translation(clip, Some(language)) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "language not known to the engine: detecting it");
                engine.transcribe_with_translation(clip, None)?
            }
        };
        Ok(Heard::from_transcript(engine, t, english, clip.len()))
    }

    /// What the second English engine heard in a clip (`None` when there is none).
    pub fn hear_second(&self, clip: &[f32]) -> anyhow::Result<Option<String>> {
        let Some(engine) = &self.second else {
            return Ok(None);
        };
        let t = engine.transcribe_batch(&[clip], Some("en")).remove(0)?;
        Ok(Some(t.text))
    }

    /// One clip, heard as its child's language asks.
    pub fn hear(&self, clip: &[f32], profile: Option<&Profile>) -> anyhow::Result<Heard> {
        match self.route(&self.language_of(profile)) {
            Route::English => self.hear_english(&[clip]).remove(0),
            Route::Other(language) => self.hear_other(clip, &language),
        }
    }
}

/// Models loaded so far, for engines that differ only in their options: a second Moonshine
/// (another lead-in) shares the first one's weights (~180 MiB) instead of loading its own.
#[derive(Default)]
struct Weights {
    moonshine: Option<MoonshineModel>,
}

impl Weights {
    fn moonshine(&mut self, dir: &std::path::Path) -> anyhow::Result<MoonshineModel> {
        if let Some(m) = &self.moonshine {
            return Ok(m.clone());
        }
        let m = MoonshineModel::load(dir)?;
        self.moonshine = Some(m.clone());
        Ok(m)
    }

    /// The English speech-to-text engine `config` names, loaded. A new engine is one file
    /// in `models/` implementing [`SpeechToText`], a config section, and one arm here.
    fn speech_to_text(&mut self, config: &Config) -> anyhow::Result<Arc<dyn SpeechToText>> {
        let dir = &config.models.dir;
        match config.asr.engine {
            AsrEngine::Whisper => {
                let w = &config.asr.whisper;
                let variant: WhisperVariant = w.model.parse()?;
                let options = whisper_options(w.min_window_ms, w.tail_pad_ms);
                Ok(Arc::new(
                    WhisperModel::load(dir, variant)?.with_options(options),
                ))
            }
            AsrEngine::Moonshine => {
                let options = MoonshineOptions {
                    lead_silence_ms: config.asr.moonshine.lead_silence_ms,
                    lead_top_up: config.asr.moonshine.lead_top_up,
                    beam: config.asr.moonshine.beam.max(1),
                    beam_margin: config.asr.moonshine.beam_margin,
                };
                Ok(Arc::new(self.moonshine(dir)?.with_options(options)))
            }
        }
    }
}

/// An English engine named `"<engine>:<model>"` (`asr.second_opinion`), with the settings of
/// its `[asr.<engine>]` section: `"whisper:tiny.en"`, `"whisper:base"`, `"moonshine:base"`.
fn engine_named(
    config: &Config,
    spec: &str,
    weights: &mut Weights,
) -> anyhow::Result<Arc<dyn SpeechToText>> {
    let (engine, model) = spec.split_once(':').unwrap_or((spec, ""));
    let mut config = config.clone();
    match engine {
        "whisper" => {
            config.asr.engine = AsrEngine::Whisper;
            if !model.is_empty() {
                config.asr.whisper.model = model.to_string();
            }
        }
        "moonshine" if matches!(model, "" | "base") => {
            // The same engine with the same lead-in would hear the same words: a second
            // Moonshine hears with its own lead-in, to which its output is sensitive.
            config.asr.engine = AsrEngine::Moonshine;
            let m = &mut config.asr.moonshine;
            m.lead_silence_ms = m.second_opinion_lead_ms;
        }
        _ => anyhow::bail!(
            "asr.second_opinion = {spec:?}: expected \"whisper:<model>\" or \"moonshine:base\""
        ),
    }
    weights.speech_to_text(&config)
}

/// The Whisper that hears other languages (`asr.other_languages`), with the encoder
/// window of `[asr.whisper]`.
fn multilingual_whisper(config: &Config, model: &str) -> anyhow::Result<Arc<dyn SpeechToText>> {
    let variant: WhisperVariant = model.parse()?;
    anyhow::ensure!(
        variant.is_multilingual(),
        "asr.other_languages = {model:?} is an English-only model (use \"base\", or \"\" for none)"
    );
    let w = &config.asr.whisper;
    let options = whisper_options(w.min_window_ms, w.tail_pad_ms);
    let dir = &config.models.dir;
    Ok(Arc::new(
        WhisperModel::load(dir, variant)?.with_options(options),
    ))
}

/// Encoder padding from milliseconds (one mel frame is 10 ms).
pub fn whisper_options(min_window_ms: u64, tail_pad_ms: u64) -> WhisperOptions {
    WhisperOptions {
        min_frames: (min_window_ms / 10) as usize,
        tail_pad_frames: (tail_pad_ms / 10) as usize,
    }
}

pub trait Hear<'s> {
    fn hear(self, hearing: &Hearing, ctx: &Ctx) -> Flow<'s, Heard>;
}

impl<'s> Hear<'s> for Flow<'s, Decoded> {
    fn hear(self, hearing: &Hearing, ctx: &Ctx) -> Flow<'s, Heard> {
        let (hearing, ctx) = (hearing.clone(), ctx.clone());
        self.then(move |decoded| {
            let m = ctx.clone();
            let heard = async_stage(decoded.clone(), hearing.asr.clone(), move |r| match r {
                Ok(h) => {
                    let mut metrics = m.metrics();
                    metrics.timings(&h.meta, &[Stage::AsrWait, Stage::Asr]);
                    metrics.batches(&h.meta, Stage::Asr);
                    metrics.counts.unheard += u64::from(h.body.is_silent());
                }
                Err(_) => m.metrics().error(Stage::Asr.name()),
            });
            let heard = match hearing.second.clone() {
                Some(pool) => {
                    let seconds = async_stage(decoded.clone(), pool, |_| {});
                    let second_ctx = ctx.clone();
                    heard.then(move |heard| {
                        let heard_key = |e: &Envelope<Heard>| e.meta.key();
                        let second_key = |e: &Envelope<Second>| e.meta.key();
                        join_halves(heard, seconds, heard_key, second_key).map(move |(h, s)| {
                            let h = with_second(h, s);
                            second_ctx.metrics().timings(&h.meta, &[Stage::AsrSecond]);
                            Ok(h)
                        })
                    })
                }
                None => heard,
            };
            let Some(pool) = hearing.acoustic.clone() else {
                return heard;
            };
            let sounds = async_stage(decoded, pool, |_| {});
            heard.then(move |heard| {
                let heard_key = |e: &Envelope<Heard>| e.meta.key();
                let sound_key = |e: &Envelope<Sound>| e.meta.key();
                join_halves(heard, sounds, heard_key, sound_key).map(move |(h, s)| {
                    let h = with_sound(h, s);
                    ctx.metrics().timings(&h.meta, &[Stage::Acoustic]);
                    Ok(h)
                })
            })
        })
    }
}

/// The transcript and the sound of one utterance together; the sound's copy of the
/// admission ticket goes with its envelope.
fn with_sound(mut heard: Envelope<Heard>, sound: Envelope<Sound>) -> Envelope<Heard> {
    let s = sound.body;
    heard.meta.time(Stage::Acoustic, s.ms);
    heard.meta.spans.push((Stage::Acoustic, s.span.0, s.span.1));
    heard.body.acoustic = Some(s.features);
    heard
}

/// The second engine's transcript beside the first; its copy of the admission ticket goes
/// with its envelope.
fn with_second(mut heard: Envelope<Heard>, second: Envelope<Second>) -> Envelope<Heard> {
    let s = second.body;
    if let Some((ms, span)) = s.timed {
        heard.meta.time(Stage::AsrSecond, ms);
        heard.meta.spans.push((Stage::AsrSecond, span.0, span.1));
    }
    heard.body.second_opinion = s.text;
    heard
}

/// The second English engine on one utterance; other languages are not heard twice.
fn second_opinion(listeners: &Listeners, d: Envelope<Decoded>) -> Envelope<Second> {
    let route = listeners.route(&listeners.language_of(d.meta.profile.as_ref()));
    if let Route::Other(_) = route {
        return d.map(|_| Second {
            text: None,
            timed: None,
        });
    }
    let started = Instant::now();
    let start_wall = now_ms_f64();
    let text = listeners.hear_second(&d.body.pcm).unwrap_or_else(|e| {
        tracing::debug!(error = %e, "second opinion failed: the first transcript decides");
        None
    });
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let base = d.meta.completed_ms as f64;
    let span = (start_wall - base, now_ms_f64() - base);
    d.map(|_| Second {
        text,
        timed: Some((ms, span)),
    })
}

/// English utterances of the batch together, each other language on its own.
fn transcribe_batch(
    listeners: &Listeners,
    batch: Vec<Envelope<Decoded>>,
) -> Vec<Result<Envelope<Heard>, Failed>> {
    let started = Instant::now();
    let start_wall = now_ms_f64();
    let routes: Vec<Route> = batch
        .iter()
        .map(|d| listeners.route(&listeners.language_of(d.meta.profile.as_ref())))
        .collect();
    let english: Vec<&[f32]> = batch
        .iter()
        .zip(&routes)
        .filter(|(_, r)| **r == Route::English)
        .map(|(d, _)| d.body.pcm.as_slice())
        .collect();
    let mut english = listeners.hear_english(&english).into_iter();
    let results: Vec<anyhow::Result<Heard>> = batch
        .iter()
        .zip(&routes)
        .map(|(d, route)| match route {
            Route::English => english.next().expect("one result per English clip"),
            Route::Other(language) => listeners.hear_other(&d.body.pcm, language),
        })
        .collect();
    // Every utterance of the batch waited for the whole call.
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let size = batch.len();
    let heard = |(d, result): (Envelope<Decoded>, anyhow::Result<Heard>)| {
        let (mut env, decoded) = d.replace(());
        let heard = match result {
            Ok(h) => h,
            Err(e) => return Err(env.fail(Stage::Asr, format!("{e:#}"), decoded.bytes)),
        };
        let meta = &mut env.meta;
        let queued_ms = start_wall - meta.completed_ms as f64;
        meta.time(
            Stage::AsrWait,
            (queued_ms - meta.elapsed_in_stages()).max(0.0),
        );
        meta.time(Stage::Asr, ms);
        meta.span(Stage::Asr, start_wall);
        meta.batches.push((Stage::Asr, size));
        Ok(env.map(|()| heard))
    };
    batch.into_iter().zip(results).map(heard).collect()
}

fn analyse(d: Envelope<Decoded>) -> Envelope<Sound> {
    let started = Instant::now();
    let start_wall = now_ms_f64();
    let features = acoustic::analyze(&d.body.pcm);
    let base = d.meta.completed_ms as f64;
    let span = (start_wall - base, now_ms_f64() - base);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    d.map(|_| Sound { features, ms, span })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{tests::meta, Admission};
    use crate::outputs::AsrInfo;

    fn envelope<T>(admission: &Admission, body: T) -> Envelope<T> {
        let meta = meta("c", "u");
        let ticket = admission.admit(meta.key());
        Envelope { meta, ticket, body }
    }

    fn heard() -> Heard {
        Heard {
            transcript: "my uncle is me".into(),
            language: "en".into(),
            audio_ms: 1500,
            acoustic: None,
            asr: AsrInfo::default(),
            second_opinion: None,
            alternatives: Vec::new(),
        }
    }

    #[test]
    fn a_joined_second_opinion_brings_its_time_and_span() {
        let admission = Admission::new(1);
        let second = Second {
            text: Some("my uncle hits me".into()),
            timed: Some((640.0, (2.0, 642.0))),
        };
        let h = with_second(envelope(&admission, heard()), envelope(&admission, second));
        assert_eq!(h.body.second_opinion.as_deref(), Some("my uncle hits me"));
        assert_eq!(h.meta.timing(Stage::AsrSecond), Some(640.0));
        assert!(h.meta.spans.contains(&(Stage::AsrSecond, 2.0, 642.0)));
        assert_eq!(
            h.body.transcript, "my uncle is me",
            "the first transcript stays"
        );
    }

    #[test]
    fn an_utterance_not_heard_twice_has_no_second_time() {
        let admission = Admission::new(1);
        let second = Second {
            text: None,
            timed: None,
        };
        let h = with_second(envelope(&admission, heard()), envelope(&admission, second));
        assert_eq!(h.body.second_opinion, None);
        assert_eq!(h.meta.timing(Stage::AsrSecond), None);
        assert!(h.meta.spans.is_empty());
    }
}
