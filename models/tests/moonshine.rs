//! Moonshine base against real speech: the LibriVox clips of Debian's pocketsphinx test
//! data, an espeak-ng utterance, white noise, and the candle decoder as the oracle of the
//! fast int8 decoder step.
//!
//! Needs `.assets/models/moonshine-base` (scripts/setup.sh); tests fail with a message
//! saying what to install when inputs are missing.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use teddyflow_models::audio::resample;
use teddyflow_models::moonshine::{
    encoder::MIN_SAMPLES, MoonshineModel, MoonshineOptions, DIR_NAME,
};
use teddyflow_models::wer;

mod common;
use common::{exclusive, librivox_refs, models_dir, read_wav, LIBRIVOX};

/// One model for all tests; cloning is cheap.
fn model() -> MoonshineModel {
    static MODEL: OnceLock<MoonshineModel> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = models_dir().join(DIR_NAME);
            assert!(
                dir.join("model.safetensors").exists(),
                "missing test input: no Moonshine weights in {} (run scripts/setup.sh)",
                dir.display()
            );
            MoonshineModel::load(&models_dir()).expect("load Moonshine")
        })
        .clone()
}

/// The same model decoding greedily (a beam of 1): the decode that batches across clips.
fn greedy() -> MoonshineModel {
    model().with_options(MoonshineOptions {
        beam: 1,
        ..MoonshineOptions::default()
    })
}

/// (clip id, reference, 16 kHz samples) of the five LibriVox utterances.
fn librivox() -> Vec<(String, String, Vec<f32>)> {
    let refs = librivox_refs().unwrap_or_else(|| {
        panic!("missing test input: no pocketsphinx test data at {LIBRIVOX} (run scripts/setup.sh)")
    });
    refs.into_iter()
        .map(|(id, reference)| {
            let (pcm, sr) = read_wav(&Path::new(LIBRIVOX).join(format!("{id}.wav")));
            assert_eq!(sr, 16_000, "{id}");
            (id, reference, pcm)
        })
        .collect()
}

fn espeak(text: &str, voice: &str, pitch: u8) -> Vec<f32> {
    let wav = std::env::temp_dir().join(format!(
        "teddyflow-ms-{}-{}.wav",
        std::process::id(),
        text.len()
    ));
    let status = std::process::Command::new("espeak-ng")
        .args(["-v", voice, "-p", &pitch.to_string(), "-w"])
        .arg(&wav)
        .arg(text)
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "missing test input: espeak-ng not available (run scripts/setup.sh)"
    );
    let (pcm, sr) = read_wav(&wav);
    let _ = std::fs::remove_file(&wav);
    resample(&pcm, sr, 16_000)
}

fn white_noise(seconds: f32, amplitude: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..(seconds * 16_000.0) as usize)
        .map(|_| rng.gen_range(-amplitude..amplitude))
        .collect()
}

#[test]
fn librivox_wer_and_confidence() {
    let clips = librivox();
    let _guard = exclusive();
    let m = model();
    m.transcribe(&clips[0].2).unwrap(); // warm-up: page in weights, spin up threads
    let (mut edits, mut words, mut audio_s, mut compute_s) = (0, 0, 0.0, 0.0);
    for (id, reference, pcm) in &clips {
        let t = Instant::now();
        let tr = m.transcribe(pcm).unwrap();
        compute_s += t.elapsed().as_secs_f64();
        audio_s += pcm.len() as f64 / 16_000.0;
        let (e, n) = wer::word_errors(reference, &tr.text);
        edits += e;
        words += n;
        println!(
            "{id}: WER {:.3} conf {:.3} | {:?}\n    ref: {reference}\n    encode {:.0} ms, decode {:.0} ms, {} tokens",
            e as f64 / n as f64,
            tr.confidence,
            tr.text,
            tr.encode_ms,
            tr.decode_ms,
            tr.tokens
        );
        assert!(
            tr.confidence > 0.6,
            "{id}: clear speech, confidence {}",
            tr.confidence
        );
        assert_eq!(tr.language, "en");
    }
    let overall = edits as f64 / words as f64;
    println!(
        "moonshine base LibriVox: WER {:.2}% ({edits}/{words} words), audio {audio_s:.1} s, compute {compute_s:.2} s, RTF {:.3}",
        overall * 100.0,
        compute_s / audio_s
    );
    assert!(overall <= 0.05, "WER {overall:.3} > 5%");
}

/// The fast int8 decoder step must choose the same tokens as the candle decoder on the
/// same weights, with logits that agree closely: int8 · f32 against f32 · f32 products, or,
/// where the CPU has `q8`'s integer kernels, int8 · int8 with each product's input rounded
/// to 8 bits per 32 values (~1/254 of the block's largest), which moves logits by tenths.
#[test]
fn fast_step_matches_candle_decoder() {
    let (logit_bound, logprob_bound) = match teddyflow_models::q8::Kernel::detect() {
        Some(_) => (1.0, 0.01),
        None => (1e-3, 1e-3),
    };
    let clips = librivox();
    let _guard = exclusive();
    let fast = model();
    let reference = MoonshineModel::load_reference(&models_dir(), &Device::Cpu).unwrap();
    for (id, _, pcm) in clips.iter().take(2) {
        let a = fast.transcribe(pcm).unwrap();
        let b = reference.transcribe(pcm).unwrap();
        println!("{id}: {:?} | {:?}", a.text, b.text);
        assert!(a.tokens > 3);
        assert_eq!(a.text, b.text);
        assert_eq!(a.tokens, b.tokens);
        assert!(
            (a.avg_logprob - b.avg_logprob).abs() < logprob_bound,
            "{} vs {}",
            a.avg_logprob,
            b.avg_logprob
        );
        let audio = fast.encode(pcm).unwrap();
        let tokens = [1, 940, 471, 451, 385];
        let la = fast.logits(&audio, &tokens).unwrap();
        let lb = reference.logits(&audio, &tokens).unwrap();
        let diff = la
            .iter()
            .flatten()
            .zip(lb.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        println!("    logits max |fast - candle| = {diff:.2e}");
        assert!(diff < logit_bound, "logits differ by {diff}");
        let best = |row: &Vec<f32>| (0..row.len()).max_by(|&i, &j| row[i].total_cmp(&row[j]));
        let (ba, bb): (Vec<_>, Vec<_>) =
            la.iter().zip(&lb).map(|(x, y)| (best(x), best(y))).unzip();
        assert_eq!(ba, bb, "the likeliest next token at each position");
    }
}

/// Batching must not change a single token: the oracle is each clip alone (greedy: a beam
/// steps its own hypotheses together and does not batch across clips). The batch mixes
/// lengths (sequences end at different steps), a synthetic voice, an empty clip, one too
/// short to encode, and one over the 30 s window (routed around the batch).
#[test]
fn batch_equals_one_by_one() {
    let mut clips: Vec<Vec<f32>> = librivox().into_iter().map(|c| c.2).collect();
    clips.push(espeak("can we play with the red ball", "en-us+f3", 85));
    clips.push(Vec::new());
    clips.push(vec![0.01; MIN_SAMPLES - 1]);
    clips.push(clips[..5].concat().repeat(2)); // 49 s: two windows
    let _guard = exclusive();
    let m = greedy();
    let views: Vec<&[f32]> = clips.iter().map(Vec::as_slice).collect();
    let batched = m.transcribe_batch(&views);
    assert_eq!(batched.len(), clips.len());
    for (clip, got) in clips.iter().zip(batched) {
        let got = got.expect("batched transcript");
        let alone = m.transcribe(clip).unwrap();
        println!("{:5.1} s: {:?}", clip.len() as f64 / 16_000.0, got.text);
        assert_eq!(got.text, alone.text);
        assert_eq!(got.tokens, alone.tokens);
        assert_eq!(got.avg_logprob, alone.avg_logprob);
        assert_eq!(got.confidence, alone.confidence);
    }
}

#[test]
fn empty_and_very_short_clips() {
    let _guard = exclusive();
    let m = model();
    for n in [
        0,
        1,
        100,
        MIN_SAMPLES - 1,
        MIN_SAMPLES,
        MIN_SAMPLES + 1,
        1600,
    ] {
        let tr = m
            .transcribe(&vec![0.0; n])
            .unwrap_or_else(|e| panic!("{n} samples: {e:#}"));
        println!(
            "{n} samples of silence -> {:?} (confidence {:.2})",
            tr.text, tr.confidence
        );
        if n < MIN_SAMPLES {
            assert_eq!(tr.text, "");
            assert_eq!(tr.tokens, 0);
        }
        // At most 6.5 tokens per second of audio, at least one.
        assert!(tr.tokens <= ((n as f64 / 16_000.0) * 6.5).ceil().max(1.0) as usize);
        if tr.text.is_empty() {
            assert_eq!(tr.confidence, 0.0);
        }
    }
}

/// Noise must not come out as a confident transcript: empty, or well below clear speech.
#[test]
fn white_noise_gets_low_confidence() {
    let _guard = exclusive();
    let m = model();
    for (seconds, amplitude, seed) in [(3.0, 0.1, 1), (2.0, 0.3, 2), (1.0, 0.05, 3), (4.0, 0.2, 4)]
    {
        let tr = m
            .transcribe(&white_noise(seconds, amplitude, seed))
            .unwrap();
        println!(
            "{seconds} s white noise ±{amplitude}: {:?} confidence {:.3} avg_logprob {:.2}",
            tr.text, tr.confidence, tr.avg_logprob
        );
        assert!(
            tr.confidence < 0.5,
            "noise heard with confidence {}: {:?}",
            tr.confidence,
            tr.text
        );
    }
}

#[test]
fn espeak_child_like_voice() {
    let reference = "can you tell me a story about a dragon";
    let pcm = espeak(reference, "en-us+f3", 85);
    let _guard = exclusive();
    let tr = model().transcribe(&pcm).unwrap();
    let w = wer::wer(reference, &tr.text);
    println!(
        "espeak en-us+f3 p85: {:?}, WER {w:.3}, confidence {:.3}",
        tr.text, tr.confidence
    );
    assert!(w <= 0.25, "WER {w:.3}: {:?}", tr.text);
}

/// A beam of one is the greedy decode, as is a wide beam with no margin (only the step's
/// best stays); a wider beam keeps a good transcript and offers
/// other readings (distinct, never the text itself, each the whole clip: a two-window clip's
/// alternatives keep the other window's words).
#[test]
fn a_beam_offers_other_readings() {
    let mut clips: Vec<Vec<f32>> = librivox().into_iter().map(|c| c.2).collect();
    clips.push(espeak("my uncle hits me when mum is out", "en-us+f4", 85));
    let refs: Vec<String> = librivox().into_iter().map(|c| c.1).collect();
    let _guard = exclusive();
    let m = model();
    let greedy_model = greedy();
    let no_margin = m.clone().with_options(MoonshineOptions {
        beam_margin: 0.0,
        ..m.options()
    });
    let (mut edits, mut words) = (0, 0);
    for (i, clip) in clips.iter().enumerate() {
        let greedy = greedy_model.transcribe(clip).unwrap();
        let one = m.transcribe_with_beam(clip, 1).unwrap();
        assert_eq!(
            (&one.text, one.tokens, one.avg_logprob),
            (&greedy.text, greedy.tokens, greedy.avg_logprob)
        );
        assert!(greedy.alternatives.is_empty() && one.alternatives.is_empty());
        let narrowed = no_margin.transcribe_with_beam(clip, 4).unwrap();
        assert_eq!(
            (&narrowed.text, narrowed.tokens),
            (&greedy.text, greedy.tokens)
        );
        assert!(narrowed.alternatives.is_empty());
        let four = m.transcribe_with_beam(clip, 4).unwrap();
        println!("{:?}\n    others {:?}", four.text, four.alternatives);
        assert!(four.alternatives.len() <= 3);
        // Other words, not only other punctuation.
        let readings: Vec<String> = four
            .alternatives
            .iter()
            .map(|a| wer::normalize(a))
            .collect();
        for (j, w) in readings.iter().enumerate() {
            assert!(!w.is_empty() && *w != wer::normalize(&four.text), "{w:?}");
            assert!(!readings[..j].contains(w), "{w:?} twice");
        }
        if let Some(reference) = refs.get(i) {
            let (e, n) = wer::word_errors(reference, &four.text);
            (edits, words) = (edits + e, words + n);
        }
    }
    let overall = edits as f64 / words as f64;
    println!("beam 4 LibriVox WER {:.2}%", overall * 100.0);
    assert!(overall <= 0.05, "beam 4 WER {overall:.3} > 5%");
    let child = m.transcribe_with_beam(&clips[5], 4).unwrap();
    assert!(
        !child.alternatives.is_empty(),
        "a child-like voice, no other reading"
    );

    let long = clips[..5].concat().repeat(2); // 49 s: two windows
    let t = m.transcribe_with_beam(&long, 4).unwrap();
    let words: Vec<&str> = t.text.split(' ').collect();
    let head = words[..5].join(" ");
    let tail = words[words.len() - 5..].join(" ");
    assert!(!t.alternatives.is_empty());
    for a in &t.alternatives {
        assert!(
            a.starts_with(&head) || a.ends_with(&tail),
            "an alternative of one window keeps the other's words: {a:?}"
        );
    }
}
