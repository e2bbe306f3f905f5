//! Understanding the child: text emotion (fused with the acoustic features heard beside the
//! words) and the child-safety verdict, on a batched pool; personal information is
//! redacted from the transcript before anything is written.

use std::sync::Arc;
use std::time::Instant;

use teddyflow_models::embed::Embedder;
use teddyflow_models::emotion::{Emotion, EmotionModel};
use teddyflow_models::safety::{self, SafetyModel, SafetyVerdict, Verdict};
use timely::dataflow::operators::core::Map;

use super::{Ctx, Flow, Then};
use crate::config::Config;
use crate::envelope::{Envelope, Failed};
use crate::operators::async_stage;
use crate::outputs::{Alert, Heard, Out, Output};
use crate::pool::{Batching, Compute, StagePool};
use crate::stage::Stage;
use crate::threads::{Cores, Priority, ThreadPlan};

/// An utterance with everything known about how the child feels and whether it is safe.
/// `heard.transcript` is redacted from here on: it is what may be written to topics.
#[derive(Debug, Clone, PartialEq)]
pub struct Understood {
    pub heard: Heard,
    pub emotion: Emotion,
    pub safety: SafetyVerdict,
    /// Whether personal information was replaced in the transcript.
    pub redacted: bool,
}

impl Understood {
    pub fn needs_parent(&self) -> bool {
        self.safety.verdict != Verdict::Safe
    }
}

pub type UnderstandPool = StagePool<Envelope<Heard>, Envelope<Understood>>;

/// The understanding stage of a process, and the safety model it uses (shared with the
/// reply stage, which checks every generated sentence).
#[derive(Clone)]
pub struct Understanding {
    pool: Arc<UnderstandPool>,
    pub safety: SafetyModel,
}

impl Understanding {
    pub fn load(
        config: &Config,
        plan: &ThreadPlan,
        cores: &Cores,
    ) -> anyhow::Result<Understanding> {
        let models = &config.models.dir;
        let data = &config.understanding.data_dir;
        // One MiniLM for both classifiers: one copy of the weights, one embedding per utterance.
        let embedder = Embedder::load(models)?;
        let emotion = EmotionModel::with_embedder(embedder.clone(), data)?;
        let safety = SafetyModel::with_embedder(embedder.clone(), models, data)?;
        let redact = config.understanding.redact_pii;
        let models = Arc::new((embedder, emotion, safety.clone()));
        let work =
            Arc::new(move |batch: Vec<Envelope<Heard>>| understand_batch(&models, redact, batch));
        let u = &config.understanding;
        let batching = Batching::new(u.max_batch, u.max_wait_ms);
        let capacity = config.engine.max_pending_utterances;
        let compute = Compute::new(
            plan.understanding,
            Priority::Understand,
            cores,
            plan.min_cores(),
        );
        let pool = StagePool::batched("understand", compute, capacity, batching, work);
        Ok(Understanding {
            pool: Arc::new(pool),
            safety,
        })
    }
}

pub trait Understand<'s> {
    fn understand(self, understanding: &Understanding, ctx: &Ctx) -> Flow<'s, Understood>;
}

impl<'s> Understand<'s> for Flow<'s, Heard> {
    fn understand(self, understanding: &Understanding, ctx: &Ctx) -> Flow<'s, Understood> {
        let (pool, ctx) = (understanding.pool.clone(), ctx.clone());
        self.then(move |heard| {
            async_stage(heard, pool, move |u: &Envelope<Understood>| {
                let mut m = ctx.metrics();
                m.timings(&u.meta, &[Stage::Understand]);
                m.batches(&u.meta, Stage::Understand);
                if u.body.needs_parent() {
                    m.error(&format!("verdict_{}", u.body.safety.verdict));
                }
            })
            .map(Ok::<_, Failed>)
        })
    }
}

/// A parent alert, when the utterance needs one.
pub fn alert_for(u: &Envelope<Understood>) -> Option<Output> {
    if !u.body.needs_parent() {
        return None;
    }
    let meta = &u.meta;
    let alert = Alert {
        conversation: meta.conversation.clone(),
        utterance: meta.utterance.clone(),
        child: meta.child.clone(),
        kind: u.body.safety.verdict,
        categories: u.body.safety.categories.clone(),
        score: u.body.safety.score,
        excerpt: u.body.heard.transcript.chars().take(200).collect(),
        ts_ms: crate::envelope::now_ms(),
    };
    Some(Output::new(Out::Alert(alert), meta.completed_ms))
}

type Models = (Embedder, EmotionModel, SafetyModel);

/// The child-safety verdict on what was heard (`embedding`: of [`Heard::english`], when the
/// caller has it). With other hearings of the same audio (a second engine's transcript, the
/// first engine's other readings), all are judged and the most severe verdict wins: a word
/// one hearing got wrong another often got right.
/// `bench safety --spoken` judges with this too.
pub fn judge(safety: &SafetyModel, heard: &Heard, embedding: Option<&[f32]>) -> SafetyVerdict {
    let text = heard.english();
    let first = match embedding {
        Some(e) => safety.check_embedded(text, e),
        None => safety.check(text),
    };
    with_other_hearings(safety, first, heard)
}

/// `first` (the verdict on the first transcript), or the verdict on another hearing of the
/// same audio when one is more severe: the second engine's transcript, and the first
/// engine's other readings ([`Heard::other_readings`]).
pub fn with_other_hearings(
    safety: &SafetyModel,
    first: SafetyVerdict,
    heard: &Heard,
) -> SafetyVerdict {
    let others = heard.second_opinion.iter().chain(heard.other_readings());
    with_readings(safety, first, others)
}

/// `first`, or the verdict on one of `readings` (other texts heard in the same audio) when
/// one is more severe; a reading without a word is not judged.
pub fn with_readings<'a>(
    safety: &SafetyModel,
    first: SafetyVerdict,
    readings: impl IntoIterator<Item = &'a String>,
) -> SafetyVerdict {
    readings
        .into_iter()
        .filter(|t| t.chars().any(char::is_alphanumeric))
        .fold(first, |verdict, t| more_severe(verdict, safety.check(t)))
}

/// The verdict that asks more of a parent (ties: the higher risk score).
fn more_severe(a: SafetyVerdict, b: SafetyVerdict) -> SafetyVerdict {
    if (b.verdict, b.score) > (a.verdict, a.score) {
        b
    } else {
        a
    }
}

/// Replace personal information in everything heard that is written out: the transcript
/// and its English translation. Whether anything was replaced.
fn redact_heard(heard: &mut Heard) -> bool {
    let (clean, mut changed) = safety::redact(&heard.transcript);
    heard.transcript = clean;
    if let Some(english) = heard.asr.english.as_mut() {
        let (clean, c) = safety::redact(english);
        *english = clean;
        changed |= c;
    }
    changed
}

/// One MiniLM pass embeds every transcript of the batch; each is then classified alone.
fn understand_batch(
    (embedder, emotion, safety): &Models,
    redact: bool,
    batch: Vec<Envelope<Heard>>,
) -> Vec<Envelope<Understood>> {
    let started = Instant::now();
    // The classifiers are English: a child heard in another language is judged on the
    // translation of the same audio.
    let texts: Vec<&str> = batch.iter().map(|h| h.body.english()).collect();
    let embeddings = match embedder.embed(&texts) {
        Ok(e) => e.into_iter().map(Some).collect(),
        // Without embeddings the models fall back to their other signals.
        Err(_) => vec![None; batch.len()],
    };
    let embed_ms = started.elapsed().as_secs_f64() * 1e3;
    let size = batch.len();
    let items = batch.into_iter().zip(embeddings);
    items
        .map(|(mut heard, e)| {
            heard.meta.batches.push((Stage::Understand, size));
            let started = Instant::now();
            let mut u = heard.map(|h| understand((emotion, safety, redact), h, e.as_deref()));
            let ms = embed_ms + started.elapsed().as_secs_f64() * 1e3;
            u.meta.time(Stage::Understand, ms);
            u
        })
        .collect()
}

fn understand(
    (emotion, safety, redact): (&EmotionModel, &SafetyModel, bool),
    mut heard: Heard,
    embedding: Option<&[f32]>,
) -> Understood {
    let acoustic = heard.acoustic.clone().unwrap_or_default();
    let verdict = judge(safety, &heard, embedding);
    let feeling = match embedding {
        Some(e) => emotion.classify_embedded(e, &acoustic),
        None => emotion.classify(heard.english(), &acoustic),
    };
    let redacted = redact && redact_heard(&mut heard);
    Understood {
        heard,
        emotion: feeling,
        safety: verdict,
        redacted,
    }
}
