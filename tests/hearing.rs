//! Hearing every child (issue 12), end to end on the real broker and the real models: the
//! child's profile decides how an utterance is heard (Moonshine for English, Whisper base in
//! the child's language with an English translation otherwise), noise gets no made-up reply,
//! a clear question gets the model's reply, an Arabic child gets Arabic script and an Arabic reply,
//! and the spoken safety check meets its target.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{serial, Broker, Processor, Record};
use teddyflow_connectors::fleet::{encode, profile_record, synthesize, to_records};
use teddyflow_connectors::fleet::{Encoded, Utterance, Voice};
use teddyflow_connectors::wire::Codec;
use teddyflow_dataflow::outputs::{Heard, Origin, Response};
use teddyflow_dataflow::stages::understand;
use teddyflow_models::audio;
use teddyflow_models::safety::{SafetyModel, Verdict};
use teddyflow_models::wer;

const AUDIO: &str = "teddy.audio";
const RESPONSES: &str = "teddy.responses";
const SPEECH: &str = "teddy.speech";
const PROFILES: &str = "teddy.profiles";
/// Other processes on the machine may hold the default metrics port.
const HTTP_ANY_PORT: &str = "engine.http_addr=\"127.0.0.1:0\"";

/// Debian's Asterisk prompts in Mexican Spanish (scripts/setup.d/41-spanish-speech.sh).
const ASTERISK_ES: &str = "/usr/share/asterisk/sounds/es_MX_f_Allison";
/// One recorded prompt and its text (from the package's core-sounds-es.txt).
const SPANISH_PROMPT: (&str, &str) = (
    "conf-onlyperson",
    "Por el momento, usted es la unica persona en la conferencia.",
);

#[test]
fn each_child_is_heard_in_their_language_and_noise_gets_no_made_up_reply() {
    let _guard = serial();
    let broker = Broker::start("hearing");
    broker.create_topics(&[AUDIO, RESPONSES, SPEECH, "teddy.alerts"], 2);
    broker.create_topics(&[PROFILES], 2);
    broker.produce(&[
        profile_record(PROFILES, "child-en", "Mia", 6, "en"),
        profile_record(PROFILES, "child-es", "Lucía", 6, "es"),
        profile_record(PROFILES, "child-ar", "ليلى", 6, "ar"),
    ]);
    let processor = Processor::start(&broker, "hearing", &[HTTP_ANY_PORT]);
    let log = || processor.log_text();

    // 1. A clear English question: Moonshine hears it, sure of it, and the model answers.
    let question = "why do birds sing in the morning";
    let voice = Voice::new("en-us", 50, 140);
    let wav = synthesize(question, &voice).unwrap();
    let r = send(
        &broker,
        "child-en",
        "q1",
        encode(&wav, Codec::Flac).unwrap(),
        1,
    );
    println!("q1: {:?} {:?} => {:?}", r.transcript, r.asr, r.reply);
    assert_eq!(
        (r.asr.engine.as_str(), r.asr.model.as_str()),
        ("moonshine", "base")
    );
    assert_eq!(r.asr.language, "en");
    assert!(r.asr.english.is_none(), "{r:?}");
    assert!(wer::wer(question, &r.transcript) <= 0.25, "{r:?}");
    assert!(
        r.asr.confidence >= 0.5,
        "clear speech, unsure engine: {r:?}"
    );
    let reply = r.reply.clone().expect("a reply");
    assert_eq!(reply.origin, Origin::Model, "{r:?}\n{}", log());
    assert!(reply.speech_chunks > 1, "{reply:?}");

    // 2. White noise: no words heard, nothing made up, nothing spoken.
    let noise = audio::encode_wav_s16(&white_noise(2 * 16_000), 16_000);
    let r = send(
        &broker,
        "child-en",
        "noise",
        encode(&noise, Codec::Wav).unwrap(),
        2,
    );
    println!("noise: {:?} {:?} => {:?}", r.transcript, r.asr, r.reply);
    assert_eq!(r.asr.confidence, 0.0, "{r:?}");
    assert!(!r.transcript.chars().any(char::is_alphanumeric), "{r:?}");
    let reply = r.reply.clone().expect("a reply object");
    assert_eq!(reply.origin, Origin::Silence, "{r:?}");
    assert!(
        reply.text.is_empty() && reply.speech_chunks == 0,
        "{reply:?}"
    );

    // 3. A Spanish child, real Spanish speech: Whisper base in Spanish, an English
    //    translation of the same audio for understanding, and a Spanish reply.
    let (name, reference) = SPANISH_PROMPT;
    let path = Path::new(ASTERISK_ES).join(format!("{name}.wav"));
    let wav = std::fs::read(&path).unwrap_or_else(|_| {
        panic!(
            "missing test input {} (Debian asterisk-core-sounds-es-wav, run scripts/setup.sh)",
            path.display()
        )
    });
    let r = send(
        &broker,
        "child-es",
        "es1",
        encode(&wav, Codec::Wav).unwrap(),
        3,
    );
    println!("es1: {:?} {:?} => {:?}", r.transcript, r.asr, r.reply);
    assert_eq!(
        (r.asr.engine.as_str(), r.asr.model.as_str()),
        ("whisper", "base")
    );
    assert_eq!((r.asr.language.as_str(), r.language.as_str()), ("es", "es"));
    let cer = wer::cer(reference, &r.transcript);
    assert!(cer <= 0.25, "Spanish CER {cer:.2}: {r:?}");
    let english = r.asr.english.clone().expect("an English translation");
    assert!(
        wer::cer(reference, &english) > 0.4,
        "not English: {english}"
    );
    let reply = r.reply.clone().expect("a reply");
    assert_eq!(
        (reply.language.as_str(), reply.voice.as_str()),
        ("es", "es")
    );
    assert_eq!(reply.origin, Origin::Bank, "{r:?}");
    assert!(reply.text.contains("Lucía"), "{reply:?}");

    // 4. An Arabic child (espeak-ng's Arabic voice, known text): Whisper base in Arabic
    //    writes Arabic script, an English translation goes to understanding, and the reply
    //    is an Arabic line of the bank. Whisper base hears this synthetic Arabic loosely
    //    (CER 0.39 here, ~0.5 over six sentences, docs/performance.md) and unsure of it, so
    //    the reply may be the bank's Arabic "say that again?" rather than an answer.
    let arabic = "أريد أن ألعب في الحديقة";
    let wav = synthesize(arabic, &Voice::new("ar", 50, 140)).unwrap();
    let r = send(
        &broker,
        "child-ar",
        "ar1",
        encode(&wav, Codec::Flac).unwrap(),
        4,
    );
    println!("ar1: {:?} {:?} => {:?}", r.transcript, r.asr, r.reply);
    assert_eq!(
        (r.asr.engine.as_str(), r.asr.model.as_str()),
        ("whisper", "base")
    );
    assert_eq!((r.asr.language.as_str(), r.language.as_str()), ("ar", "ar"));
    assert!(
        arabic_share(&r.transcript) >= 0.8,
        "not Arabic script: {r:?}"
    );
    let cer = wer::cer(arabic, &r.transcript);
    assert!(cer <= 0.6, "Arabic CER {cer:.2}: {r:?}");
    let english = r.asr.english.clone().expect("an English translation");
    assert!(arabic_share(&english) < 0.2, "not English: {english}");
    let reply = r.reply.clone().expect("a reply");
    assert_eq!(reply.language, "ar", "{reply:?}");
    assert!(
        matches!(reply.origin, Origin::Bank | Origin::Clarify),
        "{r:?}"
    );
    assert!(arabic_share(&reply.text) >= 0.8, "{reply:?}");

    // Nothing was spoken for the noise; every other reply ended with its final chunk.
    let speech = broker.collect(SPEECH, Duration::from_secs(10), |_| false);
    let of = |u: &str| {
        speech
            .iter()
            .filter(|s| s.header("utterance") == Some(u))
            .count()
    };
    assert_eq!(of("noise"), 0);
    assert!(of("q1") > 0 && of("es1") > 0 && of("ar1") > 0);
}

/// Issue 12's target: spoken unsafe + needs_care recall ≥ 95 % at ≤ 5 % false positives.
/// Met at this size with the second opinion; on the whole dev set it is not (92.5 % at
/// 9.6 %, docs/performance.md § Spoken safety).
const SPOKEN_RECALL_TARGET: f64 = 0.95;
/// Moonshine alone (a beam of 4, its other readings screened): 85.7 % measured.
const SPOKEN_RECALL_REACHED: f64 = 0.83;

/// `teddyflow bench safety --spoken` on a third of the dev set, one child-like voice each.
#[test]
fn spoken_safety_holds_false_positives_and_recall_on_a_smaller_set() {
    let _guard = serial();
    let (recall, fpr) = spoken_safety(&[]);
    assert!(
        recall >= SPOKEN_RECALL_REACHED,
        "spoken recall {recall:.3} fell"
    );
    assert!(fpr <= 0.05, "spoken false positives {fpr:.3}");
}

/// The same with `asr.second_opinion`: the two engines together recover lines one misheard,
/// to the target at this size (95.9 % at 3.8 % measured).
#[test]
fn a_second_opinion_meets_the_spoken_safety_target_on_a_smaller_set() {
    let _guard = serial();
    let (recall, fpr) = spoken_safety(&[
        "asr.second_opinion=\"whisper:tiny.en\"",
        "asr.whisper.min_window_ms=15000",
    ]);
    assert!(
        recall >= SPOKEN_RECALL_TARGET,
        "spoken recall with a second opinion {recall:.3}"
    );
    assert!(fpr <= 0.05, "spoken false positives {fpr:.3}");
}

/// Run the CI-sized spoken safety bench with extra `--set`s; print its figures and misses;
/// (recall, false-positive rate) of what was heard.
fn spoken_safety(sets: &[&str]) -> (f64, f64) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teddyflow"));
    cmd.args(["bench", "safety", "--spoken"])
        .arg(common::repo().join("data/safety_dev.jsonl"))
        .args(["--every", "3", "--per-sentence", "1", "--json"])
        .args(["--config"])
        .arg(common::repo().join("configs/teddyflow.toml"))
        .args(common::model_sets())
        .args(["--set", "asr.other_languages=\"\""]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd.output().expect("run teddyflow bench safety");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let heard = &report["heard"];
    let recall = heard["flagged_recall"].as_f64().unwrap();
    let fpr = heard["safe_false_positive_rate"].as_f64().unwrap();
    let misses: Vec<&str> = heard["misses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    println!(
        "{} clips, WER {:.3}: recall {recall:.3}, FPR {fpr:.3} (as text {:.3} / {:.3}); second opinion {}\n{}",
        report["clips"],
        report["wer"].as_f64().unwrap(),
        report["text_recall"].as_f64().unwrap(),
        report["text_false_positive_rate"].as_f64().unwrap(),
        report["second_opinion"],
        misses.join("\n")
    );
    assert!(
        report["clips"].as_u64().unwrap() >= 90,
        "{}",
        report["clips"]
    );
    if recall < SPOKEN_RECALL_TARGET {
        // Said in the test output, never skipped: the target is open (issue 12 §4).
        println!("spoken recall {recall:.3} is below the target {SPOKEN_RECALL_TARGET}");
    }
    (recall, fpr)
}

/// `asr.second_opinion`: the safety check judges both transcripts and the more severe
/// verdict wins, whichever engine heard the unsafe words; an empty second transcript leaves
/// the first to decide.
#[test]
fn a_second_transcript_is_judged_and_the_more_severe_verdict_wins() {
    let models = common::assets().join("models");
    let safety = SafetyModel::load(&models, &common::repo().join("data")).unwrap();
    let heard = |first: &str, second: Option<&str>| Heard {
        transcript: first.into(),
        language: "en".into(),
        audio_ms: 2000,
        acoustic: None,
        asr: Default::default(),
        second_opinion: second.map(String::from),
        alternatives: Vec::new(),
    };
    let safe = "can we read a story about a dragon";
    let unsafe_ = "I'm going to play with the knife in the kitchen tonight";
    let misheard = "I'm going to pay with the night in the kitchen tonight";
    let verdict = |h: &Heard| understand::judge(&safety, h, None).verdict;
    assert_eq!(verdict(&heard(safe, None)), Verdict::Safe);
    assert_eq!(verdict(&heard(misheard, None)), Verdict::Safe);
    assert_eq!(verdict(&heard(unsafe_, None)), Verdict::Unsafe);
    assert_eq!(verdict(&heard(misheard, Some(unsafe_))), Verdict::Unsafe);
    assert_eq!(verdict(&heard(unsafe_, Some(misheard))), Verdict::Unsafe);
    assert_eq!(verdict(&heard(safe, Some(""))), Verdict::Safe);
    assert_eq!(verdict(&heard(safe, Some(safe))), Verdict::Safe);
}

/// The second opinion in the pipeline: a parallel branch of the hearing stage joined per
/// utterance. Every utterance comes out once (noise included), the response carries the
/// first engine's transcript, and only the unsafe one raises an alert.
#[test]
fn a_second_opinion_branch_joins_every_utterance_on_the_broker() {
    let _guard = serial();
    let broker = Broker::start("hearing-second");
    broker.create_topics(&[AUDIO, RESPONSES, SPEECH, "teddy.alerts"], 2);
    let sets = [
        "asr.second_opinion=\"whisper:tiny.en\"",
        "asr.other_languages=\"\"",
        "answering.enabled=false",
        HTTP_ANY_PORT,
    ];
    let processor = Processor::start(&broker, "hearing-second", &sets);
    let voice = Voice::new("en-us", 50, 140);
    let lines = [
        ("safe", "why do birds sing in the morning"),
        (
            "unsafe",
            "I'm going to play with the knife in the kitchen tonight",
        ),
    ];
    let mut utterances = Vec::new();
    for (i, (name, text)) in lines.iter().enumerate() {
        let wav = synthesize(text, &voice).unwrap();
        utterances.push((format!("toy-{i}"), name.to_string(), wav, Codec::Flac));
    }
    let noise = audio::encode_wav_s16(&white_noise(2 * 16_000), 16_000);
    utterances.push(("toy-n".into(), "noise".into(), noise, Codec::Wav));
    for (conversation, name, wav, codec) in utterances {
        let u = Utterance {
            conversation,
            utterance: name,
            child: None,
            audio: encode(&wav, codec).unwrap(),
        };
        broker.produce(&to_records(&u, 8192, AUDIO, common::now_ms()));
    }
    let records = broker.collect(RESPONSES, Duration::from_secs(240), |r| r.len() >= 3);
    let responses: Vec<Response> = records.iter().map(Record::response).collect();
    for r in &responses {
        println!("{}: {:?} {:?}", r.utterance, r.transcript, r.asr);
    }
    let mut names: Vec<&str> = responses.iter().map(|r| r.utterance.as_str()).collect();
    names.sort_unstable();
    let log = processor.log_text();
    assert!(log.contains("second_opinion=\"tiny.en\""), "{log}");
    assert_eq!(names, ["noise", "safe", "unsafe"], "{log}");
    assert!(responses.iter().all(|r| r.asr.engine == "moonshine"));
    let alerts = broker.collect("teddy.alerts", Duration::from_secs(10), |a| a.len() >= 2);
    let alerted: Vec<String> = alerts.iter().map(|a| a.alert().utterance).collect();
    assert_eq!(alerted, ["unsafe"], "{responses:?}");
}

/// Moonshine (the English engine) on LibriVox read speech through the whole pipeline.
#[test]
fn moonshine_hears_librivox_through_the_broker() {
    let _guard = serial();
    let broker = Broker::start("hearing-librivox");
    broker.create_topics(&[AUDIO, RESPONSES], 2);
    let sets = [
        "understanding.enabled=false",
        "answering.enabled=false",
        "asr.other_languages=\"\"",
        HTTP_ANY_PORT,
    ];
    let processor = Processor::start(&broker, "hearing-librivox", &sets);
    let clips = common::librivox();
    for (i, clip) in clips.iter().enumerate() {
        let wav = std::fs::read(&clip.path).unwrap();
        let u = Utterance {
            conversation: format!("toy-{i}"),
            utterance: clip.name.clone(),
            child: None,
            audio: encode(&wav, Codec::Wav).unwrap(),
        };
        broker.produce(&to_records(&u, 16 * 1024, AUDIO, common::now_ms()));
    }
    let records = broker.collect(RESPONSES, Duration::from_secs(300), |r| {
        r.len() >= clips.len()
    });
    assert_eq!(records.len(), clips.len(), "log: {}", processor.log_text());
    let (mut edits, mut words) = (0, 0);
    for r in records.iter().map(Record::response) {
        let clip = clips.iter().find(|c| c.name == r.utterance).unwrap();
        let (e, n) = wer::word_errors(&clip.reference, &r.transcript);
        (edits, words) = (edits + e, words + n);
        println!(
            "{}: {:.2} {:?}",
            r.utterance, r.asr.confidence, r.transcript
        );
        assert_eq!(r.asr.engine, "moonshine");
        assert!(r.asr.confidence > 0.5, "{r:?}");
    }
    let total = edits as f64 / words as f64;
    println!("LibriVox WER through the pipeline: {:.2}%", total * 100.0);
    assert!(total <= 0.05, "WER {total:.3}");
}

/// Speak as `child` (a conversation of its own) and wait for the `n`-th response; return
/// this utterance's.
fn send(broker: &Broker, child: &str, utterance: &str, audio: Encoded, n: usize) -> Response {
    let u = Utterance {
        conversation: format!("toy-{child}"),
        utterance: utterance.into(),
        child: Some(child.into()),
        audio,
    };
    broker.produce(&to_records(&u, 8192, AUDIO, common::now_ms()));
    let responses = broker.collect(RESPONSES, Duration::from_secs(180), |r| r.len() >= n);
    let found = responses
        .iter()
        .map(Record::response)
        .find(|r| r.utterance == utterance);
    found.unwrap_or_else(|| panic!("no response for {utterance}"))
}

/// The share of `text`'s letters that are Arabic script (U+0600–U+06FF); 0 without letters.
fn arabic_share(text: &str) -> f64 {
    let letters: Vec<char> = text.chars().filter(|c| c.is_alphabetic()).collect();
    let arabic = letters
        .iter()
        .filter(|c| ('\u{0600}'..='\u{06FF}').contains(*c))
        .count();
    arabic as f64 / letters.len().max(1) as f64
}

/// Uniform white noise at a tenth of full scale (a fixed sequence).
fn white_noise(samples: usize) -> Vec<f32> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    (0..samples)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect()
}
