//! A simulated fleet of toys: speech from text (espeak-ng) or WAV files, encoded in any
//! wire codec (sox), cut into chunks and produced to the audio topic.
//!
//! espeak-ng and sox run as processes: both are GPL, and teddyflow never links them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire::{chunk_headers, ChunkHeaders, Codec, OutRecord};

/// An espeak-ng voice. Children's voices are approximated with high pitch.
#[derive(Debug, Clone, PartialEq)]
pub struct Voice {
    pub name: String,
    pub pitch: u8,
    pub words_per_minute: u16,
}

impl Voice {
    pub fn new(name: &str, pitch: u8, words_per_minute: u16) -> Self {
        Self {
            name: name.into(),
            pitch,
            words_per_minute,
        }
    }
}

/// The voices the fleet cycles through: two child-like, two adult.
pub fn default_voices() -> Vec<Voice> {
    vec![
        Voice::new("en-us+f3", 85, 150),
        Voice::new("en+m3", 80, 150),
        Voice::new("en-us", 50, 160),
        Voice::new("en+f2", 60, 160),
    ]
}

/// Phrases a child might say to a teddy bear; the fleet cycles through them.
pub const CHILD_PHRASES: [&str; 10] = [
    "hello teddy how are you today",
    "can you tell me a story about a dragon",
    "i had pizza for lunch and it was yummy",
    "why is the sky blue",
    "my cat is sleeping on my bed",
    "do you want to play a game with me",
    "i built a big tower with my blocks",
    "what do bears eat for breakfast",
    "we went to the park and i saw a duck",
    "good night teddy see you tomorrow",
];

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("could not run `{program}` (is it installed? `make setup` installs it): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{program}` failed: {stderr}")]
    Failed { program: String, stderr: String },
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad WAV input: {0}")]
    Wav(String),
}

fn run(program: &str, args: &[&str]) -> Result<Vec<u8>, FleetError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| FleetError::Spawn {
            program: program.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(FleetError::Failed {
            program: program.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

fn temp_path(ext: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("teddyflow-{}-{n}.{ext}", std::process::id()))
}

/// Speak `text` with espeak-ng; returns a WAV file (22050 Hz mono).
///
/// Written to a file rather than stdout: on a pipe espeak-ng cannot seek back, and leaves
/// the WAV header's length fields at their "unknown" maximum.
pub fn synthesize(text: &str, voice: &Voice) -> Result<Vec<u8>, FleetError> {
    let pitch = voice.pitch.to_string();
    let speed = voice.words_per_minute.to_string();
    let path = temp_path("wav");
    let file = path.to_str().unwrap_or_default();
    let result = run(
        "espeak-ng",
        &[
            "-w",
            file,
            "-v",
            &voice.name,
            "-p",
            &pitch,
            "-s",
            &speed,
            text,
        ],
    )
    .and_then(|_| {
        std::fs::read(&path).map_err(|source| FleetError::Io {
            path: path.clone(),
            source,
        })
    });
    let _ = std::fs::remove_file(&path);
    result
}

/// Audio ready to send: the bytes of one utterance in one wire codec.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub codec: Codec,
    pub rate: Option<u32>,
    pub channels: u16,
    pub bytes: Vec<u8>,
}

/// Encode a WAV file's bytes into `codec` (pcm_s16le, wav, flac, ogg, mp3).
pub fn encode(wav: &[u8], codec: Codec) -> Result<Encoded, FleetError> {
    match codec {
        Codec::Wav => Ok(Encoded {
            codec,
            rate: None,
            channels: 1,
            bytes: wav.to_vec(),
        }),
        Codec::PcmS16le => wav_to_pcm(wav),
        Codec::Flac | Codec::Ogg | Codec::Mp3 => sox_convert(wav, codec),
    }
}

fn wav_to_pcm(wav: &[u8]) -> Result<Encoded, FleetError> {
    let mut reader = hound::WavReader::new(std::io::Cursor::new(wav))
        .map_err(|e| FleetError::Wav(e.to_string()))?;
    let spec = reader.spec();
    if spec.bits_per_sample != 16 || spec.sample_format != hound::SampleFormat::Int {
        return Err(FleetError::Wav("expected 16-bit integer samples".into()));
    }
    let mut bytes = Vec::with_capacity(reader.len() as usize * 2);
    for s in reader.samples::<i16>() {
        bytes.extend_from_slice(&s.map_err(|e| FleetError::Wav(e.to_string()))?.to_le_bytes());
    }
    Ok(Encoded {
        codec: Codec::PcmS16le,
        rate: Some(spec.sample_rate),
        channels: spec.channels,
        bytes,
    })
}

fn sox_convert(wav: &[u8], codec: Codec) -> Result<Encoded, FleetError> {
    let input = temp_path("wav");
    let output = temp_path(codec.extension());
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FleetError::Io { path, source }
    };
    std::fs::write(&input, wav).map_err(io(&input))?;
    let result = run(
        "sox",
        &[
            input.to_str().unwrap_or_default(),
            output.to_str().unwrap_or_default(),
        ],
    )
    .and_then(|_| std::fs::read(&output).map_err(io(&output)));
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    Ok(Encoded {
        codec,
        rate: None,
        channels: 1,
        bytes: result?,
    })
}

/// Names the simulated children's profiles cycle through.
pub const CHILD_NAMES: &[&str] = &["Mia", "Leo", "Ava", "Noah", "Zoe", "Sam"];

/// The profile record of a simulated child: key = child id, JSON value.
pub fn profile_record(topic: &str, child: &str, name: &str, age: u8, language: &str) -> OutRecord {
    let value = serde_json::json!({ "name": name, "age": age, "language": language });
    OutRecord {
        topic: topic.into(),
        key: Some(child.as_bytes().to_vec()),
        payload: value.to_string().into_bytes(),
        headers: Vec::new(),
    }
}

/// One utterance of one conversation, as a toy would send it.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    pub conversation: String,
    pub utterance: String,
    pub child: Option<String>,
    pub audio: Encoded,
}

/// Cut an utterance into chunk records of at most `chunk_bytes` each, in `seq` order.
pub fn to_records(u: &Utterance, chunk_bytes: usize, topic: &str, sent_ms: i64) -> Vec<OutRecord> {
    let pieces: Vec<&[u8]> = u.audio.bytes.chunks(chunk_bytes.max(1)).collect();
    let last = pieces.len().saturating_sub(1);
    pieces
        .iter()
        .enumerate()
        .map(|(seq, bytes)| {
            let headers = ChunkHeaders {
                utterance: u.utterance.clone(),
                seq: seq as u32,
                is_final: seq == last,
                codec: u.audio.codec,
                rate: u.audio.rate,
                channels: u.audio.channels,
                child: u.child.clone(),
                sent_ms: Some(sent_ms),
            };
            OutRecord {
                topic: topic.into(),
                key: Some(u.conversation.clone().into_bytes()),
                payload: bytes.to_vec(),
                headers: chunk_headers(&headers),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utterance(len: usize) -> Utterance {
        Utterance {
            conversation: "c1".into(),
            utterance: "u1".into(),
            child: Some("kid".into()),
            audio: Encoded {
                codec: Codec::PcmS16le,
                rate: Some(16000),
                channels: 1,
                bytes: (0..len).map(|i| i as u8).collect(),
            },
        }
    }

    #[test]
    fn chunks_cover_the_audio_and_only_the_last_is_final() {
        let recs = to_records(&utterance(10), 4, "teddy.audio", 7);
        assert_eq!(recs.len(), 3);
        let joined: Vec<u8> = recs.iter().flat_map(|r| r.payload.clone()).collect();
        assert_eq!(joined, utterance(10).audio.bytes);
        let parsed: Vec<_> = recs
            .iter()
            .map(|r| {
                let raw = crate::wire::RawRecord {
                    topic: r.topic.clone(),
                    partition: 0,
                    offset: 0,
                    key: r.key.clone(),
                    value: Some(r.payload.clone()),
                    headers: r.headers.clone(),
                };
                crate::wire::parse_chunk(&raw, 4).unwrap().headers
            })
            .collect();
        assert_eq!(
            parsed.iter().map(|h| h.seq).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(parsed.iter().filter(|h| h.is_final).count(), 1);
        assert!(parsed[2].is_final);
    }

    #[test]
    fn synthesized_speech_encodes_in_every_codec() {
        let wav = synthesize("hello teddy", &default_voices()[0]).expect("espeak-ng installed");
        let pcm = encode(&wav, Codec::PcmS16le).unwrap();
        assert_eq!(pcm.rate, Some(22050));
        // About a second of speech, as 16-bit samples.
        assert!(
            pcm.bytes.len() > 22050 && pcm.bytes.len() < 22050 * 2 * 3,
            "{}",
            pcm.bytes.len()
        );
        for codec in [Codec::Flac, Codec::Ogg, Codec::Mp3] {
            let enc = encode(&wav, codec).unwrap();
            assert!(
                !enc.bytes.is_empty() && enc.bytes.len() < wav.len(),
                "{codec}"
            );
        }
        assert_eq!(&encode(&wav, Codec::Flac).unwrap().bytes[..4], b"fLaC");
        assert_eq!(&encode(&wav, Codec::Ogg).unwrap().bytes[..4], b"OggS");
    }
}
