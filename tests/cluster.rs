//! Two timely processes against the real broker: partitions spread over all workers,
//! conversations owned by one worker, every utterance answered exactly once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{serial, Broker, Processor};
use teddyflow_connectors::fleet::{
    default_voices, encode, synthesize, to_records, Utterance, CHILD_PHRASES,
};
use teddyflow_connectors::wire::Codec;
use teddyflow_connectors::OutRecord;

#[test]
fn two_processes_answer_every_utterance_exactly_once() {
    let _guard = serial();
    let broker = Broker::start("cluster");
    broker.create_topics(
        &[
            "teddy.audio",
            "teddy.responses",
            "teddy.metrics",
            "teddy.deadletter",
        ],
        4,
    );
    let voices = default_voices();
    let mut records: Vec<OutRecord> = Vec::new();
    let mut expected = Vec::new();
    for i in 0..8 {
        let wav = synthesize(CHILD_PHRASES[i % CHILD_PHRASES.len()], &voices[i % 2 + 2]).unwrap();
        let u = Utterance {
            conversation: format!("toy-{}", i % 5),
            utterance: format!("u{i}"),
            child: None,
            audio: encode(&wav, if i % 2 == 0 { Codec::Flac } else { Codec::Wav }).unwrap(),
        };
        expected.push((u.conversation.clone(), u.utterance.clone()));
        // Small chunks, so conversations' chunks travel between processes to their owner.
        records.extend(to_records(&u, 2048, "teddy.audio", common::now_ms()));
    }
    broker.produce(&records);

    let [p0, p1] = Processor::start_pair(&broker, "cluster", &[]);

    let responses = broker.collect("teddy.responses", Duration::from_secs(180), |r| {
        r.len() >= expected.len()
    });
    let settled = broker.collect("teddy.responses", Duration::from_secs(3), |_| false);
    assert_eq!(
        responses.len(),
        expected.len(),
        "logs:\n{}\n{}",
        p0.log_text(),
        p1.log_text()
    );
    assert_eq!(settled.len(), expected.len(), "no utterance answered twice");
    let mut by_id = BTreeMap::new();
    let mut workers = BTreeMap::new();
    for r in &settled {
        let r = r.response();
        let id = (r.conversation.clone(), r.utterance.clone());
        *by_id.entry(id.clone()).or_insert(0) += 1;
        workers.entry(id.0).or_insert_with(Vec::new).push(r.worker);
    }
    let mut want = expected.clone();
    want.sort();
    assert_eq!(by_id.keys().cloned().collect::<Vec<_>>(), want);
    // One worker owns each conversation; and both processes did work.
    for (conv, ws) in &workers {
        assert!(
            ws.iter().all(|w| *w == ws[0]),
            "{conv} answered by workers {ws:?}"
        );
    }
    let used: std::collections::BTreeSet<usize> = workers.values().flatten().copied().collect();
    assert_eq!(used.len(), 2, "both processes answered: {workers:?}");
    let p0_log = p0.log_text();
    assert!(p0_log.contains("partitions=[0, 2]"), "{p0_log}");
    assert!(p1.log_text().contains("partitions=[1, 3]"));
}
