//! Writing: every output is encoded once, here, and handed to the Kafka sink, which holds
//! each time until the broker has acknowledged what was written for it (so the probe after
//! it says which input is fully answered). Before the sink, a response whose reply is being
//! spoken waits until the reply's first speech chunk is acknowledged, so it can report
//! `first_audio` — the silence the child actually hears.
//!
//! ```text
//! outputs ─► HoldFirstAudio ─► encode ─► KafkaSink ─► (probe)
//!                 ▲                          │ acks: metrics, first audio
//!                 └──────── FirstAudio ◄─────┘
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use teddyflow_connectors::kafka::{AckedWriter, ProduceError};
use teddyflow_connectors::wire::OutRecord;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::Map;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;
use timely::scheduling::Activator;

use super::Ctx;
use crate::envelope::now_ms;
use crate::operators::{kafka_sink, Pending, Receipts};
use crate::outputs::{DeadLetter, DeadLetterReason, Out, OutKind, Output, Receipt, H_UTTERANCE};
use crate::stage::Stage;

/// Conversation and utterance of a reply.
type ReplyKey = (String, String);

/// Where each reply's first speech chunk stands, shared by the sink (which reports acks)
/// and the hold operator (which releases responses).
#[derive(Default)]
pub struct FirstAudio {
    replies: HashMap<ReplyKey, FirstChunk>,
    activator: Option<Activator>,
}

enum FirstChunk {
    /// On its way to the broker.
    Sent,
    /// Acknowledged at this wall-clock ms.
    Acked(i64),
    /// The broker refused it: the response goes on without `first_audio`.
    Lost,
}

impl FirstAudio {
    /// The sink's news about a first speech chunk: wake the hold operator.
    pub fn acked(&mut self, key: ReplyKey, at_ms: i64) {
        self.replies.insert(key, FirstChunk::Acked(at_ms));
        if let Some(a) = &self.activator {
            a.activate();
        }
    }

    /// The sink's news that a first speech chunk will never be acknowledged.
    pub fn lost(&mut self, key: ReplyKey) {
        self.replies.insert(key, FirstChunk::Lost);
        if let Some(a) = &self.activator {
            a.activate();
        }
    }

    fn sent(&mut self, key: ReplyKey) {
        self.replies.entry(key).or_insert(FirstChunk::Sent);
    }

    /// A response may go now (`Some(first_audio ack time)` to report) or must wait.
    fn ready(&mut self, key: &ReplyKey) -> Option<Option<i64>> {
        match self.replies.get(key) {
            None => Some(None),
            Some(FirstChunk::Sent) => None,
            Some(FirstChunk::Acked(at)) => {
                let at = *at;
                self.replies.remove(key);
                Some(Some(at))
            }
            Some(FirstChunk::Lost) => {
                self.replies.remove(key);
                Some(None)
            }
        }
    }
}

pub trait HoldFirstAudio<'s> {
    /// Pass every output on at once, except a response whose reply's first speech chunk has
    /// gone by but is not acknowledged yet: that one waits (holding its time) and goes on
    /// with `timings_ms.first_audio` filled in once it is.
    fn hold_first_audio(
        self,
        board: Rc<RefCell<FirstAudio>>,
        held_gauge: Rc<Cell<usize>>,
    ) -> Stream<'s, u64, Vec<Output>>;
}

impl<'s> HoldFirstAudio<'s> for Stream<'s, u64, Vec<Output>> {
    fn hold_first_audio(
        self,
        board: Rc<RefCell<FirstAudio>>,
        held_gauge: Rc<Cell<usize>>,
    ) -> Stream<'s, u64, Vec<Output>> {
        let scope = self.scope();
        self.unary_frontier(Pipeline, "HoldFirstAudio", move |_cap, info| {
            board.borrow_mut().activator = Some(scope.activator_for(info.address));
            let mut held: Vec<(Capability<u64>, Output)> = Vec::new();
            move |(input, _frontier), output| {
                let mut board = board.borrow_mut();
                input.for_each(|cap, data| {
                    let Some(cap) = cap.retain_least(0) else {
                        return;
                    };
                    for out in data.drain(..) {
                        if let Out::Speech(s) = &out.out {
                            if s.is_first() {
                                board.sent((s.conversation.clone(), s.headers.utterance.clone()));
                            }
                        }
                        held.push((cap.clone(), out));
                    }
                });
                held.retain_mut(|(cap, out)| match release(&mut board, out) {
                    true => {
                        output.session(cap).give(out.clone());
                        false
                    }
                    false => true,
                });
                held_gauge.set(held.len());
            }
        })
    }
}

/// Whether `out` may go now; a released response gets its first-audio timing.
fn release(board: &mut FirstAudio, out: &mut Output) -> bool {
    let Out::Response(r) = &mut out.out else {
        return true;
    };
    let key = (r.conversation.clone(), r.utterance.clone());
    match board.ready(&key) {
        None => false,
        Some(acked) => {
            if let Some(at) = acked {
                r.first_audio_at(out.completed_ms, at);
            }
            true
        }
    }
}

pub trait Write<'s> {
    /// Encode every output and write it; the returned stream's frontier says what is durable.
    fn write(self, writer: Rc<AckedWriter>, ctx: &Ctx) -> Stream<'s, u64, Vec<()>>;
}

impl<'s> Write<'s> for Stream<'s, u64, Vec<Output>> {
    fn write(self, writer: Rc<AckedWriter>, ctx: &Ctx) -> Stream<'s, u64, Vec<()>> {
        let board = Rc::new(RefCell::new(FirstAudio::default()));
        let config = ctx.config.clone();
        let held = ctx.metrics().in_flight_gauge();
        let records = self
            .hold_first_audio(board.clone(), held)
            .map(move |o| o.encode(&config));
        let pending: Pending = ctx.metrics().in_flight_gauge();
        let receipts = WriteReceipts {
            ctx: ctx.clone(),
            board,
        };
        kafka_sink(records, writer, pending, receipts)
    }
}

/// What the write stage does with the broker's answers: metrics, first audio, and a
/// small dead letter in place of an output the broker refused.
struct WriteReceipts {
    ctx: Ctx,
    board: Rc<RefCell<FirstAudio>>,
}

impl Receipts<Receipt> for WriteReceipts {
    fn acked(&mut self, r: Receipt, after_ms: f64) {
        let mut m = self.ctx.metrics();
        m.stage(Stage::SinkAck, after_ms);
        let since_completed = (now_ms() - r.completed_ms) as f64;
        match r.kind {
            OutKind::Response => {
                m.answered();
                m.stage(Stage::EndToEnd, since_completed);
            }
            OutKind::DeadLetter(reason) => m.dead_lettered(reason),
            OutKind::Alert(kind) => m.alerted(kind),
            OutKind::Speech { first } => {
                m.counts.speech_chunks += 1;
                if let (true, Some(key)) = (first, r.utterance) {
                    self.board.borrow_mut().acked(key, now_ms());
                    m.stage(Stage::FirstAudio, since_completed);
                }
            }
        }
    }

    fn refused(
        &mut self,
        r: Receipt,
        record: OutRecord,
        error: &ProduceError,
    ) -> Option<(OutRecord, Receipt)> {
        self.ctx.metrics().counts.outputs_refused += 1;
        if let (OutKind::Speech { first: true }, Some(key)) = (r.kind, &r.utterance) {
            self.board.borrow_mut().lost(key.clone());
        }
        if let OutKind::DeadLetter(_) = r.kind {
            return None; // already cut to fit; nothing smaller to say
        }
        let c = &self.ctx.config;
        let dead = refused_output(&record, error);
        let receipt = Receipt {
            kind: OutKind::DeadLetter(dead.reason),
            ..r
        };
        Some((
            dead.encode(&c.topics.deadletter, c.limits.max_deadletter_bytes),
            receipt,
        ))
    }
}

/// A dead letter for an output the broker refused: where it was going and why, without
/// its payload (which is what the broker would not take).
fn refused_output(record: &OutRecord, error: &ProduceError) -> DeadLetter {
    let mut headers: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(k, _)| k == H_UTTERANCE)
        .cloned()
        .collect();
    headers.push(("refused_topic".into(), record.topic.clone().into_bytes()));
    let bytes = record.payload.len().to_string();
    headers.push(("refused_bytes".into(), bytes.into_bytes()));
    DeadLetter {
        reason: DeadLetterReason::Refused,
        key: record.key.clone(),
        value: Vec::new(),
        headers,
        error: format!("output refused by the broker: {error}"),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::tests::meta;
    use crate::outputs::{Heard, Response, SpeechChunk};
    use teddyflow_connectors::wire::{ChunkHeaders, Codec};
    use timely::dataflow::operators::capture::Event;
    use timely::dataflow::operators::{Capture, Input, Probe};

    fn response(utterance: &str, completed_ms: i64) -> Output {
        let mut m = meta("conv", utterance);
        m.completed_ms = completed_ms;
        let heard = Heard {
            transcript: String::new(),
            language: "en".into(),
            asr: Default::default(),
            audio_ms: 0,
            acoustic: None,
            second_opinion: None,
            alternatives: Vec::new(),
        };
        let r = Response::new(&m, 0, heard);
        Output::new(Out::Response(Box::new(r)), completed_ms)
    }

    fn speech(utterance: &str, seq: u32) -> Output {
        let headers = ChunkHeaders {
            utterance: utterance.into(),
            seq,
            is_final: false,
            codec: Codec::PcmS16le,
            rate: Some(16_000),
            channels: 1,
            child: None,
            sent_ms: None,
        };
        let chunk = SpeechChunk {
            conversation: "conv".into(),
            headers,
            pcm: vec![0; 4],
        };
        Output::new(Out::Speech(chunk), 0)
    }

    fn first_audio(o: &Output) -> Option<f64> {
        match &o.out {
            Out::Response(r) => r.timing(Stage::FirstAudio),
            _ => None,
        }
    }

    /// Oracle: speech and responses without speech pass at once; a response waits for its
    /// reply's first chunk to be acknowledged (holding its time, so the frontier waits too),
    /// then goes with `first_audio` = ack − completion; a response whose first chunk was
    /// acknowledged before it arrived goes at once with the same figure.
    #[test]
    fn a_response_waits_for_its_first_speech_chunk_to_be_acknowledged() {
        let (got, held_frontier) = timely::execute_directly(|worker| {
            let board = Rc::new(RefCell::new(FirstAudio::default()));
            let gauge = Rc::new(Cell::new(0));
            let (mut input, probe, captured) = worker.dataflow::<u64, _, _>(|scope| {
                let (h, s) = scope.new_input::<Vec<Output>>();
                let held = s.hold_first_audio(board.clone(), gauge.clone());
                let (probe, held) = held.probe();
                (h, probe, held.capture())
            });
            input.send(speech("u1", 0));
            input.send(speech("u1", 1));
            input.send(response("u1", 1_000));
            input.send(response("u0", 500)); // no speech: goes at once
            input.advance_to(1);
            for _ in 0..10 {
                worker.step();
            }
            let held_frontier = probe.less_than(&1);
            assert_eq!(gauge.get(), 1, "one response held");
            board
                .borrow_mut()
                .acked(("conv".into(), "u1".into()), 1_650);
            // Acknowledged before its response arrives.
            input.send(speech("u2", 0));
            input.advance_to(2);
            for _ in 0..10 {
                worker.step();
            }
            board
                .borrow_mut()
                .acked(("conv".into(), "u2".into()), 2_200);
            input.send(response("u2", 2_000));
            drop(input);
            while !probe.done() {
                worker.step();
            }
            (captured, held_frontier)
        });
        assert!(held_frontier, "a held response holds its time");
        let outs: Vec<(u64, Output)> = got
            .try_iter()
            .flat_map(|event| match event {
                Event::Messages(t, v) => {
                    let t = *t.as_singleton().expect("one time per message");
                    v.into_iter().map(|o| (t, o)).collect()
                }
                Event::Progress(_) => Vec::new(),
            })
            .collect();
        assert_eq!(outs.len(), 6);
        let response_of = |u: &str| {
            outs.iter()
                .find(|(_, o)| matches!(&o.out, Out::Response(r) if r.utterance == u))
                .unwrap()
        };
        assert_eq!(first_audio(&response_of("u0").1), None);
        let (t1, r1) = response_of("u1");
        assert_eq!((*t1, first_audio(r1)), (0, Some(650.0)));
        assert_eq!(first_audio(&response_of("u2").1), Some(200.0));
    }
}
