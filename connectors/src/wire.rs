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

/// Sample rates accepted for `pcm_s16le`, in Hz. Below 4 kHz there is no intelligible
/// speech; above 192 kHz no microphone records. Outside this range a rate is a mistake
/// (`rate=1000000000` is 0 ms of audio, `rate=1` hours), which Whisper would otherwise answer
/// with its usual hallucination.
pub const PCM_RATES: std::ops::RangeInclusive<u32> = 4_000..=192_000;

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

/// A raw-PCM rate must be given and within [`PCM_RATES`]; `0` is invalid, not missing.
fn check_pcm_rate(rate: Option<u32>) -> Result<(), WireError> {
    match rate {
        None => Err(WireError::MissingHeader(H_RATE)),
        Some(r) if !PCM_RATES.contains(&r) => Err(WireError::BadHeader {
            name: H_RATE,
            reason: format!(
                "{r} Hz is outside {}–{} Hz",
                PCM_RATES.start(),
                PCM_RATES.end()
            ),
        }),
        Some(_) => Ok(()),
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
    if codec == Codec::PcmS16le {
        check_pcm_rate(rate)?;
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

/// Input that cannot be processed: the original key, value and headers, plus why and where
/// it was read (`docs/wire-format.md`, "Output: teddy.deadletter").
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub reason: DeadLetterReason,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// The original record's headers (for an utterance: its first chunk's).
    pub headers: Vec<(String, Vec<u8>)>,
    pub error: String,
    pub source: Option<Provenance>,
}

/// Why a record became a dead letter, in few enough words to be a metric label (the
/// `reason` header; `error` says the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The record itself: missing or invalid key or headers, an oversized chunk.
    Parse,
    /// The utterance's chunks: too many, too large, chunk 0 never came.
    Reassembly,
    /// Undecodable, degenerate or over-long audio.
    Decode,
    /// Speech-to-text failed.
    Asr,
    /// A profile record that is not a profile.
    Profile,
    /// An output the broker refused (too large, or a permanent error).
    Refused,
    /// Anything else.
    Other,
}

impl DeadLetterReason {
    pub const ALL: &'static [DeadLetterReason] = &[
        DeadLetterReason::Parse,
        DeadLetterReason::Reassembly,
        DeadLetterReason::Decode,
        DeadLetterReason::Asr,
        DeadLetterReason::Profile,
        DeadLetterReason::Refused,
        DeadLetterReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Parse => "parse",
            DeadLetterReason::Reassembly => "reassembly",
            DeadLetterReason::Decode => "decode",
            DeadLetterReason::Asr => "asr",
            DeadLetterReason::Profile => "profile",
            DeadLetterReason::Refused => "refused",
            DeadLetterReason::Other => "other",
        }
    }

    pub fn parse(word: &str) -> Option<DeadLetterReason> {
        Self::ALL.iter().copied().find(|r| r.as_str() == word)
    }
}

/// Where a dead letter's input was read: one record, or an utterance's range of chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

impl DeadLetter {
    /// A record that could not be parsed, dead-lettered alone and unchanged.
    pub fn of_record(
        rec: &RawRecord,
        reason: DeadLetterReason,
        error: impl std::fmt::Display,
    ) -> DeadLetter {
        DeadLetter {
            reason,
            key: rec.key.clone(),
            value: rec.value.clone().unwrap_or_default(),
            headers: rec.headers.clone(),
            error: error.to_string(),
            source: Some(Provenance {
                topic: rec.topic.clone(),
                partition: rec.partition,
                first_offset: rec.offset,
                last_offset: rec.offset,
            }),
        }
    }

    /// The record to write to `topic`, cut to fit `max_bytes` ([`fit_dead_letter`]).
    pub fn encode(&self, topic: &str, max_bytes: usize) -> OutRecord {
        let mut headers = self.headers.clone();
        headers.push(("reason".into(), self.reason.as_str().into()));
        headers.push(("error".into(), self.error.clone().into_bytes()));
        if let Some(src) = &self.source {
            let mut add = |k: &str, v: String| headers.push((k.into(), v.into_bytes()));
            add("source_topic", src.topic.clone());
            add("source_partition", src.partition.to_string());
            add("source_offset", src.first_offset.to_string());
            if src.last_offset != src.first_offset {
                add("source_offset_end", src.last_offset.to_string());
            }
        }
        let record = OutRecord {
            topic: topic.into(),
            key: self.key.clone(),
            payload: self.value.clone(),
            headers,
        };
        fit_dead_letter(record, max_bytes)
    }
}

/// Header on a dead letter whose value was cut to fit the broker's record size limit.
pub const H_TRUNCATED: &str = "truncated";
/// The original value's length in bytes, on a truncated dead letter.
pub const H_ORIGINAL_BYTES: &str = "original_bytes";

/// Headers teddyflow adds to a dead letter: kept when a record must shrink.
const PROVENANCE: [&str; 7] = [
    "error",
    "source_topic",
    "source_partition",
    "source_offset",
    "source_offset_end",
    H_TRUNCATED,
    H_ORIGINAL_BYTES,
];

/// Bytes a record takes against the broker's `message.max.bytes`: key, value and headers,
/// with a conservative allowance for the record's framing (varints, attributes) so that a
/// record sized to fit here is never refused by librdkafka.
pub fn record_size(record: &OutRecord) -> usize {
    const RECORD_FRAMING: usize = 64;
    const HEADER_FRAMING: usize = 16;
    let headers: usize = record
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + HEADER_FRAMING)
        .sum();
    RECORD_FRAMING + record.key.as_ref().map_or(0, Vec::len) + record.payload.len() + headers
}

/// A dead letter that fits in `max_bytes` (see [`record_size`]): unchanged when it already
/// does; otherwise the value is cut to fit, with headers `truncated=1` and
/// `original_bytes=N` (the original value's length). A record the broker refuses is never
/// delivered, and a sink that retried it would hold back everything behind it. Should the
/// key and headers alone not fit (hostile input), the input's own header values and the key
/// are cut to 1 KiB, then the input's headers dropped, keeping teddyflow's provenance.
pub fn fit_dead_letter(mut record: OutRecord, max_bytes: usize) -> OutRecord {
    if record_size(&record) <= max_bytes {
        return record;
    }
    let original = record.payload.len();
    let mut value = std::mem::take(&mut record.payload);
    record
        .headers
        .retain(|(k, _)| k != H_TRUNCATED && k != H_ORIGINAL_BYTES);
    record.headers.push((H_TRUNCATED.into(), b"1".to_vec()));
    record
        .headers
        .push((H_ORIGINAL_BYTES.into(), original.to_string().into_bytes()));
    shrink_envelope(&mut record, max_bytes);
    value.truncate(max_bytes.saturating_sub(record_size(&record)));
    record.payload = value;
    record
}

/// Cut `s` to at most `max` bytes, on a character boundary.
fn cut_str(s: &mut String, max: usize) {
    let mut n = max.min(s.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s.truncate(n);
}

/// Make key and headers fit (the value is empty here): cut the input's header values and
/// the key, then drop the input's headers from the last, until the record fits.
fn shrink_envelope(record: &mut OutRecord, max_bytes: usize) {
    const CUT: usize = 1024;
    if record_size(record) <= max_bytes {
        return;
    }
    for (k, v) in record.headers.iter_mut() {
        if !PROVENANCE.contains(&k.as_str()) {
            v.truncate(CUT);
        }
        cut_str(k, CUT);
    }
    if let Some(key) = record.key.as_mut() {
        key.truncate(CUT);
    }
    while record_size(record) > max_bytes {
        let last_foreign = record
            .headers
            .iter()
            .rposition(|(k, _)| !PROVENANCE.contains(&k.as_str()));
        match last_foreign {
            Some(i) => {
                record.headers.remove(i);
            }
            // Only teddyflow's own headers are left: cut the error text, the one long one.
            None => {
                for (k, v) in record.headers.iter_mut() {
                    if k == "error" {
                        v.truncate(CUT.min(v.len() / 2));
                    }
                }
                if record
                    .headers
                    .iter()
                    .all(|(k, v)| k != "error" || v.is_empty())
                {
                    break;
                }
            }
        }
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
        let pcm = |rate: &str| {
            let h = [ok[0], ok[1], ("codec", "pcm_s16le"), ("rate", rate)];
            parse_chunk(&record(&h, b"x"), 10)
        };
        assert_eq!(pcm("").unwrap_err(), WireError::MissingHeader("rate"));
        assert!(pcm("4000").is_ok() && pcm("192000").is_ok());
        let e = parse_chunk(&record(&ok, b"0123456789ab"), 10);
        assert_eq!(
            e,
            Err(WireError::ChunkTooLarge {
                size: 12,
                limit: 10
            })
        );
    }

    /// Issue 11, defect 5: degenerate raw-PCM rates are wire errors, and `rate=0` is
    /// invalid, not missing.
    #[test]
    fn pcm_rates_outside_the_documented_range_are_invalid() {
        for rate in ["0", "1", "3999", "192001", "1000000000"] {
            let h = [
                ("utterance", "u"),
                ("seq", "0"),
                ("codec", "pcm_s16le"),
                ("rate", rate),
            ];
            let e = parse_chunk(&record(&h, b"xx"), 10).unwrap_err();
            assert!(
                matches!(e, WireError::BadHeader { name: "rate", .. }),
                "{rate}: {e}"
            );
            assert!(e.to_string().contains("outside 4000–192000 Hz"), "{e}");
        }
        // Containers carry their own rate: a stray header is not theirs to fail on.
        let h = [
            ("utterance", "u"),
            ("seq", "0"),
            ("codec", "wav"),
            ("rate", "0"),
        ];
        assert!(parse_chunk(&record(&h, b"xx"), 10).is_ok());
    }

    fn header_of<'a>(r: &'a OutRecord, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Issue 11, defect 1: a dead letter carrying a whole oversized utterance is cut to fit
    /// the broker, and says so.
    #[test]
    fn dead_letters_are_cut_to_fit_and_say_so() {
        let limit = 900 * 1024;
        let mut rec = record(&[("utterance", "u"), ("seq", "0")], &[]);
        rec.value = Some(vec![7u8; 8 * 1024 * 1024]);
        let dl = DeadLetter::of_record(&rec, DeadLetterReason::Parse, "decode: too long")
            .encode("dl", limit);
        assert!(record_size(&dl) <= limit, "{}", record_size(&dl));
        assert!(dl.payload.len() > limit - 1024, "as much as fits is kept");
        assert!(dl.payload.iter().all(|b| *b == 7), "a prefix of the value");
        assert_eq!(header_of(&dl, H_TRUNCATED), Some("1"));
        assert_eq!(header_of(&dl, H_ORIGINAL_BYTES), Some("8388608"));
        assert_eq!(header_of(&dl, "error"), Some("decode: too long"));
        assert_eq!(header_of(&dl, "utterance"), Some("u"));
        assert_eq!(header_of(&dl, "source_offset"), Some("41"));
        // What fits is left alone.
        let small = DeadLetter::of_record(
            &record(&[("seq", "0")], b"abc"),
            DeadLetterReason::Parse,
            "why",
        );
        let encoded = small.encode("dl", limit);
        assert_eq!(encoded.payload, b"abc");
        assert_eq!(fit_dead_letter(encoded.clone(), limit), encoded);
        // Hostile headers: a record whose headers alone are over the limit still fits,
        // keeping teddyflow's provenance; multi-byte header names are cut on a boundary.
        let mut hostile = record(&[], b"x");
        for i in 0..2_000 {
            hostile
                .headers
                .push((format!("ключ{i}").repeat(200), vec![b'h'; 2_000]));
        }
        let dl =
            DeadLetter::of_record(&hostile, DeadLetterReason::Parse, "bad").encode("dl", 64 * 1024);
        assert!(record_size(&dl) <= 64 * 1024, "{}", record_size(&dl));
        assert_eq!(header_of(&dl, "error"), Some("bad"));
        assert_eq!(header_of(&dl, "source_partition"), Some("2"));
        assert_eq!(header_of(&dl, H_ORIGINAL_BYTES), Some("1"));
    }

    #[test]
    fn dead_letter_keeps_the_original_and_says_why() {
        let rec = record(&[("seq", "0")], b"payload");
        let dl = DeadLetter::of_record(&rec, DeadLetterReason::Parse, "missing header `utterance`")
            .encode("teddy.deadletter", 1 << 20);
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
