//! Resizing a timely cluster is stopping it and starting it at the new size
//! (docs/operations.md): one process answers part of a stream, is stopped with SIGTERM,
//! a cluster of two takes over from the committed offsets, and every utterance is
//! answered; anything answered twice was answered by the first process before it stopped
//! (work whose offsets it had not committed), never twice by the new cluster.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{serial, Broker, Processor};
use teddyflow_connectors::fleet::{
    default_voices, encode, synthesize, to_records, Utterance, CHILD_PHRASES,
};
use teddyflow_connectors::wire::Codec;
use teddyflow_connectors::OutRecord;

const TOPICS: [&str; 6] = [
    "teddy.audio",
    "teddy.responses",
    "teddy.metrics",
    "teddy.deadletter",
    "teddy.alerts",
    "teddy.speech",
];

fn ids(records: &[common::Record]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            let v = r.response();
            (v.conversation, v.utterance)
        })
        .collect()
}

#[test]
fn one_process_then_two_answer_every_utterance() {
    let _guard = serial();
    let broker = Broker::start("resize");
    broker.create_topics(&TOPICS, 4);
    let voices = default_voices();
    let mut stream: Vec<Vec<OutRecord>> = Vec::new();
    let mut expected = BTreeSet::new();
    for i in 0..10 {
        let wav = synthesize(CHILD_PHRASES[i % CHILD_PHRASES.len()], &voices[i % 2]).unwrap();
        let u = Utterance {
            conversation: format!("toy-{}", i % 6),
            utterance: format!("u{i}"),
            child: None,
            audio: encode(&wav, Codec::Flac).unwrap(),
        };
        expected.insert((u.conversation.clone(), u.utterance.clone()));
        stream.push(to_records(&u, 4096, "teddy.audio", common::now_ms()));
    }
    // Replies off: the test is about offsets and ownership, not the reply model's time.
    let sets = ["answering.enabled=false"];
    broker.produce(&stream[..3].concat());
    std::thread::scope(|s| {
        // Once the first process answers, the toys keep talking, one utterance every
        // 700 ms, through its stop and the new cluster's start.
        s.spawn(|| {
            broker.collect("teddy.responses", Duration::from_secs(240), |r| {
                !r.is_empty()
            });
            for records in &stream[3..] {
                broker.produce(records);
                std::thread::sleep(Duration::from_millis(700));
            }
        });
        let mut one = Processor::start(&broker, "resize", &sets);
        let first = broker.collect("teddy.responses", Duration::from_secs(240), |r| {
            r.len() >= 5
        });
        assert!(first.len() >= 5, "log:\n{}", one.log_text());
        let status = one.terminate(Duration::from_secs(60));
        assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    });
    let answered_by_one: BTreeSet<_> =
        ids(&broker.collect("teddy.responses", Duration::from_secs(3), |_| false))
            .into_iter()
            .collect();
    assert!(
        answered_by_one.len() < expected.len(),
        "the stop came mid-stream: {answered_by_one:?}"
    );

    let [a, b] = Processor::start_pair(&broker, "resize", &sets);
    let all = broker.collect("teddy.responses", Duration::from_secs(240), |r| {
        ids(r).into_iter().collect::<BTreeSet<_>>() == expected
    });
    let got: BTreeSet<_> = ids(&all).into_iter().collect();
    assert_eq!(got, expected, "logs:\n{}\n{}", a.log_text(), b.log_text());
    let settled = broker.collect("teddy.responses", Duration::from_secs(5), |_| false);
    let mut count: BTreeMap<(String, String), usize> = BTreeMap::new();
    for id in ids(&settled) {
        *count.entry(id).or_default() += 1;
    }
    for (id, n) in &count {
        assert!(
            *n == 1 || (*n == 2 && answered_by_one.contains(id)),
            "{id:?} answered {n} times"
        );
    }
    assert!(a.log_text().contains("partitions=[0, 2]"));
    assert!(b.log_text().contains("partitions=[1, 3]"));
}
