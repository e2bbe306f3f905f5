//! The `openai` reply backend against a real OpenAI-compatible server: llama.cpp's own HTTP
//! server (PyPI wheel xllamacpp) serving SmolLM2, on the real broker with the real models.
//! The server's reply names the child and is spoken as it streams; then the server is
//! killed mid-conversation: the next utterances are still answered, by the local model,
//! with the backend fallback reported, and the circuit breaker stops the requests.

mod common;

use std::time::Duration;

use common::{serial, Broker, LlmServer, Processor, Record};
use teddyflow_connectors::fleet::profile_record;
use teddyflow_dataflow::outputs::{FallbackReason, Origin, Response};
use teddyflow_dataflow::stage::Stage;

const CONVERSATION: &str = "toy-7";
const CHILD: &str = "child-7";
const BREAKER_FAILURES: u64 = 2;

#[test]
fn server_replies_stream_and_a_dead_server_falls_back_behind_a_breaker() {
    let _guard = serial();
    let broker = Broker::start("llm-server");
    let topics = [
        "teddy.audio",
        "teddy.responses",
        "teddy.speech",
        "teddy.alerts",
        "teddy.metrics",
    ];
    broker.create_topics(&topics, 1);
    broker.create_topics(&["teddy.profiles"], 1);
    broker.produce(&[profile_record("teddy.profiles", CHILD, "Mia", 6, "en")]);
    let mut server = LlmServer::start("llm-server");
    let sets = [
        "engine.http_addr=\"127.0.0.1:0\"".to_string(),
        "answering.backend=\"openai\"".into(),
        format!("answering.openai.base_url=\"{}\"", server.base_url()),
        // A shared 2-core box (load 15+ seen): generous deadlines, so only a dead server fails.
        "answering.openai.timeout_ms=30000".into(),
        "answering.openai.reply_timeout_ms=60000".into(),
        format!("answering.openai.breaker_failures={BREAKER_FAILURES}"),
        "answering.openai.breaker_cooldown_ms=600000".into(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let processor = Processor::start(&broker, "llm-server", &sets);
    let log = || processor.log_text();

    // 1. The server answers: the child's name, its sentences spoken while it streams.
    let r1 = say(
        &broker,
        "u1",
        "I built a tall tower with my blocks today",
        1,
    );
    let reply = r1.reply.clone().expect("a reply");
    println!("u1: {:?} => {reply:?}", r1.transcript);
    assert_eq!(reply.backend, "openai", "{r1:?}\n{}", log());
    assert!(!reply.backend_fallback, "{r1:?}\n{}", log());
    assert_eq!(reply.origin, Origin::Model, "{r1:?}");
    assert!(
        reply.text.starts_with("Mia"),
        "names the child: {}",
        reply.text
    );
    assert!(reply.text.len() > "Mia, ".len() + 5, "{}", reply.text);
    assert!(server.completions() >= 1, "the server wrote it");
    let first = r1
        .timing(Stage::ReplyFirstSentence)
        .expect("first sentence");
    let whole = r1.timing(Stage::Reply).expect("reply");
    assert!(
        first <= whole,
        "first sentence {first} ms, reply {whole} ms"
    );
    let speech = speech_chunks(&broker, "u1");
    assert_eq!(speech, reply.speech_chunks as usize, "{r1:?}");
    assert!(
        speech >= 3,
        "speech for the name and the sentences: {speech}"
    );

    // 2. The server dies between turns: the next utterances are answered by the local model
    //    at once (connection refused), and reported as backend fallbacks.
    server.kill();
    let r2 = say(&broker, "u2", "can we play a game together", 2);
    let r3 = say(&broker, "u3", "tell me a story about a cat", 3);
    for r in [&r2, &r3] {
        let reply = r.reply.clone().expect("a reply");
        println!("{}: {:?} => {reply:?}", r.utterance, r.transcript);
        assert!(reply.backend_fallback, "{r:?}");
        assert_eq!(
            reply.backend_fallback_reason,
            Some(FallbackReason::Unreachable),
            "{r:?}"
        );
        assert_eq!(reply.backend, "local", "{r:?}\n{}", log());
        assert_eq!(reply.origin, Origin::Model, "{r:?}");
        assert!(reply.speech_chunks >= 2, "{r:?}");
    }

    // 3. Two failures in a row opened the breaker: no request goes to the dead server.
    let r4 = say(&broker, "u4", "what is your favourite colour", 4);
    let reply = r4.reply.clone().expect("a reply");
    println!("u4: {:?} => {reply:?}", r4.transcript);
    let reason = reply.backend_fallback_reason;
    assert_eq!(reason, Some(FallbackReason::BreakerOpen), "{r4:?}");
    assert_eq!(reply.backend, "local", "{r4:?}");
    assert!(log().contains("circuit breaker open"), "{}", log());

    // 4. Counted: one request answered, two failed, none while the breaker was open.
    let metrics = broker.collect("teddy.metrics", Duration::from_secs(20), |m| {
        m.iter().any(|r| r.metrics().counts.utterances_done >= 4)
    });
    let last = metrics.last().expect("metrics snapshots").metrics();
    let c = last.counts;
    assert_eq!(c.utterances_done, 4, "{last:?}");
    assert_eq!(c.llm_requests, 1 + BREAKER_FAILURES, "{last:?}");
    assert_eq!(c.llm_failures, BREAKER_FAILURES, "{last:?}");
    assert_eq!(c.backend_fallbacks, 3, "{last:?}");
    assert_eq!(c.llm_breaker, 2, "open: {last:?}");
}

/// Speak `text` as the child (flac chunks) and wait for the `n`-th response; return it.
fn say(broker: &Broker, utterance: &str, text: &str, n: usize) -> Response {
    broker.say((CONVERSATION, CHILD), utterance, text, n)
}

/// Speech records written for `utterance` (the last is the empty end-of-reply marker).
fn speech_chunks(broker: &Broker, utterance: &str) -> usize {
    let mine = |r: &Record| r.header("utterance") == Some(utterance);
    let records = broker.collect("teddy.speech", Duration::from_secs(10), |rs| {
        rs.iter()
            .any(|r| mine(r) && matches!(r.header("final"), Some("1" | "true")))
    });
    records.iter().filter(|r| mine(r)).count()
}
