//! Answering models against the real assets: SmolLM2 replies (tokenizer from the GGUF, greedy
//! determinism, streaming sentences), the curated reply banks, and espeak-ng speech checked by
//! transcribing it back with the project's Whisper.
//!
//! Needs `.assets/models/{smollm2,whisper-tiny.en,mel_filters.npz}` (scripts/setup.sh) and the
//! `espeak-ng` binary; tests whose inputs are missing fail, saying what to install.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use teddyflow_models::emotion::Label;
use teddyflow_models::llm::{prompt, Prompt, Query, ReplyModel, Sampling, MODEL_DIR, MODEL_FILE};
use teddyflow_models::reply_bank::{self, ReplyKind};
use teddyflow_models::safety::Verdict;
use teddyflow_models::tts::{self, SpeechStyle, TtsError};
use teddyflow_models::wer;
use teddyflow_models::whisper::{WhisperModel, WhisperVariant};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.assets/models")
}

fn have(path: PathBuf) -> bool {
    let ok = path.exists();
    if !ok {
        panic!(
            "missing test input: {} is missing (run scripts/setup.sh)",
            path.display()
        );
    }
    ok
}

fn have_llm() -> bool {
    have(models_dir().join(MODEL_DIR).join(MODEL_FILE))
}

fn have_espeak() -> bool {
    let ok = std::process::Command::new(tts::ESPEAK)
        .arg("--version")
        .output()
        .is_ok();
    if !ok {
        panic!("missing test input: espeak-ng is not installed");
    }
    ok
}

/// One model for all tests; cloning is cheap.
fn llm() -> ReplyModel {
    static MODEL: OnceLock<ReplyModel> = OnceLock::new();
    MODEL
        .get_or_init(|| ReplyModel::load(&models_dir()).expect("load SmolLM2"))
        .clone()
}

/// Heavy tests take turns: 2 cores, and the timings printed should mean something.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn mia_prompt(utterance: &str) -> Prompt {
    Prompt {
        child_name: Some("Mia".into()),
        age: Some(5),
        language: "en".into(),
        emotion: Some(Label::Happy),
        verdict: Some(Verdict::Safe),
        history: vec![],
        utterance: utterance.into(),
    }
}

#[test]
fn reply_model_is_shareable_across_threads() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<ReplyModel>();
}

#[test]
fn gguf_tokenizer_round_trips_and_keeps_special_tokens_whole() {
    if !have_llm() {
        return;
    }
    let model = llm();
    let tok = model.tokenizer();
    for text in [
        "Hello Mia! I have 12 crayons.",
        "Ça va? Ünïcödé — 🐻 naïve",
        "  two  spaces\nand a line",
    ] {
        let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{ids:?}");
    }
    // Digits are split one by one, as in SmolLM2's own tokenizer.
    let ids = tok.encode("12", false).unwrap().get_ids().to_vec();
    assert_eq!(ids.len(), 2, "{ids:?}");
    // Common words are single merged tokens.
    assert_eq!(tok.encode(" the", false).unwrap().get_ids().len(), 1);
    let ids = tok
        .encode("<|im_start|>user\nhi<|im_end|>\n", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(ids.first(), Some(&1), "<|im_start|> is id 1: {ids:?}");
    assert!(ids.contains(&2), "<|im_end|> is id 2: {ids:?}");
    assert!(ids.len() <= 6, "specials must not be split: {ids:?}");
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
}

#[test]
fn greedy_reply_is_deterministic_short_and_names_the_child() {
    if !have_llm() {
        return;
    }
    let _g = exclusive();
    let model = llm();
    let prompt = mia_prompt("Hi Teddy! Can you say my name?");
    let settings = Sampling::default();
    let a = model.generate(&prompt, &settings, &mut |_| {}).unwrap();
    let b = model.generate(&prompt, &settings, &mut |_| {}).unwrap();
    eprintln!(
        "reply ({} tokens, first sentence {:.0} ms, total {:.0} ms): {}",
        a.tokens, a.first_sentence_ms, a.total_ms, a.text
    );
    assert_eq!(a.text, b.text, "greedy decoding must be deterministic");
    // A clone shares the weights and the preamble state but never the kv state: the reply
    // does not depend on what other calls ran before.
    let other = model
        .generate(&mia_prompt("I like trains."), &settings, &mut |_| {})
        .unwrap();
    let c = model
        .clone()
        .generate(&prompt, &settings, &mut |_| {})
        .unwrap();
    assert_ne!(other.text, c.text);
    assert_eq!(a.text, c.text);
    assert!((1..=3).contains(&a.sentences.len()), "{:?}", a.sentences);
    assert!(a.tokens <= settings.max_tokens);
    assert!(
        a.text.contains("Mia"),
        "reply should name the child: {}",
        a.text
    );
    assert!(
        !a.text.contains("<|") && !a.text.contains('*'),
        "{}",
        a.text
    );
}

/// The turn is tokenized in two parts (what is known between turns, and the rest); the
/// split must fall where the tokenizer would split anyway, so the model reads the very
/// tokens it read when the turn was one piece.
#[test]
fn splitting_a_turn_does_not_change_its_tokens() {
    if !have_llm() {
        return;
    }
    let tok = llm().tokenizer().clone();
    let ids = |text: &str| tok.encode(text, false).unwrap().get_ids().to_vec();
    let mut p = mia_prompt("Can Max come to the beach with us?");
    for (emotion, name) in [
        (Label::Happy, Some("Mia")),
        (Label::Neutral, None),
        (Label::Sad, Some("Léa")),
    ] {
        p.emotion = Some(emotion);
        p.child_name = name.map(String::from);
        let split = [
            ids(&prompt::current_head(&p)),
            ids(&prompt::current_tail(&p)),
        ]
        .concat();
        assert_eq!(split, ids(&prompt::current(&p)), "{emotion} {name:?}");
    }
}

/// A turn that starts from its conversation's prepared history says what it says when the
/// whole prompt runs, and runs only its own tokens. Oracle: the same turn without a session.
#[test]
fn prepared_history_gives_the_same_reply_with_less_prefill() {
    if !have_llm() {
        return;
    }
    let _g = exclusive();
    let model = llm();
    model.keep_sessions(2);
    let turn = |child: &str, teddy: &str| (child.to_string(), teddy.to_string());
    let mut prompt = mia_prompt("Can Max come to the beach with us?");
    prompt.history = vec![
        turn(
            "I have a puppy called Max.",
            "Mia, a puppy! What does Max like to do?",
        ),
        turn(
            "Max likes to run in the park.",
            "Running in the park sounds wonderful!",
        ),
    ];
    let settings = Sampling::default();
    let whole = model.generate(&prompt, &settings, &mut |_| {}).unwrap();
    assert_eq!(whole.reused_tokens, 0);
    // What the next turn is known to start with: history and profile, no utterance or mood.
    let next = |p: &Prompt| Prompt {
        utterance: String::new(),
        emotion: None,
        verdict: None,
        ..p.clone()
    };
    let prepared = model.prepare("conv-1", &next(&prompt)).unwrap();
    assert!(
        prepared > 40,
        "{prepared} tokens: history and the note's head"
    );
    let again = model.prepare("conv-1", &next(&prompt)).unwrap();
    assert_eq!(again, 0, "already prepared");
    let fast = model
        .generate_in(
            Query {
                session: Some("conv-1"),
                prompt: &prompt,
                sampling: &settings,
            },
            &mut |_| {},
        )
        .unwrap();
    eprintln!(
        "prefill {:.0} ms whole, {:.0} ms from the prepared start ({} of {} tokens reused)",
        whole.prefill_ms, fast.prefill_ms, fast.reused_tokens, fast.prompt_tokens
    );
    assert_eq!(fast.reused_tokens, prepared);
    assert_eq!(fast.prompt_tokens, whole.prompt_tokens);
    assert_eq!(fast.text, whole.text);

    // Another conversation, history or profile never starts from it.
    let miss = |session: &str, p: &Prompt| {
        let query = Query {
            session: Some(session),
            prompt: p,
            sampling: &settings,
        };
        let g = model.generate_in(query, &mut |_| {});
        g.unwrap().reused_tokens
    };
    assert_eq!(miss("conv-2", &prompt), 0);
    let mut shorter = prompt.clone();
    shorter.history.remove(0);
    assert_eq!(miss("conv-1", &shorter), 0);
    let mut renamed = prompt.clone();
    renamed.child_name = Some("Leo".into());
    assert_eq!(miss("conv-1", &renamed), 0, "another profile");
    // Least recently used goes beyond the capacity; forgetting drops a state at once.
    model.prepare("conv-2", &next(&shorter)).unwrap();
    model.prepare("conv-3", &next(&shorter)).unwrap();
    assert_eq!(miss("conv-1", &prompt), 0, "evicted");
    assert!(miss("conv-3", &shorter) > 0);
    model.forget_sessions(&["conv-3".to_string()]);
    assert_eq!(miss("conv-3", &shorter), 0, "forgotten");
    model.keep_sessions(0);
}

#[test]
fn sentences_stream_in_order_before_generate_returns() {
    if !have_llm() {
        return;
    }
    let _g = exclusive();
    let model = llm();
    let prompt = Prompt {
        emotion: Some(Label::Sad),
        verdict: Some(Verdict::NeedsCare),
        history: vec![(
            "I built a tower.".into(),
            "Wow, Mia, what a tall tower!".into(),
        )],
        ..mia_prompt("My tower fell down and I am sad.")
    };
    let mut seen: Vec<(String, Instant)> = Vec::new();
    let mut on_sentence = |s: &str| seen.push((s.to_string(), Instant::now()));
    let g = model
        .generate(&prompt, &Sampling::default(), &mut on_sentence)
        .unwrap();
    let returned = Instant::now();
    eprintln!(
        "streamed: {:?}",
        seen.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    let texts: Vec<String> = seen.iter().map(|s| s.0.clone()).collect();
    assert_eq!(texts, g.sentences);
    assert_eq!(texts.join(" "), g.text);
    assert!(!texts.is_empty());
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1));
    assert!(seen[0].1 <= returned && g.first_sentence_ms <= g.total_ms);
    if texts.len() > 1 {
        // The first sentence was handed out while later ones were still being generated.
        assert!(g.first_sentence_ms < g.total_ms * 0.9, "{g:?}");
    }
}

#[test]
fn sampling_with_a_seed_is_repeatable() {
    if !have_llm() {
        return;
    }
    let _g = exclusive();
    let model = llm();
    let settings = Sampling {
        temperature: 0.8,
        top_p: Some(0.9),
        seed: 7,
        max_tokens: 30,
        repeat_penalty: 1.1,
    };
    let prompt = mia_prompt("What is your favourite colour?");
    let a = model.generate(&prompt, &settings, &mut |_| {}).unwrap();
    let b = model.generate(&prompt, &settings, &mut |_| {}).unwrap();
    assert_eq!(a.text, b.text);
    assert!(a.tokens <= 30);
}

#[test]
fn a_sentence_cut_off_by_max_tokens_is_never_handed_out() {
    if !have_llm() {
        return;
    }
    let _g = exclusive();
    let model = llm();
    let prompt = mia_prompt("Can you tell me a long story about a dragon?");
    let full = model
        .generate(&prompt, &Sampling::default(), &mut |_| {})
        .unwrap();
    // Greedy: a shorter budget generates a prefix of the same tokens, so it ends mid-sentence
    // somewhere. The full reply may hold more tokens than its kept sentences (the cleaner drops
    // some), so try several budgets rather than one fraction of the total.
    let mut fewer = false;
    for max_tokens in [3, full.tokens / 3, full.tokens * 2 / 3] {
        let settings = Sampling {
            max_tokens: max_tokens.max(1),
            ..Sampling::default()
        };
        let cut = model.generate(&prompt, &settings, &mut |_| {}).unwrap();
        eprintln!("budget {max_tokens}: {:?}", cut.text);
        fewer |= cut.sentences.len() < full.sentences.len();
        for s in &cut.sentences {
            assert!(
                full.sentences.contains(s),
                "{s:?} is not a whole sentence of {full:?}"
            );
        }
    }
    assert!(fewer, "no budget cut the reply short: {full:?}");
}

#[test]
fn bank_answers_arabic_with_the_name() {
    assert!(!reply_bank::model_serves("ar"));
    assert!(reply_bank::model_serves("en"));
    let r = reply_bank::bank_reply("ar", ReplyKind::Greeting, Some("مريم"), 3).unwrap();
    assert!(r.contains("مريم"), "{r}");
    assert!(
        r.chars().any(|c| ('\u{0600}'..='\u{06FF}').contains(&c)),
        "{r}"
    );
    let plain = reply_bank::bank_reply("ar", ReplyKind::Comfort, None, 0).unwrap();
    assert!(!plain.contains('{'), "{plain}");
    for lang in reply_bank::bank_languages() {
        let r = reply_bank::bank_reply(lang, ReplyKind::Redirect, Some("Sam"), 1).unwrap();
        assert!(r.contains("Sam"), "{lang}: {r}");
    }
}

#[test]
fn speech_duration_follows_the_style() {
    if !have_espeak() {
        return;
    }
    let text = "Let's take a big, slow breath together, and then we can play.";
    let voice = tts::voice_for("en", None);
    let calm = tts::style_for(Some(Label::Sad), Some(Verdict::NeedsCare));
    let lively = tts::style_for(Some(Label::Happy), Some(Verdict::Safe));
    assert!(calm.rate_wpm < SpeechStyle::default().rate_wpm && calm.rate_wpm < lively.rate_wpm);
    assert!(calm.volume < lively.volume);
    let slow = tts::speak(text, &voice, &calm, 16_000).unwrap();
    let fast = tts::speak(text, &voice, &lively, 16_000).unwrap();
    let (ds, df) = (
        tts::duration_s(&slow, 16_000),
        tts::duration_s(&fast, 16_000),
    );
    eprintln!("slow {ds:.2} s, fast {df:.2} s");
    assert!(ds > df * 1.2, "slow {ds:.2} s vs fast {df:.2} s");
    assert!(slow.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
    // The device rate is honoured.
    let at24k = tts::speak(text, &voice, &lively, 24_000).unwrap();
    let d24 = tts::duration_s(&at24k, 24_000);
    assert!((d24 - df).abs() < 0.01, "{d24} vs {df}");
}

#[test]
fn speech_is_safe_with_flag_like_text_and_checks_voices() {
    if !have_espeak() {
        return;
    }
    let style = SpeechStyle::default();
    // Text starting with "-" is spoken, not parsed as an option (which would print help).
    let pcm = tts::speak("--help -w /tmp/x hello", "en-us", &style, 16_000).unwrap();
    assert!(tts::duration_s(&pcm, 16_000) > 0.5);
    assert!(matches!(
        tts::speak("hi", "--stdout", &style, 16_000),
        Err(TtsError::BadVoice(_))
    ));
    assert!(matches!(
        tts::speak(" \n ", "en-us", &style, 16_000),
        Err(TtsError::EmptyText)
    ));
    assert_eq!(tts::voice_for("ar", None), "ar");
    assert_eq!(tts::voice_for("zh-CN", None), "cmn");
    assert_eq!(tts::voice_for("en", Some("en-gb+m3")), "en-gb+m3");
    assert_eq!(tts::voice_for("en", Some("-x; rm")), tts::DEFAULT_VOICE);
    // Every bank language is spoken by its own espeak-ng voice.
    for lang in reply_bank::bank_languages() {
        let text = reply_bank::bank_reply(lang, ReplyKind::Greeting, Some("Sam"), 0).unwrap();
        let pcm = tts::speak(&text, &tts::voice_for(lang, None), &style, 16_000).unwrap();
        assert!(tts::duration_s(&pcm, 16_000) > 0.8, "{lang}");
    }
}

#[test]
fn speech_transcribes_back_to_the_same_words() {
    if !have_espeak() || !have(models_dir().join("whisper-tiny.en/model.bin")) {
        return;
    }
    let _g = exclusive();
    let whisper = WhisperModel::load(&models_dir(), WhisperVariant::TinyEn).unwrap();
    let text = "The little bear likes to play in the garden with his friends.";
    let voice = tts::voice_for("en", None);
    for style in [
        tts::style_for(None, None),
        tts::style_for(Some(Label::Sad), Some(Verdict::NeedsCare)),
    ] {
        let pcm = tts::speak(text, &voice, &style, 16_000).unwrap();
        let hyp = whisper.transcribe(&pcm, Some("en")).unwrap().text;
        let w = wer::wer(text, &hyp);
        eprintln!("{style:?}: {hyp:?} (WER {w:.2})");
        assert!(w <= 0.2, "WER {w:.2}: {hyp:?}");
    }
}
