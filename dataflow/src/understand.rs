//! Understanding the child: acoustic features computed in parallel with speech-to-text,
//! joined per utterance, then text emotion and the child-safety verdict.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use teddyflow_models::embed::Embedder;
use teddyflow_models::emotion::acoustic::{self, AcousticFeatures};
use teddyflow_models::emotion::{Emotion, EmotionModel};
use teddyflow_models::safety::{self, SafetyModel, SafetyVerdict, Verdict};

use crate::config::Config;
use crate::pool::{Batching, StagePool};
use crate::types::{Decoded, Transcribed};

/// The acoustic half of an utterance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Acoustic {
    pub conversation: String,
    pub utterance: String,
    pub features: AcousticFeatures,
    pub ms: f64,
    /// When the analysis started and ended, in ms after the utterance completed.
    pub span: (f64, f64),
}

/// An utterance with everything known about how the child feels and whether it is safe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Understood {
    pub heard: Transcribed,
    pub emotion: Emotion,
    pub safety: SafetyVerdict,
    /// The transcript as it may be written to topics (personal information redacted).
    pub transcript: String,
    pub redacted: bool,
}

impl Understood {
    pub fn needs_parent(&self) -> bool {
        self.safety.verdict != Verdict::Safe
    }
}

pub type AcousticPool = StagePool<Decoded, Acoustic>;
pub type UnderstandPool = StagePool<(Transcribed, Acoustic), Understood>;

pub fn acoustic_pool(config: &Config) -> Arc<AcousticPool> {
    let work = Arc::new(|d: Decoded| {
        let started = Instant::now();
        let start_wall = crate::types::now_ms_f64();
        let features = acoustic::analyze(&d.pcm);
        let base = d.meta.completed_ms as f64;
        Acoustic {
            span: (start_wall - base, crate::types::now_ms_f64() - base),
            conversation: d.meta.conversation,
            utterance: d.meta.utterance,
            features,
            ms: started.elapsed().as_secs_f64() * 1e3,
        }
    });
    let capacity = config.engine.max_pending_utterances;
    Arc::new(StagePool::new("acoustic", 1, capacity, work))
}

/// The understanding pool, and the safety model it uses (shared with the reply stage, which
/// checks every generated sentence).
pub fn understand_pool(config: &Config) -> anyhow::Result<(Arc<UnderstandPool>, SafetyModel)> {
    let models = &config.asr.models_dir;
    let data: PathBuf = config.understanding.data_dir.clone();
    // One MiniLM for both classifiers: one copy of the weights, one embedding per utterance.
    let embedder = Embedder::load(models)?;
    let emotion = EmotionModel::with_embedder(embedder.clone(), &data)?;
    let safety = SafetyModel::with_embedder(embedder.clone(), models, &data)?;
    let redact = config.understanding.redact_pii;
    let shared = safety.clone();
    let work = Arc::new(move |batch: Vec<(Transcribed, Acoustic)>| {
        understand_batch(&embedder, &emotion, &safety, redact, batch)
    });
    let u = &config.understanding;
    let batching = Batching::new(u.max_batch, u.max_wait_ms);
    let capacity = config.engine.max_pending_utterances;
    let pool = StagePool::batched("understand", u.threads, capacity, batching, work);
    Ok((Arc::new(pool), shared))
}

/// One MiniLM pass embeds every transcript of the batch; each is then classified alone.
fn understand_batch(
    embedder: &Embedder,
    emotion: &EmotionModel,
    safety: &SafetyModel,
    redact: bool,
    batch: Vec<(Transcribed, Acoustic)>,
) -> Vec<Understood> {
    let started = Instant::now();
    let texts: Vec<&str> = batch.iter().map(|(h, _)| h.transcript.as_str()).collect();
    let embeddings = match embedder.embed(&texts) {
        Ok(e) => e.into_iter().map(Some).collect(),
        // Without embeddings the models fall back to their other signals.
        Err(_) => vec![None; batch.len()],
    };
    let embed_ms = started.elapsed().as_secs_f64() * 1e3;
    let size = batch.len();
    let models = (emotion, safety, redact);
    let items = batch.into_iter().zip(embeddings);
    items
        .map(|((mut heard, acoustic), e)| {
            heard.meta.batches.push(("understand".into(), size));
            understand(models, heard, acoustic, e.as_deref(), embed_ms)
        })
        .collect()
}

fn understand(
    (emotion, safety, redact): (&EmotionModel, &SafetyModel, bool),
    mut heard: Transcribed,
    acoustic: Acoustic,
    embedding: Option<&[f32]>,
    embed_ms: f64,
) -> Understood {
    let started = Instant::now();
    let (verdict, feeling) = match embedding {
        Some(e) => (
            safety.check_embedded(&heard.transcript, e),
            emotion.classify_embedded(e, &acoustic.features),
        ),
        None => (
            safety.check(&heard.transcript),
            emotion.classify(&heard.transcript, &acoustic.features),
        ),
    };
    heard.meta.time("acoustic", acoustic.ms);
    let (start, end) = acoustic.span;
    heard.meta.spans.push(("acoustic".into(), start, end));
    let ms = embed_ms + started.elapsed().as_secs_f64() * 1e3;
    heard.meta.time("understand", ms);
    let (transcript, redacted) = if redact {
        safety::redact(&heard.transcript)
    } else {
        (heard.transcript.clone(), false)
    };
    Understood {
        heard,
        emotion: feeling,
        safety: verdict,
        transcript,
        redacted,
    }
}
