//! Emotion and child safety end to end: spoken utterances through the real broker, real
//! Whisper, MiniLM and the safety signals; verdicts, parent alerts, redaction.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{serial, Broker, Processor};
use teddyflow_connectors::fleet::{encode, synthesize, to_records, Utterance, Voice};
use teddyflow_connectors::wire::Codec;
use teddyflow_connectors::OutRecord;

const CASES: [(&str, &str); 4] = [
    ("safe", "we went to the park and I saw a duck"),
    ("distress", "I am really sad and scared, I miss my mommy"),
    ("unsafe", "I want to hurt myself"),
    (
        "phone",
        "my phone number is five five five, eight six seven, five three zero nine",
    ),
];

#[test]
fn spoken_utterances_get_verdicts_alerts_redaction_and_emotion() {
    let _guard = serial();
    let broker = Broker::start("understanding");
    broker.create_topics(
        &[
            "teddy.audio",
            "teddy.responses",
            "teddy.metrics",
            "teddy.deadletter",
            "teddy.alerts",
        ],
        2,
    );
    let voice = Voice::new("en-us", 50, 140);
    let processor = Processor::start(&broker, "understanding", &[]);
    // One utterance in flight at a time (light load), so each utterance's two branches
    // can be seen running side by side rather than queueing behind other utterances.
    let mut responses = Vec::new();
    for (n, (id, text)) in CASES.iter().enumerate() {
        let wav = synthesize(text, &voice).unwrap();
        let u = Utterance {
            conversation: "toy-7".into(),
            utterance: id.to_string(),
            child: Some("child-7".into()),
            audio: encode(&wav, Codec::Flac).unwrap(),
        };
        let records: Vec<OutRecord> = to_records(&u, 8192, "teddy.audio", common::now_ms());
        broker.produce(&records);
        responses = broker.collect("teddy.responses", Duration::from_secs(120), |r| r.len() > n);
        assert_eq!(responses.len(), n + 1, "log: {}", processor.log_text());
    }
    let by_id: BTreeMap<String, serde_json::Value> = responses
        .iter()
        .map(|r| {
            let v = r.json();
            (v["utterance"].as_str().unwrap().to_string(), v)
        })
        .collect();
    for (id, v) in &by_id {
        println!(
            "{id}: {} | verdict {} {} | emotion {}",
            v["transcript"],
            v["safety"]["verdict"],
            v["safety"]["categories"],
            v["emotion"]["label"]
        );
    }
    let verdict = |id: &str| by_id[id]["safety"]["verdict"].as_str().unwrap().to_string();
    assert_eq!(verdict("safe"), "safe");
    assert_eq!(verdict("distress"), "needs_care");
    assert_eq!(verdict("unsafe"), "unsafe");
    assert_eq!(verdict("phone"), "unsafe");
    assert!(by_id["unsafe"]["safety"]["categories"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "self_harm"));
    assert!(by_id["phone"]["safety"]["categories"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "personal_info"));

    // The phone number never lands in a topic in clear.
    let phone = &by_id["phone"];
    assert_eq!(phone["redacted"], true, "{phone}");
    let digits: String = phone["transcript"]
        .as_str()
        .unwrap()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    assert!(digits.len() < 4, "digits left in {}", phone["transcript"]);

    // Emotion: a label for every utterance, sadness or fear for the distressed child.
    for v in by_id.values() {
        assert!(
            v["emotion"]["label"]
                .as_str()
                .is_some_and(|l| !l.is_empty()),
            "{v}"
        );
        assert!(
            v["emotion"]["acoustic"]["pitch_hz"].as_f64().unwrap() > 50.0,
            "{v}"
        );
    }
    let distress = by_id["distress"]["emotion"]["label"].as_str().unwrap();
    assert!(distress == "sad" || distress == "scared", "{distress}");

    // The acoustic branch ran while speech-to-text ran: their spans overlap.
    for (id, v) in &by_id {
        let span = |s: &str| {
            let a = v["spans_ms"][s]
                .as_array()
                .unwrap_or_else(|| panic!("{id}: no span {s}: {v}"));
            (a[0].as_f64().unwrap(), a[1].as_f64().unwrap())
        };
        let (asr, acoustic) = (span("asr"), span("acoustic"));
        assert!(
            acoustic.0 < asr.1 && asr.0 < acoustic.1,
            "{id}: asr {asr:?} acoustic {acoustic:?}"
        );
        let t = &v["timings_ms"];
        let sequential = t["asr"].as_f64().unwrap()
            + t["acoustic"].as_f64().unwrap()
            + t["understand"].as_f64().unwrap();
        println!(
            "{id}: total {} ms, branches run one after the other would take {sequential:.1} ms",
            t["total"]
        );
    }

    // Alerts for the last three, redacted, nothing for the safe one.
    let alerts = broker.collect("teddy.alerts", Duration::from_secs(20), |a| a.len() >= 3);
    let alerts_later = broker.collect("teddy.alerts", Duration::from_secs(2), |_| false);
    assert_eq!(alerts_later.len(), 3, "{alerts:?}");
    let kinds: BTreeMap<String, String> = alerts_later
        .iter()
        .map(|a| {
            let v = a.json();
            (
                v["utterance"].as_str().unwrap().to_string(),
                v["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(kinds["distress"], "needs_care");
    assert_eq!(kinds["unsafe"], "unsafe");
    assert_eq!(kinds["phone"], "unsafe");
    for a in &alerts_later {
        let v = a.json();
        assert_eq!(v["child"], "child-7");
        let digits: String = v["excerpt"]
            .as_str()
            .unwrap()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        assert!(digits.len() < 4, "{v}");
    }
}
