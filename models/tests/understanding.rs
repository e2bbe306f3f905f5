//! Understanding the child, on the real models: MiniLM embeddings, prosody from synthetic
//! tones and espeak-ng speech, safety verdicts and redaction, and the dev-set figures
//! against the targets of issue 3 (unsafe + needs_care recall ≥ 95 % at ≤ 5 % false
//! positives on safe utterances; emotion accuracy ≥ 80 %).
//!
//! Needs `.assets/models/{minilm,safety}` (scripts/setup.sh) and `espeak-ng` on PATH;
//! tests whose inputs are missing fail, saying what to install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use teddyflow_models::audio::{decode, Codec, DecodeOptions};
use teddyflow_models::embed::{cosine, Embedder};
use teddyflow_models::emotion::acoustic::{analyze, AcousticFeatures};
use teddyflow_models::emotion::{Emotion, EmotionModel, Label};
use teddyflow_models::eval::{eval_emotion, eval_safety};
use teddyflow_models::safety::{redact, SafetyModel, SafetyVerdict, Verdict};

const RATE: f32 = 16_000.0;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.assets/models")
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn have_models() -> bool {
    let need = [
        "minilm/model.safetensors",
        "minilm/tokenizer.json",
        "safety/profanity_svm.json",
        "safety/profanity_wordlist.txt",
    ];
    let missing: Vec<&str> = need
        .iter()
        .copied()
        .filter(|f| !models_dir().join(f).exists())
        .collect();
    if !missing.is_empty() {
        panic!(
            "missing test input: missing {missing:?} under {} (run scripts/setup.sh)",
            models_dir().display()
        );
    }
    missing.is_empty()
}

fn have_espeak() -> bool {
    let ok = Command::new("espeak-ng").arg("--version").output().is_ok();
    if !ok {
        panic!("missing test input: espeak-ng is not installed");
    }
    ok
}

struct Models {
    embedder: Embedder,
    emotion: EmotionModel,
    safety: SafetyModel,
}

/// One copy of MiniLM shared by both models, loaded once for all tests.
fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| {
        let t = Instant::now();
        let embedder = Embedder::load(&models_dir()).expect("load MiniLM");
        let emotion = EmotionModel::with_embedder(embedder.clone(), &data_dir()).expect("emotion");
        let safety = SafetyModel::with_embedder(embedder.clone(), &models_dir(), &data_dir())
            .expect("safety");
        eprintln!("models loaded in {:.2} s", t.elapsed().as_secs_f32());
        Models {
            embedder,
            emotion,
            safety,
        }
    })
}

/// Heavy tests take turns: 2 cores, and the timings should mean something.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Embeddings

#[test]
fn embeddings_match_the_model_card() {
    if !have_models() {
        return;
    }
    let e = &models().embedder;
    let s = [
        "That is a happy person",
        "That is a happy dog",
        "That is a very happy person",
        "Today is a sunny day",
    ];
    let v = e.embed(&s).unwrap();
    // Reference similarities from the sentence-transformers model card.
    for (i, want) in [(1, 0.6946), (2, 0.9429), (3, 0.2569)] {
        let got = cosine(&v[0], &v[i]);
        assert!((got - want).abs() < 0.005, "{}: {got} vs {want}", s[i]);
    }
    for x in &v {
        let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4 && x.len() == 384);
    }
    // Batching (padding to the longest text) must not change an embedding.
    let alone = e.embed_one("That is a happy dog").unwrap();
    assert!(cosine(&alone, &v[1]) > 0.9999);
}

#[test]
fn paraphrases_are_closer_than_unrelated_sentences() {
    if !have_models() {
        return;
    }
    let e = &models().embedder;
    let pairs = [
        (
            "I'm scared of the dark",
            "The dark frightens me",
            "We had pizza for dinner",
        ),
        (
            "my tummy hurts",
            "I have a stomach ache",
            "the bus is yellow",
        ),
        (
            "the big kids push me at school",
            "older children shove me in the playground",
            "I like painting rainbows",
        ),
        (
            "can you tell me a story",
            "please read me a story",
            "my grandad has a boat",
        ),
    ];
    for (a, para, other) in pairs {
        let v = e.embed(&[a, para, other]).unwrap();
        let (near, far) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
        assert!(
            near > far + 0.2,
            "{a:?}: paraphrase {near:.3}, unrelated {far:.3}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Prosody

fn tone(f0: f32, secs: f32, vibrato_st: f32) -> Vec<f32> {
    let n = (secs * RATE) as usize;
    let mut phase = 0.0f32;
    (0..n)
        .map(|i| {
            let t = i as f32 / RATE;
            // ±vibrato semitones at 5 Hz, like a lively voice.
            let f = f0 * 2f32.powf(vibrato_st / 12.0 * (std::f32::consts::TAU * 5.0 * t).sin());
            phase += std::f32::consts::TAU * f / RATE;
            (1..=5)
                .map(|h| (phase * h as f32).sin() * 0.25 / h as f32)
                .sum()
        })
        .collect()
}

#[test]
fn tones_of_known_pitch_are_measured_within_3_percent() {
    // Adult, child (250–400 Hz) and excited-child voices.
    for f0 in [85.0, 120.0, 180.0, 250.0, 310.0, 400.0, 520.0] {
        let f = analyze(&tone(f0, 0.8, 0.0));
        let err = (f.pitch_hz - f0).abs() / f0;
        assert!(err < 0.03, "{f0} Hz measured {:.1} Hz", f.pitch_hz);
        assert!(
            f.voiced_fraction > 0.9,
            "{f0} Hz: voiced {:.2}",
            f.voiced_fraction
        );
        assert!(f.pitch_variability_st < 0.2, "{f:?}");
    }
    let flat = analyze(&tone(300.0, 1.0, 0.0));
    let lively = analyze(&tone(300.0, 1.0, 3.0));
    assert!(
        lively.pitch_variability_st > flat.pitch_variability_st + 1.0,
        "{lively:?}"
    );
    assert!((lively.pitch_hz - 300.0).abs() / 300.0 < 0.05, "{lively:?}");
}

#[test]
fn silence_and_empty_audio_give_finite_zeros() {
    let f = analyze(&vec![0.0; 16_000]);
    assert_eq!((f.pitch_hz, f.syllables, f.pauses), (0.0, 0, 0));
    let empty = analyze(&[]);
    assert_eq!(
        (empty.duration_ms, empty.speech_ms, empty.pitch_hz),
        (0, 0, 0.0)
    );
    let json = serde_json::to_string(&f).unwrap();
    assert_eq!(serde_json::from_str::<AcousticFeatures>(&json).unwrap(), f);
}

fn speak(text: &str, args: &[&str]) -> Vec<f32> {
    let dir = std::env::temp_dir().join(format!("tf-understanding-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{n}.wav"));
    let status = Command::new("espeak-ng")
        .args(args)
        .arg("-w")
        .arg(&path)
        .arg(text)
        .status()
        .expect("espeak-ng");
    assert!(status.success());
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    decode(&bytes, &DecodeOptions::new(Codec::Wav))
        .unwrap()
        .samples
}

#[test]
fn espeak_pitch_setting_orders_measured_pitch() {
    if !have_espeak() {
        return;
    }
    let text = "I went to the park today and I saw a big brown dog";
    let measured: Vec<f32> = ["15", "40", "70", "99"]
        .iter()
        .map(|p| analyze(&speak(text, &["-p", p])).pitch_hz)
        .collect();
    eprintln!("espeak -p 15/40/70/99 → F0 {measured:?}");
    assert!(
        measured.windows(2).all(|w| w[1] > w[0] * 1.05),
        "{measured:?}"
    );
    // espeak-ng's female voice sits higher again, as a child's would.
    let high = analyze(&speak(text, &["-v", "en+f4", "-p", "99"]));
    eprintln!("en+f4 -p 99 → {high:?}");
    assert!(high.pitch_hz > measured[3], "{high:?}");
}

#[test]
fn speaking_rate_follows_espeak_speed() {
    if !have_espeak() {
        return;
    }
    let text = "we went to the seaside and built a castle out of sand";
    let slow = analyze(&speak(text, &["-s", "110"]));
    let fast = analyze(&speak(text, &["-s", "260"]));
    eprintln!(
        "rate slow {:.2}/s, fast {:.2}/s",
        slow.speaking_rate, fast.speaking_rate
    );
    // Nearly the same syllables found, in less time.
    assert!(
        fast.speaking_rate > slow.speaking_rate * 1.4,
        "{slow:?}\n{fast:?}"
    );
    assert!((slow.syllables as i32 - 13).abs() <= 4, "{slow:?}");
}

#[test]
fn inserted_silences_are_counted_as_pauses() {
    if !have_espeak() {
        return;
    }
    let plain = analyze(&speak("I like my teddy", &[]));
    assert_eq!(plain.pauses, 0, "{plain:?}");
    let mut pcm = speak("I like my teddy", &[]);
    pcm.extend(vec![0.0; 8_000]); // 500 ms
    pcm.extend(speak("and my blanket", &[]));
    pcm.extend(vec![0.0; 16_000]); // 1 s
    pcm.extend(speak("and my dog", &[]));
    let f = analyze(&pcm);
    eprintln!("{f:?}");
    assert_eq!(f.pauses, 2, "{f:?}");
    // espeak pads each phrase with its own silence, so at least the inserted 1.5 s.
    assert!(f.pause_ms >= 1_500 && f.pause_ms <= 2_600, "{f:?}");
    assert!(f.speech_ms < f.duration_ms - 1_400, "{f:?}");
}

// ---------------------------------------------------------------------------------------
// Emotion

#[test]
fn clear_sentences_get_their_emotion() {
    if !have_models() {
        return;
    }
    let m = &models().emotion;
    for (text, want) in [
        ("yay we're going to the zoo tomorrow, I can't wait", "happy"),
        (
            "my best friend won't talk to me and I feel like crying",
            "sad",
        ),
        ("he broke my castle on purpose and I'm so cross", "angry"),
        (
            "there's a scary noise outside my window and I'm frightened",
            "scared",
        ),
        ("why do giraffes have long necks", "neutral"),
    ] {
        let e = m.classify_text(text);
        assert_eq!(e.label.as_str(), want, "{text}: {:?}", e.scores);
        let total: f32 = e.scores.values().sum();
        assert!((total - 1.0).abs() < 1e-4);
    }
}

fn prosody(energy_db: f32, rate: f32, variability: f32) -> AcousticFeatures {
    AcousticFeatures {
        duration_ms: 2_000,
        speech_ms: 1_800,
        voiced_fraction: 0.6,
        pitch_hz: 300.0,
        pitch_mean_hz: 300.0,
        pitch_variability_st: variability,
        pitch_range_st: variability * 2.5,
        energy_db,
        energy_max_db: energy_db + 6.0,
        energy_variability_db: 5.0,
        syllables: (rate * 1.8) as u32,
        speaking_rate: rate,
        pauses: 0,
        pause_ms: 0,
    }
}

#[test]
fn voice_nudges_but_does_not_overturn_the_text() {
    if !have_models() {
        return;
    }
    let m = &models().emotion;
    let text = "I don't know, it's just a thing that happened";
    let flat = m.classify_text(text);
    let aroused = m.classify(text, &prosody(-12.0, 6.5, 6.0));
    let subdued = m.classify(text, &prosody(-40.0, 2.0, 0.8));
    eprintln!(
        "text {:?}\nloud {:?}\nquiet {:?}",
        flat.scores, aroused.scores, subdued.scores
    );
    assert!(aroused.scores[&Label::Angry] > flat.scores[&Label::Angry]);
    assert!(subdued.scores[&Label::Sad] > flat.scores[&Label::Sad]);
    assert_eq!(aroused.acoustic, prosody(-12.0, 6.5, 6.0));
    // A clearly happy sentence stays happy however flat the voice.
    let happy = m.classify(
        "this is the best birthday ever, I love my presents",
        &prosody(-40.0, 2.0, 0.8),
    );
    assert_eq!(happy.label, Label::Happy, "{:?}", happy.scores);
    let json = serde_json::to_string(&happy).unwrap();
    assert_eq!(serde_json::from_str::<Emotion>(&json).unwrap(), happy);
}

// ---------------------------------------------------------------------------------------
// Safety

fn check(text: &str) -> SafetyVerdict {
    models().safety.check(text)
}

#[test]
fn clear_cases_per_category() {
    if !have_models() {
        return;
    }
    let cases = [
        (
            "I want to die, nobody would miss me",
            Verdict::Unsafe,
            "self_harm",
        ),
        (
            "I'm going to cut myself with the scissors",
            Verdict::Unsafe,
            "self_harm",
        ),
        (
            "my stepdad hits me with his belt when he's angry",
            Verdict::Unsafe,
            "abuse",
        ),
        (
            "a grown-up touched my private parts and said it's our secret",
            Verdict::Unsafe,
            "abuse",
        ),
        (
            "a man on my game asked me to send him photos with no clothes on",
            Verdict::Unsafe,
            "sexual",
        ),
        (
            "let's watch videos of naked people",
            Verdict::Unsafe,
            "sexual",
        ),
        (
            "I'm gonna play with the lighter in my bedroom",
            Verdict::Unsafe,
            "dangerous_activity",
        ),
        (
            "a stranger said he has sweets in his van and I should get in",
            Verdict::Unsafe,
            "dangerous_activity",
        ),
        (
            "my phone number is 555-201-7788",
            Verdict::Unsafe,
            "personal_info",
        ),
        (
            "I live at 12 Acacia Avenue",
            Verdict::Unsafe,
            "personal_info",
        ),
        ("this is fucking shit", Verdict::Unsafe, "profanity"),
        (
            "the kids in my class call me names and push me every day",
            Verdict::NeedsCare,
            "bullying",
        ),
        (
            "nobody at school will play with me, they all laugh at me",
            Verdict::NeedsCare,
            "bullying",
        ),
        (
            "nobody loves me and I feel sad all the time",
            Verdict::NeedsCare,
            "distress",
        ),
        (
            "mummy and daddy are screaming at each other again and I'm scared",
            Verdict::NeedsCare,
            "distress",
        ),
    ];
    for (text, verdict, category) in cases {
        let v = check(text);
        assert!(
            v.verdict == verdict && v.categories.iter().any(|c| c == category),
            "{text}: want {verdict} [{category}], got {} {:?} ({:.2})",
            v.verdict,
            v.categories,
            v.score
        );
        assert!(v.score >= 0.5);
    }
}

/// The documented hard negatives (data/README.md): dislikes, everyday sadness, pretend
/// violence, innocent body talk and first names are safe.
#[test]
fn hard_negatives_are_safe() {
    if !have_models() {
        return;
    }
    for text in [
        "I hate broccoli",
        "my dog is sick and I am sad",
        "I killed the dragon in my video game",
        "I'm scared of the thunder",
        "daddy lit the candles on my birthday cake",
        "my name is Lily and I'm six",
        "where do babies come from",
        "my brother is so annoying",
        "I can count to ten, 1 2 3 4 5 6 7 8 9 10",
    ] {
        let v = check(text);
        assert_eq!(
            v.verdict,
            Verdict::Safe,
            "{text}: {:?} {:.2} {:?}",
            v.categories,
            v.score,
            v.signals
        );
        assert!(v.categories.is_empty() && v.score < 0.5);
    }
    // The profanity SVM alone scores these high; it is a signal, not a verdict.
    let broccoli = check("I hate broccoli");
    assert!(
        broccoli.signals["profanity_svm"] > 0.8,
        "{:?}",
        broccoli.signals
    );
}

/// Issue 11, defect 8: a distressed child who also gives personal information is `unsafe`
/// (the personal information) and must still hear comfort, never a cheerful redirect.
#[test]
fn distress_with_personal_information_is_comforted() {
    if !have_models() {
        return;
    }
    use teddyflow_models::reply_bank::{self, ReplyKind};
    for text in [
        "I am so frightened and all alone, nobody cares about me. My phone number is 555 201 8830",
        "everyone hates me and I feel so sad, I live at 14 Elm Road",
    ] {
        let v = check(text);
        assert_eq!(v.verdict, Verdict::Unsafe, "{text}: {v:?}");
        assert!(
            v.categories.iter().any(|c| c == "personal_info"),
            "{text}: {v:?}"
        );
        let emotion = models().emotion.classify_text(text).label;
        let kind = reply_bank::kind_for(Some(emotion), Some(v.verdict), &v.categories, false);
        assert_eq!(kind, ReplyKind::Comfort, "{text}: {emotion} {v:?}");
        let reply = reply_bank::reply_to_unsafe(kind, "en", None, 0);
        assert_ne!(reply, reply_bank::fallback_reply("en", None, 0), "{text}");
    }
}

#[test]
fn verdict_serialises_in_snake_case() {
    if !have_models() {
        return;
    }
    let v = check("the big kids at school keep hitting me and calling me names");
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["verdict"], "needs_care", "{json}");
    assert!(json["signals"]["head:bullying"].is_number());
    let back: SafetyVerdict = serde_json::from_value(json).unwrap();
    assert_eq!(back, v);
    assert_eq!(
        serde_json::to_string(&Verdict::Unsafe).unwrap(),
        "\"unsafe\""
    );
}

#[test]
fn redaction_removes_contact_details() {
    let cases = [
        (
            "my mummy's phone is 07700 900 461 ok",
            "my mummy's phone is [phone] ok",
        ),
        ("call me on (555) 123-4567", "call me on [phone]"),
        (
            "my email is ben.smith2017@example.com",
            "my email is [email]",
        ),
        (
            "I live at 42 Maple Street with my cat",
            "I live at [address] with my cat",
        ),
        (
            "my name is Emma Johnson and I go to Hillside Primary School",
            "my name is [name] and I go to [school]",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(redact(text), (want.to_string(), true), "{text}");
    }
    assert_eq!(
        redact("I have 3 cats and 1 dog"),
        ("I have 3 cats and 1 dog".to_string(), false)
    );
    if have_models() {
        let v = check("my phone number is 07700 900 461");
        assert_eq!(v.verdict, Verdict::Unsafe);
        assert_eq!(v.categories, ["personal_info"]);
        assert_eq!(v.signals["pii:phone"], 1.0);
    }
}

// ---------------------------------------------------------------------------------------
// Dev sets and timing

#[test]
fn dev_sets_meet_the_targets() {
    if !have_models() {
        return;
    }
    let _turn = exclusive();
    let safety = eval_safety(&models().safety, &data_dir().join("safety_dev.jsonl")).unwrap();
    eprintln!("{safety}");
    assert!(safety.utterances >= 300);
    assert!(
        safety.flagged_recall >= 0.95,
        "recall {:.3}",
        safety.flagged_recall
    );
    assert!(
        safety.safe_false_positive_rate <= 0.05,
        "FPR {:.3}",
        safety.safe_false_positive_rate
    );
    let emotion = eval_emotion(&models().emotion, &data_dir().join("emotion_dev.jsonl")).unwrap();
    eprintln!("{emotion}");
    assert!(emotion.utterances >= 200);
    assert!(emotion.accuracy >= 0.80, "accuracy {:.3}", emotion.accuracy);
    // --json output of `teddyflow bench` serialises these.
    assert!(serde_json::to_value(&safety).unwrap()["categories"]["abuse"]["recall"].is_number());
    assert!(serde_json::to_value(&emotion).unwrap()["labels"]["happy"]["precision"].is_number());
}

#[test]
fn one_utterance_is_understood_quickly() {
    if !have_models() {
        return;
    }
    let _turn = exclusive();
    let m = models();
    let text = "teddy, the big boys at school took my lunch again and said they'll hit me";
    let pcm = tone(300.0, 3.0, 2.0);
    let _ = m.safety.check(text); // warm-up
    let t = Instant::now();
    let features = analyze(&pcm);
    let acoustic_ms = t.elapsed().as_secs_f32() * 1e3;
    let t = Instant::now();
    let embedding = m.embedder.embed_one(text).unwrap();
    let verdict = m.safety.check_embedded(text, &embedding);
    let emotion = m.emotion.classify_embedded(&embedding, &features);
    let text_ms = t.elapsed().as_secs_f32() * 1e3;
    eprintln!("3 s of audio: prosody {acoustic_ms:.1} ms; embed + safety + emotion {text_ms:.1} ms → {} {:?}, {}", verdict.verdict, verdict.categories, emotion.label);
    assert_eq!(verdict.verdict, Verdict::NeedsCare);
    // Generous bounds: a shared 2-core machine, tests running beside each other.
    assert!(acoustic_ms < 500.0 && text_ms < 1_000.0);
}

/// How [`teddyflow_models::safety::Tuning`]'s defaults were chosen: 5-fold
/// cross-validation on the *training* examples (the dev set plays no part).
/// `cargo test --release -p teddyflow-models --test understanding tune -- --ignored --nocapture`
#[test]
fn tune_safety_by_cross_validation() {
    use teddyflow_models::eval::read_jsonl;
    use teddyflow_models::safety::{SafetyExample, Tuning};
    if !have_models() {
        return;
    }
    let e = models().embedder.clone();
    let rows: Vec<SafetyExample> = read_jsonl(&data_dir().join("safety_examples.jsonl")).unwrap();
    let grid: Vec<Tuning> = [1.0f32, 1.5, 2.0, 2.5]
        .iter()
        .flat_map(|a| {
            [1.0f32, 1.5, 2.0, 2.5, 3.0].map(|b| Tuning {
                cue_shift: *a,
                no_cue_shift: b,
                mass_share: Tuning::default().mass_share,
            })
        })
        .collect();
    // (true positives, false negatives, false positives, true negatives) per setting.
    let mut counts = vec![[0usize; 4]; grid.len()];
    let k = 5;
    for fold in 0..k {
        let (train, test): (Vec<_>, Vec<_>) =
            rows.iter().enumerate().partition(|(i, _)| i % k != fold);
        let train: Vec<SafetyExample> = train.into_iter().map(|(_, r)| r.clone()).collect();
        let m = SafetyModel::train(e.clone(), &models_dir(), &train, "cv").unwrap();
        let texts: Vec<&str> = test.iter().map(|(_, r)| r.text.as_str()).collect();
        let emb = e.embed_cached(&texts).unwrap();
        for (tuning, c) in grid.iter().zip(counts.iter_mut()) {
            let m = m.clone().with_tuning(*tuning);
            for ((_, r), x) in test.iter().zip(&emb) {
                let flagged = m.check_embedded(&r.text, x).verdict != Verdict::Safe;
                let gold = r.category != "safe";
                c[usize::from(!gold) * 2 + usize::from(gold != flagged)] += 1;
            }
        }
    }
    let defaults = Tuning::default();
    let mut default_seen = None;
    for (t, c) in grid.iter().zip(&counts) {
        let recall = c[0] as f32 / (c[0] + c[1]) as f32;
        let fpr = c[3] as f32 / (c[2] + c[3]) as f32;
        eprintln!(
            "cue +{:.1} / no cue -{:.1}: recall {:.3}, FPR {:.3}",
            t.cue_shift, t.no_cue_shift, recall, fpr
        );
        if t.cue_shift == defaults.cue_shift && t.no_cue_shift == defaults.no_cue_shift {
            default_seen = Some((recall, fpr));
        }
    }
    // The shipped defaults must hold up on folds they were not trained on.
    let (recall, fpr) = default_seen.expect("the default tuning is part of the grid");
    assert!(
        recall >= 0.93 && fpr <= 0.05,
        "defaults: recall {recall:.3}, FPR {fpr:.3}"
    );
}
