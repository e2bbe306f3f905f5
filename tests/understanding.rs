//! Emotion and child safety end to end: spoken utterances through the real broker, real
//! Whisper, MiniLM and the safety signals; verdicts, parent alerts, redaction.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{serial, Broker, Processor};
use teddyflow_connectors::fleet::{encode, synthesize, to_records, Utterance, Voice};
use teddyflow_connectors::wire::Codec;
use teddyflow_connectors::OutRecord;
use teddyflow_dataflow::outputs::Response;
use teddyflow_dataflow::stage::Stage;
use teddyflow_models::emotion::Label;
use teddyflow_models::safety::Verdict;

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
    let by_id: BTreeMap<String, Response> = responses
        .iter()
        .map(|r| {
            let r = r.response();
            (r.utterance.clone(), r)
        })
        .collect();
    let understood = |id: &str| by_id[id].understanding.clone().expect("understanding on");
    for (id, r) in &by_id {
        let u = understood(id);
        println!(
            "{id}: {:?} | verdict {} {:?} | emotion {}",
            r.transcript, u.safety.verdict, u.safety.categories, u.emotion.label
        );
    }
    let verdict = |id: &str| understood(id).safety.verdict;
    assert_eq!(verdict("safe"), Verdict::Safe);
    assert_eq!(verdict("distress"), Verdict::NeedsCare);
    assert_eq!(verdict("unsafe"), Verdict::Unsafe);
    assert_eq!(verdict("phone"), Verdict::Unsafe);
    let categories = |id: &str| understood(id).safety.categories;
    assert!(categories("unsafe").iter().any(|c| c == "self_harm"));
    assert!(categories("phone").iter().any(|c| c == "personal_info"));

    // The phone number never lands in a topic in clear.
    let phone = &by_id["phone"];
    assert!(understood("phone").redacted, "{phone:?}");
    let digits: String = phone
        .transcript
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    assert!(digits.len() < 4, "digits left in {:?}", phone.transcript);

    // Emotion: prosody for every utterance, sadness or fear for the distressed child.
    for id in by_id.keys() {
        let u = understood(id);
        assert!(u.emotion.acoustic.pitch_hz > 50.0, "{id}: {:?}", u.emotion);
    }
    let distress = understood("distress").emotion.label;
    assert!(
        distress == Label::Sad || distress == Label::Scared,
        "{distress}"
    );

    // The acoustic branch ran while speech-to-text ran: their spans overlap.
    for (id, r) in &by_id {
        let span = |s: Stage| {
            r.spans_ms
                .get(&s)
                .copied()
                .unwrap_or_else(|| panic!("{id}: no span {s}: {r:?}"))
        };
        let (asr, acoustic) = (span(Stage::Asr), span(Stage::Acoustic));
        assert!(
            acoustic[0] < asr[1] && asr[0] < acoustic[1],
            "{id}: asr {asr:?} acoustic {acoustic:?}"
        );
        let t = |s: Stage| r.timing(s).unwrap_or_else(|| panic!("{id}: no {s} timing"));
        let sequential = t(Stage::Asr) + t(Stage::Acoustic) + t(Stage::Understand);
        println!(
            "{id}: total {} ms, branches run one after the other would take {sequential:.1} ms",
            t(Stage::Total)
        );
    }

    // Alerts for the last three, redacted, nothing for the safe one.
    let alerts = broker.collect("teddy.alerts", Duration::from_secs(20), |a| a.len() >= 3);
    let alerts_later = broker.collect("teddy.alerts", Duration::from_secs(2), |_| false);
    assert_eq!(alerts_later.len(), 3, "{alerts:?}");
    let kinds: BTreeMap<String, Verdict> = alerts_later
        .iter()
        .map(|a| {
            let a = a.alert();
            (a.utterance, a.kind)
        })
        .collect();
    assert_eq!(kinds["distress"], Verdict::NeedsCare);
    assert_eq!(kinds["unsafe"], Verdict::Unsafe);
    assert_eq!(kinds["phone"], Verdict::Unsafe);
    for a in &alerts_later {
        let a = a.alert();
        assert_eq!(a.child.as_deref(), Some("child-7"));
        let digits: String = a.excerpt.chars().filter(char::is_ascii_digit).collect();
        assert!(digits.len() < 4, "{a:?}");
    }
}
