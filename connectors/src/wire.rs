//! The audio wire format. One Kafka record is one chunk of one utterance.
//!
//! Key: conversation id (UTF-8). Headers: `utterance`, `seq`, `final`, `codec`, `rate`,
//! `channels`, `child`, `sent_ms`. Value: the chunk bytes. See `docs/wire-format.md`.

use serde::{Deserialize, Serialize};

pub const H_UTTERANCE: &str = "utterance";
pub const H_SEQ: &str = "seq";
pub const H_FINAL: &str = "final";
pub const H_CODEC: &str = "codec";
pub const H_RATE: &str = "rate";
pub const H_CHANNELS: &str = "channels";
pub const H_CHILD: &str = "child";
pub const H_SENT_MS: &str = "sent_ms";

/// The audio codecs accepted on the wire (decoding lives in `teddyflow-models`). Names are
/// parsed case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    PcmS16le,
    Wav,
    Flac,
    Ogg,
    Mp3,
}

impl Codec {
    pub const ALL: [Codec; 5] = [
        Codec::PcmS16le,
        Codec::Wav,
        Codec::Flac,
        Codec::Ogg,
        Codec::Mp3,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Codec::PcmS16le => "pcm_s16le",
            Codec::Wav => "wav",
            Codec::Flac => "flac",
            Codec::Ogg => "ogg",
            Codec::Mp3 => "mp3",
        }
    }

    /// File extension; also the probe hint a demuxer can use to try the right format first.
    pub fn extension(&self) -> &'static str {
        match self {
            Codec::PcmS16le => "raw",
            other => other.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown codec `{0}` (expected one of pcm_s16le, wav, flac, ogg, mp3)")]
pub struct UnknownCodec(pub String);

impl std::str::FromStr for Codec {
    type Err = UnknownCodec;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Codec::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownCodec(s.to_string()))
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record as read from Kafka, kept whole so a dead letter can carry the original.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RawRecord {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Parsed headers of one chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkHeaders {
    pub utterance: String,
    pub seq: u32,
    pub is_final: bool,
    pub codec: Codec,
    pub rate: Option<u32>,
    pub channels: u16,
    pub child: Option<String>,
    pub sent_ms: Option<i64>,
}

/// One valid chunk, ready to be routed to the worker that owns its conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub conversation: String,
    pub headers: ChunkHeaders,
    pub bytes: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
}

/// A record to write: the engine tracks its delivery before committing input offsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("record has no key: the key must be the conversation id")]
    MissingKey,
    #[error("record key is not UTF-8")]
    KeyNotUtf8,
    #[error("record has no value")]
    MissingValue,
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    #[error("header `{name}` is invalid: {reason}")]
    BadHeader { name: &'static str, reason: String },
    #[error(transparent)]
    UnknownCodec(#[from] UnknownCodec),
    #[error("chunk of {size} bytes exceeds the limit of {limit} bytes")]
    ChunkTooLarge { size: usize, limit: usize },
}

fn text<'a>(rec: &'a RawRecord, name: &'static str) -> Result<Option<&'a str>, WireError> {
    match rec.header(name) {
        None => Ok(None),
        Some(v) => {
            std::str::from_utf8(v)
                .map(|s| Some(s.trim()))
                .map_err(|_| WireError::BadHeader {
                    name,
                    reason: "not UTF-8".into(),
                })
        }
    }
}

fn number<T: std::str::FromStr>(
    rec: &RawRecord,
    name: &'static str,
) -> Result<Option<T>, WireError> {
    match text(rec, name)? {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| WireError::BadHeader {
            name,
            reason: format!("`{s}` is not a valid number"),
        }),
    }
}

fn parse_final(rec: &RawRecord) -> Result<bool, WireError> {
    match text(rec, H_FINAL)? {
        None | Some("") | Some("0") | Some("false") => Ok(false),
        Some("1") | Some("true") => Ok(true),
        Some(other) => Err(WireError::BadHeader {
            name: H_FINAL,
            reason: format!("`{other}` is not 0 or 1"),
        }),
    }
}

/// Parse a chunk record; any failure becomes a dead letter with this error as its reason.
pub fn parse_chunk(rec: &RawRecord, max_chunk_bytes: usize) -> Result<Chunk, WireError> {
    let key = rec.key.as_ref().ok_or(WireError::MissingKey)?;
    let conversation = std::str::from_utf8(key).map_err(|_| WireError::KeyNotUtf8)?;
    if conversation.is_empty() {
        return Err(WireError::MissingKey);
    }
    let bytes = rec.value.as_ref().ok_or(WireError::MissingValue)?;
    if bytes.len() > max_chunk_bytes {
        return Err(WireError::ChunkTooLarge {
            size: bytes.len(),
            limit: max_chunk_bytes,
        });
    }
    let utterance = text(rec, H_UTTERANCE)?
        .filter(|s| !s.is_empty())
        .ok_or(WireError::MissingHeader(H_UTTERANCE))?;
    let seq = number::<u32>(rec, H_SEQ)?.ok_or(WireError::MissingHeader(H_SEQ))?;
    let codec: Codec = text(rec, H_CODEC)?
        .ok_or(WireError::MissingHeader(H_CODEC))?
        .parse()?;
    let rate = number::<u32>(rec, H_RATE)?;
    if codec == Codec::PcmS16le && rate.unwrap_or(0) == 0 {
        return Err(WireError::MissingHeader(H_RATE));
    }
    let channels = number::<u16>(rec, H_CHANNELS)?.unwrap_or(1);
    if channels == 0 || channels > 8 {
        return Err(WireError::BadHeader {
            name: H_CHANNELS,
            reason: format!("{channels} channels (expected 1 to 8)"),
        });
    }
    let headers = ChunkHeaders {
        utterance: utterance.to_string(),
        seq,
        is_final: parse_final(rec)?,
        codec,
        rate,
        channels,
        child: text(rec, H_CHILD)?
            .filter(|s| !s.is_empty())
            .map(String::from),
        sent_ms: number::<i64>(rec, H_SENT_MS)?,
    };
    Ok(Chunk {
        conversation: conversation.to_string(),
        headers,
        bytes: bytes.clone(),
        partition: rec.partition,
        offset: rec.offset,
    })
}

/// Headers for one chunk, as a producer writes them.
pub fn chunk_headers(h: &ChunkHeaders) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        (H_UTTERANCE.to_string(), h.utterance.clone().into_bytes()),
        (H_SEQ.to_string(), h.seq.to_string().into_bytes()),
        (
            H_FINAL.to_string(),
            if h.is_final {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
        ),
        (H_CODEC.to_string(), h.codec.as_str().as_bytes().to_vec()),
        (H_CHANNELS.to_string(), h.channels.to_string().into_bytes()),
    ];
    if let Some(rate) = h.rate {
        out.push((H_RATE.to_string(), rate.to_string().into_bytes()));
    }
    if let Some(child) = &h.child {
        out.push((H_CHILD.to_string(), child.clone().into_bytes()));
    }
    if let Some(ms) = h.sent_ms {
        out.push((H_SENT_MS.to_string(), ms.to_string().into_bytes()));
    }
    out
}

/// A dead-letter record: the original key, value and headers, plus why and where from.
pub fn dead_letter(rec: &RawRecord, error: &str, topic: &str) -> OutRecord {
    let mut headers = rec.headers.clone();
    headers.push(("error".into(), error.as_bytes().to_vec()));
    headers.push(("source_topic".into(), rec.topic.clone().into_bytes()));
    headers.push((
        "source_partition".into(),
        rec.partition.to_string().into_bytes(),
    ));
    headers.push(("source_offset".into(), rec.offset.to_string().into_bytes()));
    OutRecord {
        topic: topic.to_string(),
        key: rec.key.clone(),
        payload: rec.value.clone().unwrap_or_default(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(headers: &[(&str, &str)], value: &[u8]) -> RawRecord {
        RawRecord {
            topic: "teddy.audio".into(),
            partition: 2,
            offset: 41,
            key: Some(b"conv-1".to_vec()),
            value: Some(value.to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    #[test]
    fn parses_a_complete_chunk() {
        let rec = record(
            &[
                ("utterance", "u7"),
                ("seq", "3"),
                ("final", "1"),
                ("codec", "WAV"),
                ("child", "c9"),
                ("sent_ms", "1700000000000"),
            ],
            b"abc",
        );
        let chunk = parse_chunk(&rec, 10).unwrap();
        assert_eq!(chunk.conversation, "conv-1");
        assert_eq!(chunk.headers.seq, 3);
        assert!(chunk.headers.is_final);
        assert_eq!(chunk.headers.codec, Codec::Wav);
        assert_eq!(chunk.headers.channels, 1);
        assert_eq!(chunk.headers.child.as_deref(), Some("c9"));
        assert_eq!((chunk.partition, chunk.offset), (2, 41));
    }

    #[test]
    fn headers_round_trip_through_the_producer_side() {
        let h = ChunkHeaders {
            utterance: "u1".into(),
            seq: 0,
            is_final: false,
            codec: Codec::PcmS16le,
            rate: Some(8000),
            channels: 2,
            child: None,
            sent_ms: Some(5),
        };
        let mut rec = record(&[], b"xx");
        rec.headers = chunk_headers(&h);
        assert_eq!(parse_chunk(&rec, 10).unwrap().headers, h);
    }

    #[test]
    fn rejects_bad_records_with_clear_reasons() {
        let ok = [("utterance", "u"), ("seq", "0"), ("codec", "wav")];
        let mut no_key = record(&ok, b"x");
        no_key.key = None;
        assert_eq!(parse_chunk(&no_key, 10), Err(WireError::MissingKey));
        assert_eq!(
            parse_chunk(&record(&ok[..2], b"x"), 10),
            Err(WireError::MissingHeader("codec"))
        );
        let e = parse_chunk(&record(&[ok[0], ("seq", "x"), ok[2]], b"x"), 10).unwrap_err();
        assert!(e.to_string().contains("`x` is not a valid number"), "{e}");
        let e = parse_chunk(&record(&[ok[0], ok[1], ("codec", "aac")], b"x"), 10);
        assert_eq!(e, Err(UnknownCodec("aac".into()).into()));
        let e = parse_chunk(&record(&[ok[0], ok[1], ("codec", "pcm_s16le")], b"x"), 10);
        assert_eq!(e, Err(WireError::MissingHeader("rate")));
        let e = parse_chunk(&record(&ok, b"0123456789ab"), 10);
        assert_eq!(
            e,
            Err(WireError::ChunkTooLarge {
                size: 12,
                limit: 10
            })
        );
    }

    #[test]
    fn dead_letter_keeps_the_original_and_says_why() {
        let rec = record(&[("seq", "0")], b"payload");
        let dl = dead_letter(&rec, "missing header `utterance`", "teddy.deadletter");
        assert_eq!(dl.payload, b"payload");
        assert_eq!(dl.key.as_deref(), Some(&b"conv-1"[..]));
        let get = |n: &str| {
            dl.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(get("seq").as_deref(), Some("0"));
        assert_eq!(get("error").as_deref(), Some("missing header `utterance`"));
        assert_eq!(get("source_partition").as_deref(), Some("2"));
        assert_eq!(get("source_offset").as_deref(), Some("41"));
    }
}
