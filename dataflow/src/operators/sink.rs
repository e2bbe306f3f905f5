//! The Kafka sink: writes records and holds each record's time until the broker has
//! acknowledged it, so the probe after this operator says what is durable. Failed
//! deliveries are retried: output is at least once, and ids make repeats recognisable.
//!
//! A response whose reply is being spoken waits here until the first speech record of that
//! reply is acknowledged, so it can report `first_audio` (final chunk in → first audio
//! durable) — the silence the child actually hears.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use teddyflow_connectors::kafka::AckedWriter;
use teddyflow_connectors::wire::OutRecord;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::metrics::WorkerMetrics;
use crate::types::now_ms;

/// A record to write, with what metrics need once it is acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub record: OutRecord,
    /// When its utterance completed (0 when not an utterance).
    pub completed_ms: i64,
    pub kind: OutputKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputKind {
    Response,
    DeadLetter,
    Alert,
    /// A chunk of reply speech; `first` is the first chunk of its reply.
    Speech {
        first: bool,
    },
}

/// Conversation and utterance of a record (its key and `utterance` header).
type ReplyKey = (Vec<u8>, Vec<u8>);

fn reply_key(record: &OutRecord) -> ReplyKey {
    let utterance = record
        .headers
        .iter()
        .find(|(k, _)| k == "utterance")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    (record.key.clone().unwrap_or_default(), utterance)
}

/// Where a reply's first speech chunk stands.
enum FirstChunk {
    /// Sent, not yet acknowledged; the reply's response waits here if it has arrived.
    Unacked(Option<(Capability<u64>, Output)>),
    /// Acknowledged at this wall-clock ms; the response has not arrived yet.
    Acked(i64),
}

/// First-audio bookkeeping per reply (conversation + utterance).
#[derive(Default)]
struct FirstAudio {
    replies: HashMap<ReplyKey, FirstChunk>,
    held: usize,
}

impl FirstAudio {
    fn sent(&mut self, out: &Output) {
        if out.kind == (OutputKind::Speech { first: true }) {
            self.replies
                .entry(reply_key(&out.record))
                .or_insert(FirstChunk::Unacked(None));
        }
    }

    /// The first chunk of a reply was acknowledged: its response, if it was waiting.
    fn acked(&mut self, out: &Output) -> Option<(Capability<u64>, Output)> {
        if out.kind != (OutputKind::Speech { first: true }) {
            return None;
        }
        let key = reply_key(&out.record);
        match self.replies.remove(&key) {
            Some(FirstChunk::Unacked(Some((cap, response)))) => {
                self.held -= 1;
                Some((cap, with_first_audio(response, now_ms())))
            }
            _ => {
                self.replies.insert(key, FirstChunk::Acked(now_ms()));
                None
            }
        }
    }

    /// A response ready to send now (with `first_audio` filled in), or `None` if it waits
    /// for its reply's first chunk to be acknowledged.
    fn release(&mut self, cap: Capability<u64>, out: Output) -> Option<(Capability<u64>, Output)> {
        if out.kind != OutputKind::Response {
            return Some((cap, out));
        }
        let key = reply_key(&out.record);
        match self.replies.get_mut(&key) {
            Some(FirstChunk::Unacked(waiting @ None)) => {
                *waiting = Some((cap, out));
                self.held += 1;
                None
            }
            Some(FirstChunk::Acked(at)) => {
                let at = *at;
                self.replies.remove(&key);
                Some((cap, with_first_audio(out, at)))
            }
            _ => Some((cap, out)),
        }
    }
}

/// Put `first_audio` (from the utterance's completion to `acked_ms`) into a response's
/// `timings_ms`, and make `total` end now.
fn with_first_audio(mut out: Output, acked_ms: i64) -> Output {
    let first_audio = (acked_ms - out.completed_ms) as f64;
    out.record.payload = with_timings(&out.record.payload, first_audio, out.completed_ms);
    out
}

/// Put `first_audio` into a response's `timings_ms`, and make `total` end now.
fn with_timings(payload: &[u8], first_audio_ms: f64, completed_ms: i64) -> Vec<u8> {
    let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return payload.to_vec();
    };
    if let Some(t) = body.get_mut("timings_ms").and_then(|t| t.as_object_mut()) {
        t.insert("first_audio".into(), serde_json::json!(first_audio_ms));
        t.insert(
            "total".into(),
            serde_json::json!((now_ms() - completed_ms) as f64),
        );
    }
    body.to_string().into_bytes()
}

pub struct MetricsOut {
    pub topic: String,
    pub interval: Duration,
    pub worker: usize,
    pub process: usize,
}

pub fn kafka_sink<'s>(
    stream: Stream<'s, u64, Vec<Output>>,
    writer: AckedWriter,
    metrics: Rc<RefCell<WorkerMetrics>>,
    metrics_out: MetricsOut,
) -> Stream<'s, u64, Vec<()>> {
    let scope = stream.scope();
    stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "KafkaSink", move |_cap, info| {
        let activator = scope.activator_for(info.address);
        let mut queue: VecDeque<(Capability<u64>, Output)> = VecDeque::new();
        let mut sent: HashMap<u64, (Capability<u64>, Output, Instant)> = HashMap::new();
        let mut next_id = 0u64;
        let mut last_metrics = Instant::now();
        let mut first_audio = FirstAudio::default();
        move |(input, _frontier), _output| {
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else { return };
                queue.extend(data.drain(..).map(|o| (cap.clone(), o)));
            });
            while let Some((cap, out)) = queue.pop_front() {
                let Some((cap, out)) = first_audio.release(cap, out) else { continue };
                next_id += 1;
                match writer.send(next_id, &out.record) {
                    Ok(()) => {
                        first_audio.sent(&out);
                        sent.insert(next_id, (cap, out, Instant::now()));
                    }
                    Err(e) => {
                        // Queue full or a transient error: keep it and try again shortly.
                        tracing::debug!(error = %e, "produce deferred");
                        queue.push_front((cap, out));
                        break;
                    }
                }
            }
            for delivery in writer.poll() {
                let Some((cap, out, at)) = sent.remove(&delivery.id) else { continue };
                let mut m = metrics.borrow_mut();
                match delivery.result {
                    Ok(()) => {
                        m.stage("sink_ack", at.elapsed().as_secs_f64() * 1e3);
                        match out.kind {
                            OutputKind::Response => {
                                m.utterances_done += 1;
                                m.stage("end_to_end", (now_ms() - out.completed_ms) as f64);
                            }
                            OutputKind::DeadLetter => m.deadletters += 1,
                            OutputKind::Alert => m.alerts += 1,
                            OutputKind::Speech { first } => {
                                m.speech_chunks += 1;
                                if first {
                                    queue.extend(first_audio.acked(&out));
                                    m.stage("first_audio", (now_ms() - out.completed_ms) as f64);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, topic = %out.record.topic, "delivery failed; retrying");
                        m.error("sink");
                        queue.push_back((cap, out));
                    }
                }
            }
            metrics.borrow_mut().in_flight = (queue.len() + sent.len() + first_audio.held) as i64;
            if last_metrics.elapsed() >= metrics_out.interval {
                last_metrics = Instant::now();
                let snapshot = metrics.borrow_mut().snapshot(
                    metrics_out.worker,
                    metrics_out.process,
                    metrics_out.interval.as_millis() as u64,
                );
                writer.send_untracked(&OutRecord {
                    topic: metrics_out.topic.clone(),
                    key: Some(format!("worker-{}", metrics_out.worker).into_bytes()),
                    payload: snapshot.to_string().into_bytes(),
                    headers: Vec::new(),
                });
            }
            let wait = if queue.is_empty() && sent.is_empty() {
                metrics_out.interval.saturating_sub(last_metrics.elapsed())
            } else {
                Duration::from_millis(2)
            };
            activator.activate_after(wait);
        }
    })
}
