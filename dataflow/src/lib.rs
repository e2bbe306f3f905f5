//! The teddyflow dataflow: a timely graph from Kafka audio chunks to spoken replies.
//!
//! - [`reassembly`]: chunks → utterances (pure state machine, oracle-tested).
//! - [`operators`]: source, reassembly, model stages, sink — small timely operators.
//! - [`graph`]: the per-worker graph and its run loop (drain on stop).
//! - [`offsets`]: which input offsets may be committed, from the output frontier.
//! - [`pool`]: model stages off the worker threads, with bounded admission.
//! - [`metrics`]: per-worker snapshots for the metrics topic.
//! - [`understand`]: acoustic features, text emotion and the child-safety verdict.
//! - [`profiles`]: child profiles as a differential collection, joined per utterance.
//! - [`memory`]: recent turns per conversation, on the worker that owns it.
//! - [`answer`]: the reply (model or curated bank), checked, spoken sentence by sentence.
//! - [`prepare`]: conversation histories run through the reply model between turns.

pub mod answer;
pub mod config;
pub mod graph;
pub mod memory;
pub mod metrics;
pub mod offsets;
pub mod operators;
pub mod pool;
pub mod prepare;
pub mod profiles;
pub mod reassembly;
pub mod types;
pub mod understand;

use std::sync::Arc;
use std::time::Instant;

use teddyflow_models::whisper::{Transcript, WhisperModel, WhisperOptions, WhisperVariant};

use crate::config::Config;
use crate::pool::{Batching, StagePool};
use crate::types::{Decoded, Failed, Transcribed};

/// Load Whisper once for the process and wrap it in a pool of `asr.threads` threads that
/// transcribe queued utterances in batches of up to `asr.max_batch`.
pub fn asr_pool(
    config: &Config,
) -> anyhow::Result<Arc<StagePool<Decoded, Result<Transcribed, Failed>>>> {
    let variant: WhisperVariant = config.asr.model.parse()?;
    let model = WhisperModel::load(&config.asr.models_dir, variant)?.with_options(whisper_options(
        config.asr.min_window_ms,
        config.asr.tail_pad_ms,
    ));
    let language = config.asr.language.clone();
    let model_name = config.asr.model.clone();
    let work = Arc::new(move |batch: Vec<Decoded>| {
        transcribe_batch(&model, batch, &language, &model_name)
    });
    let batching = Batching::new(config.asr.max_batch, config.asr.max_wait_ms);
    let capacity = config.engine.max_pending_utterances;
    Ok(Arc::new(StagePool::batched(
        "asr",
        config.asr.threads,
        capacity,
        batching,
        work,
    )))
}

/// Encoder padding from milliseconds (one mel frame is 10 ms).
pub fn whisper_options(min_window_ms: u64, tail_pad_ms: u64) -> WhisperOptions {
    WhisperOptions {
        min_frames: (min_window_ms / 10) as usize,
        tail_pad_frames: (tail_pad_ms / 10) as usize,
    }
}

fn transcribe_batch(
    model: &WhisperModel,
    batch: Vec<Decoded>,
    language: &str,
    model_name: &str,
) -> Vec<Result<Transcribed, Failed>> {
    let started = Instant::now();
    let start_wall = types::now_ms_f64();
    let clips: Vec<&[f32]> = batch.iter().map(|d| d.pcm.as_slice()).collect();
    let results = model.transcribe_batch(&clips, Some(language));
    // Every utterance of the batch waited for the whole call.
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let size = batch.len();
    let transcribed = |(d, result): (Decoded, anyhow::Result<Transcript>)| {
        let audio_ms = d.audio_ms();
        let mut meta = d.meta;
        match result {
            Ok(t) => {
                let queued_ms = start_wall - meta.completed_ms as f64;
                let before: f64 = meta.timings.iter().map(|(_, ms)| ms).sum();
                meta.time("asr_wait", (queued_ms - before).max(0.0));
                meta.time("asr", ms);
                meta.span("asr", start_wall);
                meta.batches.push(("asr".into(), size));
                Ok(Transcribed {
                    meta,
                    audio_ms,
                    transcript: t.text,
                    language: t.language,
                    model: model_name.to_string(),
                })
            }
            Err(e) => Err(Failed {
                meta,
                bytes: d.bytes,
                stage: "asr".into(),
                error: format!("{e:#}"),
            }),
        }
    };
    batch.into_iter().zip(results).map(transcribed).collect()
}
