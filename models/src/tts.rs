//! Speech synthesis with Debian's `espeak-ng`, run as a separate process.
//!
//! espeak-ng is GPL: it is only ever executed, never linked. Text goes in on stdin (never as an
//! argument, so a reply starting with "-" cannot be read as a flag); audio comes back through a
//! temporary WAV file given with `-w`, because on a pipe espeak-ng cannot seek back and leaves
//! the RIFF length fields at their maximum. The WAV (22.05 kHz) is decoded and resampled with
//! [`crate::audio`].

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::audio::{self, AudioError, Codec, DecodeOptions};
use crate::emotion::Label;
use crate::safety::Verdict;

/// The espeak-ng binary (Debian package `espeak-ng`).
pub const ESPEAK: &str = "espeak-ng";
/// Default voice: American English. Chosen by what Whisper tiny.en hears back on teddy-like
/// sentences with children's names (`examples/reply.rs --voices`, mean WER): en-us 0.08,
/// en-us+m3 0.09, en-gb 0.15, en-us+f4 0.17, en-us+f3 0.19, en-us+f2 0.21. A toy that is
/// not understood is worse than one with a plain voice; a profile may still pick any voice.
pub const DEFAULT_VOICE: &str = "en-us";
/// Longest text spoken in one call; replies are at most three short sentences.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Longest audio accepted back (seconds).
const MAX_AUDIO_SECONDS: f32 = 120.0;
/// espeak-ng takes ~20 ms per sentence; anything near this means it is stuck.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Speech synthesis, whichever engine does it: the trait the answering stage calls.
pub trait Synthesizer: Send + Sync {
    /// The engine's name, e.g. `espeak-ng`.
    fn name(&self) -> &'static str;
    /// The voice for a language, or the profile's own voice when the engine has it.
    fn voice_for(&self, language: &str, profile_voice: Option<&str>) -> String;
    /// Speak `text` as mono f32 samples at `out_rate`.
    fn speak(
        &self,
        text: &str,
        voice: &str,
        style: &SpeechStyle,
        out_rate: u32,
    ) -> Result<Vec<f32>, TtsError>;
}

/// espeak-ng, run as a process (GPL: never linked).
#[derive(Debug, Clone, Copy, Default)]
pub struct EspeakNg;

impl Synthesizer for EspeakNg {
    fn name(&self) -> &'static str {
        ESPEAK
    }

    fn voice_for(&self, language: &str, profile_voice: Option<&str>) -> String {
        voice_for(language, profile_voice)
    }

    fn speak(
        &self,
        text: &str,
        voice: &str,
        style: &SpeechStyle,
        out_rate: u32,
    ) -> Result<Vec<f32>, TtsError> {
        speak(text, voice, style, out_rate)
    }
}

/// An espeak-ng voice, e.g. "en-us+f3" (language voice + optional variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voice {
    pub name: String,
}

/// How the text is spoken; the espeak-ng flags `-s`, `-p` and `-a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeechStyle {
    /// Words per minute (espeak-ng accepts 80..=450; its default is 175).
    pub rate_wpm: u32,
    /// 0..=99, espeak-ng's default 50.
    pub pitch: u8,
    /// Amplitude 0..=200, espeak-ng's default 100.
    pub volume: u8,
}

impl Default for SpeechStyle {
    /// A little slower than espeak-ng's default: the listener is a small child.
    fn default() -> Self {
        Self {
            rate_wpm: 160,
            pitch: 55,
            volume: 100,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("nothing to speak")]
    EmptyText,
    #[error("text of {0} characters is too long to speak (limit {MAX_TEXT_CHARS})")]
    TooLong(usize),
    #[error("invalid espeak-ng voice name {0:?}")]
    BadVoice(String),
    #[error("could not run {ESPEAK} (is the Debian package installed?): {0}")]
    Spawn(std::io::Error),
    #[error("{ESPEAK} failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("{ESPEAK} did not finish within {0:?}")]
    Timeout(Duration),
    #[error("temporary file: {0}")]
    Io(#[from] std::io::Error),
    #[error("espeak-ng output: {0}")]
    Audio(#[from] AudioError),
}

/// Speaking style for the reply: comforting is slower, lower and softer; excited or happy is
/// faster and brighter; anything else is the calm default.
pub fn style_for(emotion: Option<Label>, verdict: Option<Verdict>) -> SpeechStyle {
    if crate::llm::prompt::needs_comfort(emotion, verdict) {
        SpeechStyle {
            rate_wpm: 130,
            pitch: 45,
            volume: 80,
        }
    } else if emotion == Some(Label::Happy) {
        SpeechStyle {
            rate_wpm: 185,
            pitch: 65,
            volume: 110,
        }
    } else {
        SpeechStyle::default()
    }
}

/// The espeak-ng voice for a language code, or the profile's own voice when it names one.
/// Unknown languages get [`DEFAULT_VOICE`].
pub fn voice_for(language: &str, profile_voice: Option<&str>) -> String {
    if let Some(v) = profile_voice.map(str::trim).filter(|v| valid_voice(v)) {
        return v.to_string();
    }
    let code = language.trim().to_ascii_lowercase().replace('_', "-");
    let base = code.split('-').next().unwrap_or("");
    let voice = match (base, code.as_str()) {
        ("en", "en-gb" | "en-uk") => "en-gb",
        ("en", _) => DEFAULT_VOICE,
        ("pt", "pt-br") => "pt-br",
        ("es", "es-419" | "es-mx") => "es-419",
        ("fr", _) => "fr-fr",
        ("zh" | "cmn", _) => "cmn",
        ("yue", _) => "yue",
        (b, _) if ESPEAK_LANGUAGES.contains(&b) => b,
        _ => DEFAULT_VOICE,
    };
    voice.to_string()
}

/// Plain language codes that espeak-ng 1.51 has a voice for (`espeak-ng --voices`).
const ESPEAK_LANGUAGES: &[&str] = &[
    "af", "am", "an", "ar", "as", "az", "ba", "be", "bg", "bn", "bs", "ca", "cs", "cy", "da", "de",
    "el", "eo", "es", "et", "eu", "fa", "fi", "ga", "gd", "gn", "gu", "he", "hi", "hr", "ht", "hu",
    "hy", "id", "is", "it", "ja", "ka", "kk", "kl", "kn", "ko", "ku", "ky", "la", "lb", "lt", "lv",
    "mi", "mk", "ml", "mr", "ms", "mt", "my", "nb", "ne", "nl", "om", "or", "pa", "pl", "pt", "ro",
    "ru", "sd", "si", "sk", "sl", "sq", "sr", "sv", "sw", "ta", "te", "th", "tk", "tn", "tr", "tt",
    "ug", "uk", "ur", "uz", "vi",
];

/// A voice name is passed as an argument, so it must look like one ("en-us+f3", "mb-en1"):
/// letters, digits, '-', '+', '_' only, not starting with '-'.
fn valid_voice(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 40
        && !v.starts_with('-')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '_'))
}

/// Speak `text` with `voice` and `style`: mono f32 samples in [-1, 1] at `out_rate`.
pub fn speak(
    text: &str,
    voice: &str,
    style: &SpeechStyle,
    out_rate: u32,
) -> Result<Vec<f32>, TtsError> {
    let text = speakable(text)?;
    if !valid_voice(voice) {
        return Err(TtsError::BadVoice(voice.to_string()));
    }
    let wav_file = tempfile::Builder::new()
        .prefix("teddyflow-tts-")
        .suffix(".wav")
        .tempfile()?;
    run_espeak(&text, voice, style, wav_file.path())?;
    let bytes = std::fs::read(wav_file.path())?;
    let mut opts = DecodeOptions::new(Codec::Wav);
    opts.max_seconds = MAX_AUDIO_SECONDS;
    let decoded = audio::decode(&bytes, &opts)?;
    // Resampled once more from 16 kHz (what `decode` returns) to the device rate, so above
    // 8 kHz nothing survives; espeak-ng's formant speech has little energy up there.
    Ok(audio::resample(
        &decoded.samples,
        audio::TARGET_RATE,
        out_rate,
    ))
}

/// Control characters removed, whitespace collapsed; refuse empty or oversized text.
fn speakable(text: &str) -> Result<String, TtsError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let text: String = words
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if !text.chars().any(char::is_alphanumeric) {
        return Err(TtsError::EmptyText);
    }
    let n = text.chars().count();
    if n > MAX_TEXT_CHARS {
        return Err(TtsError::TooLong(n));
    }
    Ok(text)
}

fn run_espeak(text: &str, voice: &str, style: &SpeechStyle, wav: &Path) -> Result<(), TtsError> {
    let mut child = Command::new(ESPEAK)
        .arg("-v")
        .arg(voice)
        .arg("-s")
        .arg(style.rate_wpm.clamp(80, 450).to_string())
        .arg("-p")
        .arg(style.pitch.min(99).to_string())
        .arg("-a")
        .arg(style.volume.min(200).to_string())
        .arg("-b")
        .arg("1") // input is UTF-8
        .arg("-w")
        .arg(wav)
        .arg("--stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(TtsError::Spawn)?;
    // Dropping stdin after writing closes it, which is how espeak-ng knows the text has ended.
    let written = child.stdin.take().map(|mut s| s.write_all(text.as_bytes()));
    wait_with_timeout(&mut child, TIMEOUT)?;
    if let Some(Err(e)) = written {
        return Err(TtsError::Io(e));
    }
    Ok(())
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Result<(), TtsError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            return Err(TtsError::Failed {
                status: status.to_string(),
                stderr: read_stderr(child),
            });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TtsError::Timeout(timeout));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn read_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s.trim().chars().take(500).collect()
}

/// Seconds of audio in `samples` at `rate`.
pub fn duration_s(samples: &[f32], rate: u32) -> f64 {
    samples.len() as f64 / rate.max(1) as f64
}
