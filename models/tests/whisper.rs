//! Whisper against real speech: LibriVox clips from Debian's pocketsphinx test data,
//! an espeak-ng utterance, and candle-transformers' own Whisper as an oracle.
//!
//! Needs `.assets/models/{whisper-tiny.en,mel_filters.npz}`; tests that need missing
//! files fail with a message saying what to install (scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Tensor};
use teddyflow_models::audio::resample;
use teddyflow_models::wer;
use teddyflow_models::whisper::ct2::{Ct2Error, Ct2Model};
use teddyflow_models::whisper::{WhisperModel, WhisperVariant};

mod common;
use common::{exclusive, librivox_refs, models_dir, read_wav, LIBRIVOX};

fn tiny_dir() -> PathBuf {
    models_dir().join(WhisperVariant::TinyEn.dir_name())
}

fn have_tiny() -> bool {
    let ok = tiny_dir().join("model.bin").exists() && models_dir().join("mel_filters.npz").exists();
    if !ok {
        panic!(
            "missing test input: no tiny.en weights under {}",
            models_dir().display()
        );
    }
    ok
}

/// One model for all tests; cloning is cheap.
fn tiny() -> WhisperModel {
    static MODEL: OnceLock<WhisperModel> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            WhisperModel::load(&models_dir(), WhisperVariant::TinyEn).expect("load tiny.en")
        })
        .clone()
}

struct Run {
    edits: usize,
    words: usize,
    audio_s: f64,
    compute_s: f64,
}

fn run_librivox(model: &WhisperModel, refs: &[(String, String)], verbose: bool) -> Run {
    let mut run = Run {
        edits: 0,
        words: 0,
        audio_s: 0.0,
        compute_s: 0.0,
    };
    for (id, reference) in refs {
        let (pcm, sr) = read_wav(&Path::new(LIBRIVOX).join(format!("{id}.wav")));
        assert_eq!(sr, 16_000, "{id}");
        let t = Instant::now();
        let tr = model.transcribe(&pcm, None).expect("transcribe");
        run.compute_s += t.elapsed().as_secs_f64();
        run.audio_s += pcm.len() as f64 / 16_000.0;
        let (e, n) = wer::word_errors(reference, &tr.text);
        run.edits += e;
        run.words += n;
        if verbose {
            println!(
                "{id}: WER {:.3} | {:?}\n    ref: {reference}\n    mel {:.0} ms, encode {:.0} ms, decode {:.0} ms, {} tokens, avg_logprob {:.3}, T {}",
                e as f64 / n as f64,
                tr.text,
                tr.mel_ms,
                tr.encode_ms,
                tr.decode_ms,
                tr.tokens,
                tr.avg_logprob,
                tr.fallback_temperature
            );
        }
    }
    run
}

#[test]
fn tiny_en_librivox_wer() {
    let Some(refs) = librivox_refs() else {
        panic!(
            "missing test input: no pocketsphinx test data at {LIBRIVOX} (run scripts/setup.sh)"
        );
    };
    if !have_tiny() {
        return;
    }
    let _guard = exclusive();
    let model = tiny();
    model.transcribe(&vec![0.0; 16_000], None).unwrap(); // warm-up: page in weights, spin up threads
    let run = run_librivox(&model, &refs, true);
    let overall = run.edits as f64 / run.words as f64;
    println!(
        "tiny.en LibriVox: WER {:.2}% ({}/{} words), audio {:.1} s, compute {:.2} s, RTF {:.3}",
        overall * 100.0,
        run.edits,
        run.words,
        run.audio_s,
        run.compute_s,
        run.compute_s / run.audio_s
    );
    assert!(overall <= 0.10, "WER {overall:.3} > 10%");
}

/// Our kv-cached greedy decoder must pick the same tokens as candle-transformers' Whisper
/// run naively (whole token sequence re-fed every step), from the same mapped weights and mel.
#[test]
fn kv_cache_decoder_matches_candle_oracle() {
    if !have_tiny() || !Path::new(LIBRIVOX).exists() {
        return;
    }
    let _guard = exclusive();
    let model = tiny();
    let tensors = Ct2Model::read(&tiny_dir().join("model.bin"))
        .and_then(|m| m.to_candle_tensors())
        .unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let mut oracle =
        candle_transformers::models::whisper::model::Whisper::load(&vb, model.config().clone())
            .unwrap();

    let (pcm, _) =
        read_wav(&Path::new(LIBRIVOX).join("sense_and_sensibility_01_austen_64kb-0880.wav"));
    let mel = model.log_mel(&pcm).unwrap();
    let prompt = model.prompt(None);

    let ours_audio = model.encode(&mel).unwrap();
    let ours = model.greedy_tokens(&ours_audio, &prompt).unwrap();

    let theirs_audio = oracle.encoder.forward(&mel, true).unwrap();
    let diff = (theirs_audio.squeeze(0).unwrap() - &ours_audio)
        .unwrap()
        .abs()
        .unwrap();
    let max_diff: f32 = diff
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    println!(
        "encoder max |ours - candle| = {max_diff:.2e} (candle uses tanh-GELU, we use erf-GELU)"
    );

    let eot = model.specials().eot;
    let mut seq = prompt.clone();
    for i in 0..224 {
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let ys = oracle.decoder.forward(&ids, &theirs_audio, i == 0).unwrap();
        let last = ys.i((.., seq.len() - 1..)).unwrap();
        let logits = oracle.decoder.final_linear(&last).unwrap();
        let mut logits: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        model.suppress(&mut logits, i == 0);
        let next = teddyflow_models::whisper::decode::argmax(&logits);
        if next == eot {
            break;
        }
        seq.push(next);
    }
    let theirs = &seq[prompt.len()..];
    let text = model.tokenizer().decode(&ours, true).unwrap();
    println!("ours:   {ours:?} {text:?}\ncandle: {theirs:?}");
    assert!(!ours.is_empty());
    assert_eq!(ours, theirs);
}

/// A tiny, valid model.bin with one f32 variable and one alias.
fn synthetic_model_bin() -> Vec<u8> {
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend(((s.len() + 1) as u16).to_le_bytes());
        b.extend(s.as_bytes());
        b.push(0);
    }
    let mut b = Vec::new();
    b.extend(6u32.to_le_bytes());
    string(&mut b, "WhisperSpec");
    b.extend(3u32.to_le_bytes());
    b.extend(1u32.to_le_bytes());
    string(&mut b, "encoder/x");
    b.push(1);
    b.extend(2u32.to_le_bytes());
    b.push(0); // f32
    b.extend(8u32.to_le_bytes());
    b.extend(1.5f32.to_le_bytes());
    b.extend((-2f32).to_le_bytes());
    b.extend(1u32.to_le_bytes());
    string(&mut b, "encoder/y");
    string(&mut b, "encoder/x");
    b
}

#[test]
fn ct2_parser_accepts_valid_and_rejects_truncated() {
    let bytes = synthetic_model_bin();
    let m = Ct2Model::parse(bytes.clone()).expect("valid file");
    assert_eq!(m.spec, "WhisperSpec");
    let y: Vec<f32> = m.tensor("encoder/y").unwrap().to_vec1().unwrap();
    assert_eq!(y, [1.5, -2.0]);
    assert!(matches!(
        m.tensor("nope"),
        Err(Ct2Error::MissingVariable(_))
    ));

    for cut in 0..bytes.len() {
        let err = Ct2Model::parse(bytes[..cut].to_vec())
            .err()
            .expect("truncated file must fail");
        assert!(
            matches!(err, Ct2Error::Truncated { .. }),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    let mut v5 = bytes.clone();
    v5[..4].copy_from_slice(&5u32.to_le_bytes());
    let err = Ct2Model::parse(v5).err().unwrap();
    assert!(matches!(err, Ct2Error::BadVersion(5)), "{err}");

    let mut bad_dtype = bytes.clone();
    let dtype_at = 4 + 2 + 12 + 4 + 4 + 2 + 10 + 1 + 4;
    bad_dtype[dtype_at] = 9;
    let err = Ct2Model::parse(bad_dtype).err().unwrap();
    assert!(matches!(err, Ct2Error::UnknownDtype { id: 9, .. }), "{err}");
}

#[test]
fn ct2_real_file_truncated_is_a_clear_error() {
    let path = tiny_dir().join("model.bin");
    let Ok(bytes) = std::fs::read(&path) else {
        panic!(
            "missing test input: no {} (run scripts/setup.sh)",
            path.display()
        );
    };
    let err = Ct2Model::parse(bytes[..bytes.len() / 2].to_vec())
        .err()
        .expect("must fail");
    println!("{err}");
    assert!(matches!(err, Ct2Error::Truncated { .. }));
    assert!(err.to_string().contains("truncated"));
}

/// `text` spoken by espeak-ng, as (samples at the voice's rate, that rate).
fn espeak(text: &str) -> (Vec<f32>, u32) {
    let wav = std::env::temp_dir().join(format!(
        "teddyflow-espeak-{}-{}.wav",
        std::process::id(),
        text.len()
    ));
    let status = std::process::Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg(text)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        panic!("missing test input: espeak-ng not available (run scripts/setup.sh)");
    }
    let out = read_wav(&wav);
    let _ = std::fs::remove_file(&wav);
    out
}

/// Batched decoding must not change a single token: the oracle is each clip on its own.
/// The batch mixes lengths (so sequences finish at different steps), a synthetic voice,
/// an empty clip and a clip over 30 s (both routed around the batch).
#[test]
fn batched_transcripts_equal_one_by_one() {
    let Some(refs) = librivox_refs() else {
        panic!("missing test input: no pocketsphinx test data at {LIBRIVOX}");
    };
    if !have_tiny() {
        return;
    }
    let mut clips: Vec<Vec<f32>> = refs
        .iter()
        .map(|(id, _)| read_wav(&Path::new(LIBRIVOX).join(format!("{id}.wav"))).0)
        .collect();
    let (voice, sr) = espeak("can we play with the red ball");
    clips.push(resample(&voice, sr, 16_000));
    clips.push(Vec::new());
    clips.push(clips[..5].concat()); // 24.7 s
    clips.push(clips[..5].concat().repeat(2)); // 49 s: two windows
    let _guard = exclusive();
    let model = tiny();
    let views: Vec<&[f32]> = clips.iter().map(Vec::as_slice).collect();
    let batched = model.transcribe_batch(&views, Some("en"));
    assert_eq!(batched.len(), clips.len());
    for (clip, got) in clips.iter().zip(batched) {
        let got = got.expect("batched transcript");
        let alone = model.transcribe(clip, Some("en")).unwrap();
        println!("{:5.1} s: {:?}", clip.len() as f64 / 16_000.0, got.text);
        assert_eq!(got.text, alone.text);
        assert_eq!(got.tokens, alone.tokens);
        assert_eq!(got.avg_logprob, alone.avg_logprob);
    }
}

#[test]
fn espeak_hello_teddy() {
    let reference = "hello teddy how are you today";
    let (pcm, sr) = espeak(reference);
    if !have_tiny() {
        return;
    }
    let pcm = resample(&pcm, sr, 16_000);
    let _guard = exclusive();
    let tr = tiny().transcribe(&pcm, Some("en")).unwrap();
    let w = wer::wer(reference, &tr.text);
    println!("espeak ({sr} Hz -> 16 kHz): {:?}, WER {w:.3}", tr.text);
    assert!(w <= 0.34, "WER {w:.3}: {:?}", tr.text);
}

#[test]
fn silence_and_empty_input() {
    if !have_tiny() {
        return;
    }
    let _guard = exclusive();
    let model = tiny();
    let empty = model.transcribe(&[], None).unwrap();
    assert_eq!(empty.text, "");
    assert_eq!(empty.tokens, 0);
    let silence = model.transcribe(&vec![0.0; 16_000], None).unwrap();
    println!(
        "1 s of silence -> {:?} (avg_logprob {:.2})",
        silence.text, silence.avg_logprob
    );
}

#[test]
fn wer_basics() {
    assert_eq!(wer::wer("Hello, Teddy!", "hello teddy"), 0.0);
    assert_eq!(
        wer::word_errors("he was not ill", "he was not well"),
        (1, 4)
    );
    assert_eq!(
        wer::word_errors("he was not ill", "he was not ill today"),
        (1, 4)
    );
    assert_eq!(wer::word_errors("he was not ill", "he not ill"), (1, 4));
    assert_eq!(wer::normalize("Mr.  Dashwood"), "mr dashwood");
}

/// Clear speech comes out confident, white noise does not (empty, or low confidence).
#[test]
fn confidence_separates_speech_from_noise() {
    let Some(refs) = librivox_refs() else {
        panic!("missing test input: no pocketsphinx test data at {LIBRIVOX}");
    };
    if !have_tiny() {
        return;
    }
    let _guard = exclusive();
    let model = tiny();
    let mut speech = Vec::new();
    for (id, _) in &refs {
        let (pcm, _) = read_wav(&Path::new(LIBRIVOX).join(format!("{id}.wav")));
        let tr = model.transcribe(&pcm, None).unwrap();
        println!(
            "{id}: confidence {:.3}, no_speech {:.3}: {:?}",
            tr.confidence, tr.no_speech_prob, tr.text
        );
        speech.push(tr.confidence);
    }
    let lowest_speech = speech.iter().copied().fold(1.0, f32::min);
    assert!(
        lowest_speech > 0.6,
        "clear speech with confidence {lowest_speech}"
    );
    use rand::{Rng, SeedableRng};
    for (seconds, amplitude, seed) in [(3.0, 0.1, 1u64), (2.0, 0.3, 2), (1.0, 0.05, 3)] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let noise: Vec<f32> = (0..(seconds * 16_000.0) as usize)
            .map(|_| rng.gen_range(-amplitude..amplitude))
            .collect();
        let tr = model.transcribe(&noise, None).unwrap();
        println!(
            "{seconds} s white noise ±{amplitude}: {:?} confidence {:.3} no_speech {:.3} avg_logprob {:.2}",
            tr.text, tr.confidence, tr.no_speech_prob, tr.avg_logprob
        );
        assert!(
            tr.confidence < 0.5,
            "noise heard as {:?} with confidence {}",
            tr.text,
            tr.confidence
        );
    }
    let silence = model.transcribe(&vec![0.0; 32_000], None).unwrap();
    assert!(
        silence.confidence < 0.5,
        "silence: {:?} {}",
        silence.text,
        silence.confidence
    );
}

const ASTERISK_ES: &str = "/usr/share/asterisk/sounds/es_MX_f_Allison";
const ASTERISK_ES_TEXT: &str = "/usr/share/doc/asterisk-core-sounds-es/core-sounds-es.txt.gz";

/// Real Spanish speech with reference texts: Debian's Asterisk prompts (es-MX, 8 kHz).
/// Whole sentences only (at least five words), a fixed spread of them.
fn spanish_prompts(n: usize) -> Vec<(String, String, Vec<f32>)> {
    let gz = std::fs::read(ASTERISK_ES_TEXT).unwrap_or_else(|_| {
        panic!("missing test input: {ASTERISK_ES_TEXT} (Debian asterisk-core-sounds-es, run scripts/setup.sh)")
    });
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    let mut prompts: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let (name, words) = l.split_once(": ")?;
            let ok = !name.contains('/')
                && words.split_whitespace().count() >= 5
                && !words.contains('[');
            ok.then(|| (name.trim().to_string(), words.trim().to_string()))
        })
        .filter(|(name, _)| Path::new(ASTERISK_ES).join(format!("{name}.wav")).exists())
        .collect();
    prompts.sort();
    let step = (prompts.len() / n).max(1);
    prompts
        .into_iter()
        .step_by(step)
        .take(n)
        .map(|(name, words)| {
            let (pcm, sr) = read_wav(&Path::new(ASTERISK_ES).join(format!("{name}.wav")));
            (name, words, resample(&pcm, sr, 16_000))
        })
        .collect()
}

/// Words that English text is full of and Spanish text has none of.
const ENGLISH_WORDS: &[&str] = &[
    "the",
    "to",
    "is",
    "please",
    "you",
    "your",
    "of",
    "and",
    "for",
    "number",
    "enter",
    "has",
    "been",
    "this",
    "are",
    "not",
    "press",
    "conference",
    "followed",
    "by",
    "key",
    "have",
    "in",
    "now",
    "will",
    "be",
    "again",
    "try",
    "there",
    "only",
];

/// Whisper base, told the language is Spanish, writes Spanish (character error rate against
/// the recorded prompts' texts) and, from the same encoder output, an English translation.
#[test]
fn base_spanish_transcript_and_english_translation() {
    let dir = models_dir().join(WhisperVariant::Base.dir_name());
    assert!(
        dir.join("model.bin").exists(),
        "missing test input: no Whisper base in {} (run scripts/setup.sh)",
        dir.display()
    );
    let prompts = spanish_prompts(8);
    assert!(
        prompts.len() >= 6,
        "only {} Spanish prompts found",
        prompts.len()
    );
    let _guard = exclusive();
    let base = WhisperModel::load(&models_dir(), WhisperVariant::Base).unwrap();
    let (mut edits, mut chars, mut english, mut words) = (0, 0, 0, 0);
    for (name, reference, pcm) in &prompts {
        let (es, en) = base.transcribe_with_translation(pcm, Some("es")).unwrap();
        let en = en.expect("Spanish gets a translation");
        let (e, n) = wer::char_errors(reference, &es.text);
        edits += e;
        chars += n;
        let norm = wer::normalize(&en.text);
        words += norm.split_whitespace().count();
        english += norm
            .split_whitespace()
            .filter(|w| ENGLISH_WORDS.contains(w))
            .count();
        println!(
            "{name}: CER {:.3} conf {:.2}\n    ref: {reference}\n    es:  {}\n    en:  {} (conf {:.2}, {:.0} ms)",
            e as f64 / n as f64,
            es.confidence,
            es.text,
            en.text,
            en.confidence,
            en.decode_ms
        );
        assert_eq!(es.language, "es");
        assert_eq!(en.language, "en");
        assert_eq!(
            en.encode_ms, 0.0,
            "the translation must reuse the encoder output"
        );
        assert!(
            wer::cer(reference, &en.text) > 0.4,
            "{name}: translation looks Spanish: {}",
            en.text
        );
    }
    let cer = edits as f64 / chars as f64;
    let english_share = english as f64 / words.max(1) as f64;
    println!("Spanish CER {:.1}% over {chars} characters; English function words {:.0}% of the translations' words", cer * 100.0, english_share * 100.0);
    assert!(cer <= 0.25, "Spanish CER {cer:.3} > 25%");
    assert!(
        english_share >= 0.25,
        "translations do not read as English ({english_share:.2})"
    );
    // English in, no translation out.
    let (pcm, _) =
        read_wav(&Path::new(LIBRIVOX).join("sense_and_sensibility_01_austen_64kb-0880.wav"));
    let (tr, none) = base.transcribe_with_translation(&pcm, Some("en")).unwrap();
    assert!(none.is_none());
    assert!(
        wer::wer("he was not an ill disposed young man", &tr.text) <= 0.25,
        "{}",
        tr.text
    );
}
