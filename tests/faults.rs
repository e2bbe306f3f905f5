//! Faults and hostile input on the real broker (issue 11): a storm of malformed records with
//! an oversized utterance among valid ones, back-pressure with a short idle timeout, a
//! paused broker, and a broker replaced by an empty one. Nothing may wedge, be cut short or
//! be lost.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{serial, Broker, Processor, Record};
use teddyflow_connectors::fleet::{encode, synthesize, to_records, Utterance, Voice};
use teddyflow_connectors::wire::{chunk_headers, ChunkHeaders, Codec, OutRecord};

const AUDIO: &str = "teddy.audio";
const RESPONSES: &str = "teddy.responses";
const DEADLETTER: &str = "teddy.deadletter";

fn topics(broker: &Broker) {
    let names = [AUDIO, RESPONSES, DEADLETTER, "teddy.metrics"];
    broker.create_topics(&names, 2);
}

/// Short spoken child phrases, `n` of them, over a few conversations and codecs.
fn spoken(n: usize, prefix: &str) -> Vec<Utterance> {
    let phrases = teddyflow_connectors::fleet::CHILD_PHRASES;
    let codecs = [Codec::Flac, Codec::Wav, Codec::Mp3, Codec::PcmS16le];
    let voice = Voice::new("en-us+f3", 80, 150);
    (0..n)
        .map(|i| {
            let wav = synthesize(phrases[i % phrases.len()], &voice).unwrap();
            Utterance {
                conversation: format!("{prefix}-toy-{}", i % 3),
                utterance: format!("{prefix}-u{i}"),
                child: None,
                audio: encode(&wav, codecs[i % codecs.len()]).unwrap(),
            }
        })
        .collect()
}

fn records(utterances: &[Utterance], chunk_bytes: usize) -> Vec<OutRecord> {
    let now = common::now_ms();
    utterances
        .iter()
        .flat_map(|u| to_records(u, chunk_bytes, AUDIO, now))
        .collect()
}

fn ids(responses: &[Record]) -> BTreeMap<String, bool> {
    responses
        .iter()
        .map(|r| {
            let r = r.response();
            (r.utterance, r.incomplete)
        })
        .collect()
}

/// One malformed record of kind `k` (each becomes exactly one dead letter).
fn malformed(k: usize, n: usize) -> OutRecord {
    let headers = ChunkHeaders {
        utterance: format!("bad-{n}"),
        seq: 0,
        is_final: true,
        codec: Codec::Flac,
        rate: None,
        channels: 1,
        child: None,
        sent_ms: None,
    };
    let garbage: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
    let mut hs = chunk_headers(&headers);
    let set = |hs: &mut Vec<(String, Vec<u8>)>, name: &str, value: &str| {
        hs.retain(|(k, _)| k != name);
        hs.push((name.into(), value.as_bytes().to_vec()));
    };
    let mut key = Some(format!("storm-{}", n % 7).into_bytes());
    match k % 8 {
        0 => hs.retain(|(k, _)| k != "utterance"),
        1 => set(&mut hs, "codec", "aac"),
        2 => set(&mut hs, "seq", "x"),
        3 => key = None,
        4 => {
            set(&mut hs, "codec", "pcm_s16le");
            set(&mut hs, "rate", "1000000000");
        }
        5 => set(&mut hs, "channels", "99"),
        6 => set(&mut hs, "final", "maybe"),
        _ => {} // undecodable flac: fails as a whole utterance
    }
    OutRecord {
        topic: AUDIO.into(),
        key,
        payload: garbage,
        headers: hs,
    }
}

/// 41 s of a tone as one WAV utterance (1.3 MB): longer than `max_utterance_ms`, so it is
/// dead-lettered whole, and bigger than a broker takes as one record.
fn long_wav() -> Utterance {
    let rate = 16_000u32;
    let samples: Vec<i16> = (0..rate * 41)
        .map(|i| ((i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 8000.0) as i16)
        .collect();
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut wav = Vec::with_capacity(44 + data.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(data.len() as u32).to_le_bytes());
    wav.extend_from_slice(&data);
    Utterance {
        conversation: "storm-long".into(),
        utterance: "long".into(),
        child: None,
        audio: encode(&wav, Codec::Wav).unwrap(),
    }
}

/// Defect 1: hundreds of malformed records and one oversized utterance among ten valid
/// ones. Every valid utterance is answered, every bad record is dead-lettered once with a
/// reason, and the oversized dead letter is cut to fit (it used to wedge its worker).
#[test]
fn a_storm_of_bad_input_and_an_oversized_utterance_never_block_the_valid_ones() {
    let _guard = serial();
    let broker = Broker::start("storm");
    topics(&broker);
    let valid = spoken(10, "ok");
    let mut recs = Vec::new();
    let bad = 400;
    for n in 0..bad {
        recs.push(malformed(n, n));
        if n % 40 == 0 {
            recs.extend(records(&valid[n / 40..n / 40 + 1], 16 * 1024));
        }
    }
    recs.extend(records(&[long_wav()], 200 * 1024));
    broker.produce(&recs);

    let p = Processor::start(&broker, "storm", &["engine.workers=2"]);
    let responses = broker.collect(RESPONSES, Duration::from_secs(240), |r| r.len() >= 10);
    let answered = ids(&responses);
    assert_eq!(answered.len(), 10, "log: {}", p.log_text());
    assert!(answered.values().all(|incomplete| !incomplete));
    let dead = broker.collect(DEADLETTER, Duration::from_secs(60), |d| d.len() > bad);
    let later = broker.collect(DEADLETTER, Duration::from_secs(3), |_| false);
    assert_eq!(
        later.len(),
        bad + 1,
        "one dead letter per bad record: {}",
        dead.len()
    );
    assert!(later.iter().all(|d| d.header("error").is_some()));
    let long = later
        .iter()
        .find(|d| d.header("utterance") == Some("long"))
        .expect("the oversized utterance is dead-lettered");
    assert_eq!(long.header("truncated"), Some("1"));
    let original: usize = long.header("original_bytes").unwrap().parse().unwrap();
    assert!(original > 1_200_000, "{original}");
    assert!(long.payload().len() < 1_000_000);
    assert!(long.header("error").unwrap().contains("decode"), "{long:?}");
    let rate = later
        .iter()
        .filter(|d| d.header("rate") == Some("1000000000"))
        .count();
    assert_eq!(rate, bad / 8, "absurd rates are dead letters, not answered");
}

/// Defect 2: with one utterance admitted at a time and a short idle timeout, utterances
/// whose last chunks are still in Kafka while reading is paused must not be cut short.
#[test]
fn back_pressure_never_cuts_an_utterance_short() {
    let _guard = serial();
    let broker = Broker::start("backpressure");
    topics(&broker);
    let utterances = spoken(6, "bp");
    // The first utterance whole, then the first chunk of each other one, then their rest:
    // when the first completes and reading pauses behind it, the others are partial with
    // their remaining chunks still in Kafka.
    let per: Vec<Vec<OutRecord>> = utterances
        .iter()
        .map(|u| to_records(u, 2 * 1024, AUDIO, common::now_ms()))
        .collect();
    assert!(
        per.iter().all(|c| c.len() > 1),
        "every utterance in several chunks"
    );
    let mut recs = per[0].clone();
    recs.extend(per[1..].iter().map(|c| c[0].clone()));
    recs.extend(per[1..].iter().flat_map(|c| c[1..].to_vec()));
    broker.produce(&recs);
    let sets = [
        "engine.max_pending_utterances=1",
        // One record per read, so admission is checked between every two records.
        "engine.poll_batch=1",
        // Each utterance's work (speech-to-text, understanding) outlasts the timeout.
        "limits.utterance_idle_timeout_ms=300",
        "answering.enabled=false",
    ];
    let p = Processor::start(&broker, "backpressure", &sets);
    let responses = broker.collect(RESPONSES, Duration::from_secs(240), |r| r.len() >= 6);
    let answered = ids(&responses);
    assert_eq!(answered.len(), 6, "log: {}", p.log_text());
    let cut: Vec<&String> = answered
        .iter()
        .filter(|(_, i)| **i)
        .map(|(u, _)| u)
        .collect();
    assert!(cut.is_empty(), "cut short: {cut:?}");
    let dead = broker.collect(DEADLETTER, Duration::from_secs(2), |_| false);
    assert!(dead.is_empty(), "{dead:?}");
}

/// A broker that stops answering for a while (SIGSTOP): everything is answered once it
/// is back, nothing lost, and the outage is logged once, not per record.
#[test]
fn a_paused_broker_loses_nothing() {
    let _guard = serial();
    let broker = Broker::start("paused");
    topics(&broker);
    let p = Processor::start(&broker, "paused", &[]);
    let first = spoken(2, "before");
    broker.produce(&records(&first, 16 * 1024));
    let r = broker.collect(RESPONSES, Duration::from_secs(180), |r| r.len() >= 2);
    assert_eq!(r.len(), 2, "log: {}", p.log_text());
    let rest = spoken(4, "during");
    broker.produce(&records(&rest, 16 * 1024));
    broker.pause();
    std::thread::sleep(Duration::from_secs(12));
    broker.resume();
    let all = broker.collect(RESPONSES, Duration::from_secs(180), |r| r.len() >= 6);
    let answered = ids(&all);
    assert_eq!(answered.len(), 6, "log: {}", p.log_text());
    let log = p.log_text();
    let outage_lines = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        outage_lines <= 6,
        "an outage logs a line when it starts, not per retry:\n{log}"
    );
}

/// Defect 3: the broker restarts with an empty log (its topics recreated): the processor
/// notices its offsets are gone, starts over as documented, and answers new utterances.
#[test]
#[ignore = "flaky: librdkafka 2.12 may crash the processor when topics come back with new ids (librdkafka issues 4778, 4964); run with --ignored. tests/kafka_faults.rs covers the reader alone"]
fn a_broker_that_lost_its_log_is_read_again() {
    let _guard = serial();
    let broker = Broker::start("emptied");
    topics(&broker);
    let mut p = Processor::start(&broker, "emptied", &[]);
    broker.produce(&records(&spoken(3, "old"), 16 * 1024));
    let r = broker.collect(RESPONSES, Duration::from_secs(180), |r| r.len() >= 3);
    assert_eq!(r.len(), 3, "log: {}", p.log_text());
    // The old offsets are committed and the reader has seen the broker hold them (it asks
    // once per check): a broker that forgets a commit it never confirmed proves nothing.
    std::thread::sleep(teddyflow_connectors::kafka::LOG_CHECK_INTERVAL + Duration::from_secs(2));
    let port = broker.kill();
    let broker = Broker::start_on("emptied", port);
    topics(&broker);
    let started = Instant::now();
    broker.produce(&records(&spoken(3, "new"), 16 * 1024));
    let r = broker.collect(RESPONSES, Duration::from_secs(120), |r| r.len() >= 3);
    let answered = ids(&r);
    let exited = p.exited();
    assert_eq!(
        answered.len(),
        3,
        "exited: {exited:?}; log: {}",
        p.log_text()
    );
    assert!(
        answered.keys().all(|u| u.starts_with("new-")),
        "{answered:?}"
    );
    println!("recovered in {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        p.log_text().contains("log is not the one we were reading"),
        "the reset is logged: {}",
        p.log_text()
    );
}
