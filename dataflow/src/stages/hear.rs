//! Hearing: speech-to-text (the engine named by `asr.engine`) and, beside it, acoustic
//! analysis of how the child sounded; the two halves of each utterance meet again in a
//! join. Both run on thread pools shared by the process's workers.
//!
//! ```text
//! decoded ─┬─► speech-to-text (batched) ─┬─► join ─► heard
//!          └─► acoustic analysis ────────┘
//! ```

use std::sync::Arc;
use std::time::Instant;

use teddyflow_models::emotion::acoustic::{self, AcousticFeatures};
use teddyflow_models::stt::{SpeechToText, Transcript};
use teddyflow_models::whisper::{WhisperModel, WhisperOptions, WhisperVariant};
use timely::dataflow::operators::core::Map;

use super::decode::Decoded;
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

/// The acoustic half of an utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Sound {
    pub features: AcousticFeatures,
    pub ms: f64,
    /// When the analysis started and ended, in ms after the utterance completed.
    pub span: (f64, f64),
}

/// The hearing stage of a process: one speech-to-text engine, and acoustic analysis when
/// understanding needs it.
#[derive(Clone)]
pub struct Hearing {
    asr: Arc<AsrPool>,
    acoustic: Option<Arc<AcousticPool>>,
    engine: &'static str,
    model: String,
}

impl Hearing {
    pub fn load(config: &Config, plan: &ThreadPlan, cores: &Cores) -> anyhow::Result<Hearing> {
        let engine = speech_to_text(config)?;
        let (name, model) = (engine.engine(), engine.model().to_string());
        let language = config.asr.language.clone();
        let work = Arc::new(move |batch: Vec<Envelope<Decoded>>| {
            transcribe_batch(engine.as_ref(), batch, &language)
        });
        let a = &config.asr;
        let capacity = config.engine.max_pending_utterances;
        let batching = Batching::new(a.max_batch, a.max_wait_ms);
        let min = plan.min_cores();
        let compute = Compute::new(plan.asr, Priority::Asr, cores, min);
        let asr = StagePool::batched("asr", compute, capacity, batching, work);
        let acoustic = config.understanding.enabled.then(|| {
            let work = Arc::new(analyse);
            let compute = Compute::new(plan.acoustic, Priority::Acoustic, cores, min);
            Arc::new(StagePool::new("acoustic", compute, capacity, work))
        });
        Ok(Hearing {
            asr: Arc::new(asr),
            acoustic,
            engine: name,
            model,
        })
    }

    /// `whisper`, …, and the model variant: what responses and start-up logs report.
    pub fn engine(&self) -> (&'static str, &str) {
        (self.engine, &self.model)
    }
}

/// The configured speech-to-text engine, loaded. A new engine is one file in `models/`
/// implementing [`SpeechToText`], a config section, and one arm here.
pub fn speech_to_text(config: &Config) -> anyhow::Result<Arc<dyn SpeechToText>> {
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
    }
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
                    m.metrics().timings(&h.meta, &[Stage::AsrWait, Stage::Asr]);
                    m.metrics().batches(&h.meta, Stage::Asr);
                }
                Err(_) => m.metrics().error(Stage::Asr.name()),
            });
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

fn transcribe_batch(
    engine: &dyn SpeechToText,
    batch: Vec<Envelope<Decoded>>,
    language: &str,
) -> Vec<Result<Envelope<Heard>, Failed>> {
    let started = Instant::now();
    let start_wall = now_ms_f64();
    let clips: Vec<&[f32]> = batch.iter().map(|d| d.body.pcm.as_slice()).collect();
    let results = engine.transcribe_batch(&clips, Some(language));
    // Every utterance of the batch waited for the whole call.
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let size = batch.len();
    let model = engine.model().to_string();
    let heard = |(d, result): (Envelope<Decoded>, anyhow::Result<Transcript>)| {
        let audio_ms = d.body.audio_ms();
        let (mut env, decoded) = d.replace(());
        let t = match result {
            Ok(t) => t,
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
        Ok(env.map(|()| Heard {
            transcript: t.text,
            language: t.language,
            model: model.clone(),
            audio_ms,
            acoustic: None,
        }))
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
