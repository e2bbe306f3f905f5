//! File connectors: directories of audio clips with reference transcripts.
//!
//! A reference is either a `.txt` file beside the clip (same stem) or a line of a
//! PocketSphinx-style `transcription` file: `<s> words </s> (clip-id)`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const AUDIO_EXTENSIONS: [&str; 5] = ["wav", "flac", "ogg", "mp3", "raw"];

#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub name: String,
    pub path: PathBuf,
    pub reference: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no audio clips with reference text in {0}")]
    Empty(PathBuf),
}

fn read(path: &Path) -> Result<String, ClipError> {
    std::fs::read_to_string(path).map_err(|source| ClipError::Io {
        path: path.into(),
        source,
    })
}

/// Parse a PocketSphinx `transcription` file into clip id → reference text.
pub fn parse_transcription(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let open = line.rfind('(')?;
            let id = line[open + 1..].trim().trim_end_matches(')').trim();
            let words: Vec<&str> = line[..open]
                .split_whitespace()
                .filter(|w| *w != "<s>" && *w != "</s>")
                .collect();
            (!id.is_empty()).then(|| (id.to_string(), words.join(" ")))
        })
        .collect()
}

/// The clips in `dir` that have a reference text, sorted by name.
pub fn clips_in_dir(dir: &Path) -> Result<Vec<Clip>, ClipError> {
    let transcription = dir.join("transcription");
    let table = if transcription.exists() {
        parse_transcription(&read(&transcription)?)
    } else {
        HashMap::new()
    };
    let entries = std::fs::read_dir(dir).map_err(|source| ClipError::Io {
        path: dir.into(),
        source,
    })?;
    let mut clips = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !AUDIO_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()) {
            continue;
        }
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let txt = path.with_extension("txt");
        let reference = if txt.exists() {
            Some(read(&txt)?.trim().to_string())
        } else {
            table.get(&name).cloned()
        };
        if let Some(reference) = reference {
            clips.push(Clip {
                name,
                path,
                reference,
            });
        }
    }
    if clips.is_empty() {
        return Err(ClipError::Empty(dir.into()));
    }
    clips.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(clips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pocketsphinx_transcriptions() {
        let t = parse_transcription(
            "<s> he was not an ill disposed young man </s> (sense-0880)\n\n<s> x </s> ()\n",
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t["sense-0880"], "he was not an ill disposed young man");
    }

    #[test]
    fn finds_clips_with_txt_or_transcription_references() {
        let dir = std::env::temp_dir().join(format!("tf-clips-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.wav"), b"x").unwrap();
        std::fs::write(dir.join("a.txt"), "hello there\n").unwrap();
        std::fs::write(dir.join("b.flac"), b"x").unwrap();
        std::fs::write(dir.join("c.mp3"), b"x").unwrap();
        std::fs::write(dir.join("transcription"), "<s> bee </s> (b)\n").unwrap();
        let clips = clips_in_dir(&dir).unwrap();
        let names: Vec<_> = clips
            .iter()
            .map(|c| (c.name.as_str(), c.reference.as_str()))
            .collect();
        assert_eq!(names, vec![("a", "hello there"), ("b", "bee")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
