//! Spoken test sets: sentences spoken by a grid of espeak-ng voices, pitches and speeds,
//! e.g. child-like voices (high pitch, female and klatt variants) for measuring how well the
//! speech-to-text engines hear children. Used by `teddyflow bench asr SENTENCES_FILE` and
//! reusable for any labelled set (`--save-clips` writes WAV + `.txt` pairs and a manifest).
//!
//! espeak-ng is a stand-in for children, not a child: its figures say how an engine copes
//! with high, synthetic voices, not what real children will get.

use std::path::Path;

use crate::audio;
use crate::tts::{self, SpeechStyle, TtsError};

/// Voices, pitches and speeds to combine. Each sentence is spoken by `per_sentence`
/// combinations, taken in turn from the grid so that every combination gets used.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceGrid {
    /// espeak-ng voice names, e.g. "en-us+f3" (language + variant).
    pub voices: Vec<String>,
    /// 0..=99; children are roughly 70 and up.
    pub pitches: Vec<u8>,
    /// Words per minute.
    pub rates: Vec<u32>,
}

impl VoiceGrid {
    /// A child-like grid: female and klatt variants at high pitch, two speeds.
    pub fn child_like() -> Self {
        let voices = [
            "en-us+f3",
            "en-us+f4",
            "en+f2",
            "en-us+klatt",
            "en+f5",
            "en-us+Annie",
        ];
        Self {
            voices: voices.iter().map(|v| v.to_string()).collect(),
            pitches: vec![70, 85, 99],
            rates: vec![140, 175],
        }
    }

    /// Many voices, none of them in [`Self::child_like`] or the other grids the docs measure
    /// with: for speaking training examples (how the engines hear them), so that what is
    /// learnt is how these sentences are misheard, not one voice's quirks.
    pub fn training() -> Self {
        let voices = [
            "en-us+f1",
            "en-gb-x-rp+f4",
            "en+klatt3",
            "en-us+Alicia",
            "en-gb-scotland+f2",
            "en-029+f3",
            "en-us+linda",
            "en+belinda",
            "en-us+steph",
            "en+anika",
            "en-gb+klatt4",
            "en-us+shelby",
        ];
        Self {
            voices: voices.iter().map(|v| v.to_string()).collect(),
            pitches: vec![60, 78, 92, 99],
            rates: vec![130, 160, 185],
        }
    }

    /// Every (voice, pitch, rate), voices varying fastest.
    pub fn combinations(&self) -> Vec<(String, u8, u32)> {
        let mut out = Vec::new();
        for &rate in &self.rates {
            for &pitch in &self.pitches {
                for v in &self.voices {
                    out.push((v.clone(), pitch, rate));
                }
            }
        }
        out
    }
}

/// One spoken sentence: 16 kHz mono audio and how it was made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpokenClip {
    pub name: String,
    pub text: String,
    pub voice: String,
    pub pitch: u8,
    pub rate_wpm: u32,
    #[serde(skip)]
    pub pcm: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpokenError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    #[error("no sentences in {0}")]
    Empty(String),
    #[error("the voice grid is empty")]
    EmptyGrid,
    #[error("speaking {text:?} with {voice}: {source}")]
    Tts {
        text: String,
        voice: String,
        source: TtsError,
    },
}

/// Sentences from a file: one per line (blank lines and `#` comments skipped), or JSONL
/// objects with a `"text"` field (e.g. the labelled sets in `data/`).
pub fn read_sentences(path: &Path) -> Result<Vec<String>, SpokenError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SpokenError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('{') {
            #[derive(serde::Deserialize)]
            struct Row {
                text: String,
            }
            let row: Row = serde_json::from_str(line).map_err(|e| SpokenError::Parse {
                path: shown.clone(),
                line: i + 1,
                message: e.to_string(),
            })?;
            out.push(row.text);
        } else {
            out.push(line.to_string());
        }
    }
    if out.is_empty() {
        return Err(SpokenError::Empty(shown));
    }
    Ok(out)
}

/// Speaks each sentence with `per_sentence` combinations of the grid (sentence `i`'s
/// `j`-th uses combination `(i * per_sentence + j) % len`).
pub fn speak_sentences(
    sentences: &[String],
    grid: &VoiceGrid,
    per_sentence: usize,
) -> Result<Vec<SpokenClip>, SpokenError> {
    let combos = grid.combinations();
    if combos.is_empty() {
        return Err(SpokenError::EmptyGrid);
    }
    let mut clips = Vec::new();
    for (i, text) in sentences.iter().enumerate() {
        for j in 0..per_sentence.max(1) {
            let (voice, pitch, rate) = combos[(i * per_sentence.max(1) + j) % combos.len()].clone();
            let style = SpeechStyle {
                rate_wpm: rate,
                pitch,
                volume: 100,
            };
            let pcm = tts::speak(text, &voice, &style, audio::TARGET_RATE).map_err(|source| {
                SpokenError::Tts {
                    text: text.clone(),
                    voice: voice.clone(),
                    source,
                }
            })?;
            clips.push(SpokenClip {
                name: format!("s{i:03}-{j}-{}-p{pitch}-r{rate}", voice.replace('+', "_")),
                text: text.clone(),
                voice,
                pitch,
                rate_wpm: rate,
                pcm,
            });
        }
    }
    Ok(clips)
}

/// Writes `NAME.wav` (16 kHz, 16-bit) and `NAME.txt` per clip, plus `manifest.jsonl`
/// (name, text, voice, pitch, rate): a folder `bench asr DIR` reads back.
pub fn save_clips(clips: &[SpokenClip], dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut manifest = String::new();
    for c in clips {
        std::fs::write(
            dir.join(format!("{}.wav", c.name)),
            audio::encode_wav_s16(&c.pcm, audio::TARGET_RATE),
        )?;
        std::fs::write(dir.join(format!("{}.txt", c.name)), format!("{}\n", c.text))?;
        manifest.push_str(&serde_json::to_string(c).expect("plain struct"));
        manifest.push('\n');
    }
    std::fs::write(dir.join("manifest.jsonl"), manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_every_combination() {
        let g = VoiceGrid {
            voices: vec!["a".into(), "b".into()],
            pitches: vec![70, 99],
            rates: vec![150],
        };
        let c = g.combinations();
        assert_eq!(c.len(), 4);
        assert_eq!(c[0], ("a".to_string(), 70, 150));
        assert_eq!(c[3], ("b".to_string(), 99, 150));
    }

    #[test]
    fn reads_plain_and_jsonl_sentences() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.txt");
        std::fs::write(
            &p,
            "# comment\nhello teddy\n\n{\"text\": \"a b\", \"label\": \"x\"}\n",
        )
        .unwrap();
        assert_eq!(read_sentences(&p).unwrap(), vec!["hello teddy", "a b"]);
        std::fs::write(&p, "{\"nope\": 1}\n").unwrap();
        assert!(matches!(
            read_sentences(&p),
            Err(SpokenError::Parse { line: 1, .. })
        ));
        std::fs::write(&p, "\n# only comments\n").unwrap();
        assert!(matches!(read_sentences(&p), Err(SpokenError::Empty(_))));
    }
}
