//! The teddyflow graph for one worker, and the worker's run loop.
//!
//! ```text
//! KafkaSource ─parse─┬─► Reassemble ─► Decode ─┬─► Whisper ──┬─► JoinHalves ─► Understand ─┬─► alerts
//!                    │                         └─► Acoustic ─┘                             │
//!                    └─► final chunks ─┐                                                   ▼
//! ProfileSource ─► profiles ───────────┴─► differential join ─► Lookup ─► JoinLookup ─► Reply ─► speech, response
//!                         └─► deletes (broadcast) ─► forget conversation memory
//!                 dead letters (any stage) ──────────────────────────────────────────────┴─► KafkaSink ─► probe
//! ```

mod answering;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::CommitMode;
use rdkafka::Offset;
use teddyflow_connectors::kafka::{
    partition_count, partitions_for_worker, AckedWriter, PartitionReader,
};
use teddyflow_connectors::wire::{self, OutRecord};
use teddyflow_models::audio::{self, Codec, DecodeOptions};
use timely::dataflow::operators::core::{Concat, Map, OkErr, Probe};
use timely::dataflow::{ProbeHandle, Stream};
use timely::worker::Worker;

use crate::answer::{self, ReplyStage};
use crate::config::{Config, Topics};
use crate::metrics::WorkerMetrics;
use crate::operators::{self, Output, OutputKind, SourceHandle, SourceSettings};
use crate::pool::{Admission, StagePool};
use crate::types::{now_ms, Decoded, Failed, Transcribed, Utterance};
use crate::understand::{self, Acoustic, AcousticPool, UnderstandPool, Understood};
use answering::{memory_for, profile_lookups, Answers};

/// Shared by all workers of a process: the model pool and admission control.
#[derive(Clone)]
pub struct ProcessShared {
    pub asr: Arc<StagePool<Decoded, Result<Transcribed, Failed>>>,
    /// Emotion + safety stages, unless `understanding.enabled = false`.
    pub understanding: Option<UnderstandingPools>,
    pub admission: Admission,
    pub stop: Arc<AtomicBool>,
    pub process: usize,
}

#[derive(Clone)]
pub struct UnderstandingPools {
    pub acoustic: Arc<AcousticPool>,
    pub understand: Arc<UnderstandPool>,
    /// Replies, unless `answering.enabled = false`.
    pub reply: Option<ReplyStage>,
}

impl UnderstandingPools {
    /// `admission` tells the reply stage's preparer when no utterance is in flight.
    pub fn load(config: &Config, admission: &Admission) -> anyhow::Result<Option<Self>> {
        if !config.understanding.enabled {
            return Ok(None);
        }
        let (understand, safety) = understand::understand_pool(config)?;
        let reply = match config.answering.enabled {
            true => Some(answer::reply_stage(config, safety, admission.clone())?),
            false => None,
        };
        Ok(Some(Self {
            acoustic: understand::acoustic_pool(config),
            understand,
            reply,
        }))
    }
}

/// Build the graph on this worker and run it until `stop` is set and the graph drained.
pub fn run_worker(
    worker: &mut Worker,
    config: &Config,
    shared: ProcessShared,
) -> anyhow::Result<()> {
    let index = worker.index();
    let peers = worker.peers();
    // Audio resumes from the group's committed offsets.
    let reader = open_partitions(config, &config.topics.audio, (index, peers), Offset::Stored)?;
    let partitions = reader
        .as_ref()
        .map(|r| r.partitions().to_vec())
        .unwrap_or_default();
    tracing::info!(worker = index, ?partitions, "worker reading partitions");
    let handle = Rc::new(RefCell::new(SourceHandle {
        reader,
        tracker: Default::default(),
        stopped_at: None,
    }));
    let metrics = Rc::new(RefCell::new(WorkerMetrics::default()));
    let writer = AckedWriter::open(&config.kafka)?;
    let probe = ProbeHandle::new();

    worker.dataflow::<u64, _, _>(|scope| -> anyhow::Result<()> {
        let settings = SourceSettings {
            epoch_ms: config.engine.epoch_ms,
            poll_batch: config.engine.poll_batch,
            commit_interval: Duration::from_millis(config.engine.commit_interval_ms),
            lag_interval: Duration::from_millis(config.engine.metrics_interval_ms),
        };
        let raw = operators::kafka_source(
            scope,
            handle.clone(),
            probe.clone(),
            shared.stop.clone(),
            shared.admission.clone(),
            metrics.clone(),
            settings,
        );
        let dl_topic = config.topics.deadletter.clone();
        let max_chunk = config.limits.max_chunk_bytes;
        let (chunks, bad_records): (Stream<u64, Vec<_>>, Stream<u64, Vec<_>>) =
            raw.ok_err(move |rec| match wire::parse_chunk(&rec, max_chunk) {
                Ok(chunk) => Ok(chunk),
                Err(e) => Err(Output {
                    record: wire::dead_letter(&rec, &e.to_string(), &dl_topic),
                    completed_ms: 0,
                    kind: OutputKind::DeadLetter,
                }),
            });
        let assembled = operators::reassemble(
            chunks.clone(),
            config.limits.clone(),
            config.topics.audio.clone(),
            shared.admission.clone(),
            metrics.clone(),
        );
        let (utterances, rejected) = split(assembled);
        let max_ms = config.limits.max_utterance_ms;
        let (admission, m) = (shared.admission.clone(), metrics.clone());
        let decoded: Stream<u64, Vec<Result<Decoded, Failed>>> = utterances.map(move |u| {
            let result = decode(u, max_ms);
            match &result {
                Ok(d) => m.borrow_mut().stage("decode", last_timing(&d.meta.timings)),
                Err(_) => {
                    admission.leave();
                    m.borrow_mut().error("decode");
                }
            }
            result
        });
        let (decoded, undecodable) = split(decoded);
        // An utterance counts against admission until its last model stage is done, so a
        // slow reply stage pauses reading instead of growing a queue.
        let asr_is_last = shared.understanding.is_none();
        let (admission, m) = (shared.admission.clone(), metrics.clone());
        let transcribed = operators::async_stage(
            decoded.clone(),
            shared.asr.clone(),
            move |r: &Result<Transcribed, Failed>| {
                if r.is_err() || asr_is_last {
                    admission.leave();
                }
                let mut m = m.borrow_mut();
                match r {
                    Ok(t) => {
                        for (stage, ms) in
                            t.meta.timings.iter().filter(|(s, _)| s.starts_with("asr"))
                        {
                            m.stage(stage, *ms);
                        }
                        m.batches(&t.meta.batches, "asr");
                    }
                    Err(_) => m.error("asr"),
                }
            },
        );
        let (transcribed, untranscribed) = split(transcribed);
        let topics = config.topics.clone();
        let mut profile_dead_letters = None;
        let responses: Stream<u64, Vec<Output>> = match &shared.understanding {
            None => transcribed.map(move |t| response(t, &topics.responses, index)),
            Some(pools) => {
                // Acoustic analysis runs beside speech-to-text; the halves meet per utterance.
                let acoustic = operators::async_stage(decoded, pools.acoustic.clone(), |_| {});
                let heard = operators::join_halves(
                    transcribed,
                    acoustic,
                    |t: &Transcribed| (t.meta.conversation.clone(), t.meta.utterance.clone()),
                    |a: &Acoustic| (a.conversation.clone(), a.utterance.clone()),
                );
                let (m, admission) = (metrics.clone(), shared.admission.clone());
                let understand_is_last = pools.reply.is_none();
                let understood = operators::async_stage(
                    heard,
                    pools.understand.clone(),
                    move |u: &Understood| {
                        record_understanding(&mut m.borrow_mut(), u);
                        if understand_is_last {
                            admission.leave();
                        }
                    },
                );
                match &pools.reply {
                    None => understood.flat_map(move |u| understood_outputs(u, &topics, index)),
                    Some(reply) => {
                        let (lookups, forget, invalid) = profile_lookups(
                            scope,
                            config,
                            (index, peers),
                            &shared,
                            chunks,
                            &metrics,
                        )?;
                        profile_dead_letters = Some(invalid);
                        let answers = Answers {
                            pool: reply.pool.clone(),
                            preparer: reply.preparer.clone(),
                            memory: Rc::new(RefCell::new(memory_for(config))),
                            metrics: metrics.clone(),
                            admission: shared.admission.clone(),
                            topics: topics.clone(),
                            worker: index,
                        };
                        let alerts_topics = topics.clone();
                        let alerts = understood
                            .clone()
                            .flat_map(move |u| alert_for(&u, &alerts_topics));
                        answers.build(understood, lookups, forget).concat(alerts)
                    }
                }
            }
        };
        let dl_topic = config.topics.deadletter.clone();
        let failures: Stream<u64, Vec<Output>> = rejected
            .concat(undecodable)
            .concat(untranscribed)
            .map(move |f| failed_to_output(f, &dl_topic));
        let mut outputs = responses.concat(failures).concat(bad_records);
        if let Some(invalid) = profile_dead_letters {
            outputs = outputs.concat(invalid);
        }
        let metrics_out = operators::sink::MetricsOut {
            topic: config.topics.metrics.clone(),
            interval: Duration::from_millis(config.engine.metrics_interval_ms),
            worker: index,
            process: shared.process,
        };
        operators::kafka_sink(outputs, writer, metrics.clone(), metrics_out).probe_with(&probe);
        Ok(())
    })?;

    drive(worker, &handle, &probe, &shared.stop, &config.engine);
    Ok(())
}

/// Split a stream of results into its successes and failures.
fn split<'s, T: 'static, E: 'static>(
    stream: Stream<'s, u64, Vec<Result<T, E>>>,
) -> (Stream<'s, u64, Vec<T>>, Stream<'s, u64, Vec<E>>) {
    stream.ok_err(|r| r)
}

/// This worker's share of `topic` (partitions `p % peers == index`), read from `start`;
/// `None` when the topic has fewer partitions than there are workers.
pub(crate) fn open_partitions(
    config: &Config,
    topic: &str,
    (index, peers): (usize, usize),
    start: Offset,
) -> anyhow::Result<Option<PartitionReader>> {
    let probe_consumer = config.kafka.consumer()?;
    let count = partition_count(&probe_consumer, topic, &config.kafka.brokers)?;
    let mine = partitions_for_worker(count, index, peers);
    if mine.is_empty() {
        return Ok(None);
    }
    Ok(Some(PartitionReader::open(
        &config.kafka,
        topic,
        mine,
        start,
    )?))
}

/// Step the worker until stopped; then drain: wait until everything read before the stop
/// is acknowledged (or the drain timeout passes), and commit synchronously.
fn drive(
    worker: &mut Worker,
    handle: &Rc<RefCell<SourceHandle>>,
    probe: &ProbeHandle<u64>,
    stop: &AtomicBool,
    engine: &crate::config::Engine,
) {
    while !stop.load(Ordering::Acquire) {
        worker.step_or_park(Some(Duration::from_millis(100)));
    }
    let started = Instant::now();
    let deadline = started + Duration::from_millis(engine.drain_timeout_ms);
    // Sources check the flag before reading, so nothing is read at a later time than the
    // start of the next wall-clock epoch.
    let stop_epoch = operators::next_epoch(engine.epoch_ms);
    while Instant::now() < deadline && probe.less_than(&stop_epoch) {
        worker.step_or_park(Some(Duration::from_millis(20)));
    }
    let drained = !probe.less_than(&stop_epoch);
    handle.borrow_mut().commit(probe, CommitMode::Sync);
    // Sources and pending utterances still hold capabilities by design; drop the graph
    // rather than wait for it to complete (uncommitted input is re-read on restart).
    for id in worker.installed_dataflows() {
        worker.drop_dataflow(id);
    }
    tracing::info!(
        drained,
        waited_ms = started.elapsed().as_millis() as u64,
        "worker stopped"
    );
}

fn last_timing(timings: &[(String, f64)]) -> f64 {
    timings.last().map_or(0.0, |(_, ms)| *ms)
}

fn decode(u: Utterance, max_ms: u64) -> Result<Decoded, Failed> {
    let started = Instant::now();
    let h = &u.meta.headers;
    let result = h.codec.parse::<Codec>().and_then(|codec| {
        let opts = DecodeOptions {
            codec,
            rate: h.rate,
            channels: h.channels,
            max_seconds: max_ms as f32 / 1000.0,
        };
        audio::decode(&u.bytes, &opts)
    });
    match result {
        Ok(audio) => {
            let mut meta = u.meta;
            meta.time("decode", started.elapsed().as_secs_f64() * 1e3);
            Ok(Decoded {
                meta,
                pcm: audio.samples,
                bytes: u.bytes,
            })
        }
        Err(e) => Err(Failed {
            meta: u.meta,
            bytes: u.bytes,
            stage: "decode".into(),
            error: e.to_string(),
        }),
    }
}

fn record_understanding(m: &mut WorkerMetrics, u: &Understood) {
    let stages = u.heard.meta.timings.iter();
    for (stage, ms) in stages.filter(|(s, _)| s == "acoustic" || s == "understand") {
        m.stage(stage, *ms);
    }
    m.batches(&u.heard.meta.batches, "understand");
    if u.needs_parent() {
        *m.errors
            .entry(format!("verdict_{}", u.safety.verdict.as_str()))
            .or_default() += 1;
    }
}

/// The response for an understood utterance, and a parent alert when it needs one.
fn understood_outputs(u: Understood, topics: &Topics, worker: usize) -> Vec<Output> {
    let mut out: Vec<Output> = alert_for(&u, topics).into_iter().collect();
    out.push(understood_response(
        u,
        topics,
        worker,
        serde_json::Map::new(),
    ));
    out
}

/// A parent alert, when the utterance needs one.
fn alert_for(u: &Understood, topics: &Topics) -> Option<Output> {
    if !u.needs_parent() {
        return None;
    }
    let meta = &u.heard.meta;
    let excerpt: String = u.transcript.chars().take(200).collect();
    let alert = serde_json::json!({
        "conversation": meta.conversation,
        "utterance": meta.utterance,
        "child": meta.child,
        "kind": u.safety.verdict,
        "categories": u.safety.categories,
        "score": u.safety.score,
        "excerpt": excerpt,
        "ts_ms": now_ms(),
    });
    Some(Output {
        record: OutRecord {
            topic: topics.alerts.clone(),
            key: Some(meta.conversation.clone().into_bytes()),
            payload: alert.to_string().into_bytes(),
            headers: vec![("utterance".into(), meta.utterance.clone().into_bytes())],
        },
        completed_ms: meta.completed_ms,
        kind: OutputKind::Alert,
    })
}

/// The response for an understood utterance, with `more` fields (the reply).
pub(crate) fn understood_response(
    u: Understood,
    topics: &Topics,
    worker: usize,
    more: serde_json::Map<String, serde_json::Value>,
) -> Output {
    let mut extra = serde_json::json!({
        "emotion": u.emotion,
        "safety": u.safety,
        "redacted": u.redacted,
    });
    if let Some(e) = extra.as_object_mut() {
        e.extend(more);
    }
    let mut heard = u.heard;
    heard.transcript = u.transcript;
    response_with(heard, &topics.responses, worker, extra)
}

fn response(t: Transcribed, topic: &str, worker: usize) -> Output {
    response_with(t, topic, worker, serde_json::json!({}))
}

fn response_with(t: Transcribed, topic: &str, worker: usize, extra: serde_json::Value) -> Output {
    let mut timings: serde_json::Map<String, serde_json::Value> = t
        .meta
        .timings
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!((v * 10.0).round() / 10.0)))
        .collect();
    let total = (now_ms() - t.meta.completed_ms) as f64;
    timings.insert("total".into(), serde_json::json!(total));
    let round = |v: f64| (v * 10.0).round() / 10.0;
    let spans: serde_json::Map<String, serde_json::Value> = t
        .meta
        .spans
        .iter()
        .map(|(k, a, b)| (k.clone(), serde_json::json!([round(*a), round(*b)])))
        .collect();
    let mut body = serde_json::json!({
        "conversation": t.meta.conversation,
        "utterance": t.meta.utterance,
        "child": t.meta.child,
        "transcript": t.transcript,
        "language": t.language,
        "audio_ms": t.audio_ms,
        "incomplete": t.meta.incomplete,
        "model": t.model,
        "timings_ms": timings,
        "spans_ms": spans,
        "batch": t.meta.batches.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "source": t.meta.sources,
        "worker": worker,
        "sent_ms": t.meta.headers.sent_ms,
        "processed_ms": now_ms(),
    });
    if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    Output {
        record: OutRecord {
            topic: topic.into(),
            key: Some(t.meta.conversation.clone().into_bytes()),
            payload: body.to_string().into_bytes(),
            headers: vec![("utterance".into(), t.meta.utterance.into_bytes())],
        },
        completed_ms: t.meta.completed_ms,
        kind: OutputKind::Response,
    }
}

/// An utterance that failed becomes one dead letter: its bytes, the first chunk's headers,
/// the reason, and where it came from.
fn failed_to_output(f: Failed, topic: &str) -> Output {
    let mut headers = wire::chunk_headers(&f.meta.headers);
    headers.push((
        "error".into(),
        format!("{}: {}", f.stage, f.error).into_bytes(),
    ));
    if let Some(src) = f.meta.sources.first() {
        headers.push(("source_topic".into(), src.topic.clone().into_bytes()));
        headers.push((
            "source_partition".into(),
            src.partition.to_string().into_bytes(),
        ));
        headers.push((
            "source_offset".into(),
            src.first_offset.to_string().into_bytes(),
        ));
        headers.push((
            "source_offset_end".into(),
            src.last_offset.to_string().into_bytes(),
        ));
    }
    Output {
        record: OutRecord {
            topic: topic.into(),
            key: Some(f.meta.conversation.into_bytes()),
            payload: f.bytes,
            headers,
        },
        completed_ms: f.meta.completed_ms,
        kind: OutputKind::DeadLetter,
    }
}
