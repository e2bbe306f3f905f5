//! Decode one utterance's audio bytes to mono f32 PCM at [`TARGET_RATE`].
//!
//! Containers (wav, flac, ogg/vorbis, mp3) go through symphonia; raw `pcm_s16le` is parsed here
//! because it has no header for symphonia to probe. Everything is downmixed to mono *before*
//! resampling so the resampler runs once, not once per channel.
//!
//! The bytes come from toys in the field, so every path treats them as hostile: no panics, a
//! duration cap against decompression bombs, and error messages that are safe to publish on the
//! dead-letter topic (they never contain audio content).

use std::cmp::Ordering;
use std::f64::consts::PI;
use std::fmt;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::packet::Packet;

/// Sample rate of everything [`decode`] returns (what Whisper expects).
pub const TARGET_RATE: u32 = 16_000;

/// Default cap on utterance length used by [`DecodeOptions::new`].
pub const DEFAULT_MAX_SECONDS: f32 = 30.0;

pub use teddyflow_connectors::wire::Codec;

/// Source sample rates accepted, Hz, raw or declared by a container (the wire format's
/// range): outside it the audio is degenerate (`rate=1000000000` is 0 ms of audio), and
/// Whisper would answer it with a hallucination ("you") instead of it being dead-lettered.
pub const SOURCE_RATES: std::ops::RangeInclusive<u32> = teddyflow_connectors::wire::PCM_RATES;

/// Shortest decoded audio accepted, ms. Below it there is no word to hear, and Whisper
/// hallucinates one.
pub const MIN_AUDIO_MS: u64 = 100;

#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub codec: Codec,
    /// Sample rate of raw `pcm_s16le` (required there; containers carry their own).
    pub rate: Option<u32>,
    /// Interleaved channel count of raw `pcm_s16le` (containers carry their own).
    pub channels: u16,
    /// Refuse audio longer than this (decompression bombs, stuck microphones).
    pub max_seconds: f32,
}

impl DecodeOptions {
    /// Options for a container codec, or raw pcm once `rate` is set; mono, 30 s cap.
    pub fn new(codec: Codec) -> Self {
        DecodeOptions {
            codec,
            rate: None,
            channels: 1,
            max_seconds: DEFAULT_MAX_SECONDS,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecodedAudio {
    /// Mono, [`TARGET_RATE`], in [-1, 1].
    pub samples: Vec<f32>,
    pub source_rate: u32,
    pub source_channels: u16,
}

impl DecodedAudio {
    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / TARGET_RATE as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("audio payload is empty (no samples)")]
    Empty,
    #[error("pcm_s16le audio needs a sample rate, but none was given")]
    MissingRate,
    #[error("invalid pcm_s16le audio: {0}")]
    BadPcm(String),
    #[error("could not decode audio: {0}")]
    Corrupt(String),
    #[error("audio container has no decodable audio track")]
    NoAudioTrack,
    #[error("audio is too long: {seconds:.1} s exceeds the limit of {max:.1} s")]
    TooLong { seconds: f32, max: f32 },
    #[error("audio is too short: {ms} ms is less than the minimum of {min_ms} ms")]
    TooShort { ms: u64, min_ms: u64 },
    #[error("sample rate of {rate} Hz is outside the accepted 4000–192000 Hz")]
    BadRate { rate: u32 },
}

/// Decode `bytes` (one utterance in `opts.codec`) to mono f32 at [`TARGET_RATE`].
pub fn decode(bytes: &[u8], opts: &DecodeOptions) -> Result<DecodedAudio, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let (mono, source_rate, source_channels) = match opts.codec {
        Codec::PcmS16le => decode_pcm_s16le(bytes, opts)?,
        codec => decode_container_guarded(bytes, codec, opts.max_seconds)?,
    };
    let mut samples = resample(&mono, source_rate, TARGET_RATE);
    if samples.is_empty() {
        return Err(AudioError::Empty); // e.g. a single sample at 48 kHz rounds to none at 16 kHz
    }
    let ms = samples.len() as u64 * 1000 / TARGET_RATE as u64;
    if ms < MIN_AUDIO_MS {
        return Err(AudioError::TooShort {
            ms,
            min_ms: MIN_AUDIO_MS,
        });
    }
    // The sinc filter can overshoot full-scale input by a few percent (Gibbs).
    samples.iter_mut().for_each(|s| *s = s.clamp(-1.0, 1.0));
    Ok(DecodedAudio {
        samples,
        source_rate,
        source_channels,
    })
}

/// Mono samples, source rate, source channel count.
type Mono = (Vec<f32>, u32, u16);

fn decode_pcm_s16le(bytes: &[u8], opts: &DecodeOptions) -> Result<Mono, AudioError> {
    let rate = opts.rate.ok_or(AudioError::MissingRate)?;
    check_rate(rate)?;
    if opts.channels == 0 {
        return Err(AudioError::BadPcm("channel count is 0".into()));
    }
    let frame_bytes = 2 * opts.channels as usize;
    let frames = bytes.len() / frame_bytes;
    // Not `is_multiple_of`: the workspace MSRV (1.85) predates it.
    if frames * frame_bytes != bytes.len() {
        return Err(AudioError::BadPcm(format!(
            "{} bytes is not a whole number of {}-channel 16-bit frames",
            bytes.len(),
            opts.channels
        )));
    }
    check_length(frames as f64 / rate as f64, opts.max_seconds)?;
    let mono = bytes
        .chunks_exact(frame_bytes)
        .map(|frame| {
            let sum: f32 = frame
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
                .sum();
            sum / opts.channels as f32
        })
        .collect();
    Ok((mono, rate, opts.channels))
}

fn check_rate(rate: u32) -> Result<(), AudioError> {
    if SOURCE_RATES.contains(&rate) {
        Ok(())
    } else {
        Err(AudioError::BadRate { rate })
    }
}

fn check_length(seconds: f64, max_seconds: f32) -> Result<(), AudioError> {
    // `None` (a NaN limit) refuses everything instead of allowing everything.
    let over = seconds.partial_cmp(&(max_seconds as f64));
    if matches!(over, Some(Ordering::Greater) | None) {
        return Err(AudioError::TooLong {
            seconds: seconds as f32,
            max: max_seconds,
        });
    }
    Ok(())
}

/// Symphonia parses untrusted bytes; a bug in a demuxer or decoder must cost one message, not
/// the worker thread, so a panic becomes a `Corrupt` error.
fn decode_container_guarded(
    bytes: &[u8],
    codec: Codec,
    max_seconds: f32,
) -> Result<Mono, AudioError> {
    catch_unwind(AssertUnwindSafe(|| {
        decode_container(bytes, codec, max_seconds)
    }))
    .unwrap_or_else(|_| {
        tracing::warn!(%codec, "symphonia panicked while decoding; payload rejected");
        Err(AudioError::Corrupt(format!(
            "{codec}: decoder crashed on malformed data"
        )))
    })
}

fn corrupt(codec: Codec, what: &str, err: impl fmt::Display) -> AudioError {
    AudioError::Corrupt(format!("{codec}: {what}: {err}"))
}

fn decode_container(bytes: &[u8], codec: Codec, max_seconds: f32) -> Result<Mono, AudioError> {
    let mut reader = open_container(bytes, codec)?;
    let (job, params) = select_track(reader.as_ref(), codec, max_seconds)?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| corrupt(codec, "no decoder for the audio track", e))?;
    decode_packets(reader.as_mut(), decoder.as_mut(), &job)
}

fn open_container(bytes: &[u8], codec: Codec) -> Result<Box<dyn FormatReader + '_>, AudioError> {
    let mss = MediaSourceStream::new(
        Box::new(Cursor::new(bytes)),
        MediaSourceStreamOptions::default(),
    );
    let mut hint = Hint::new();
    hint.with_extension(codec.extension());
    symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| corrupt(codec, "not a readable container", e))
}

/// What one container decode needs to know besides the packets.
struct Job {
    codec: Codec,
    track_id: u32,
    max_seconds: f32,
    /// Length stated by the container, only used to word the `TooLong` error.
    claimed_seconds: Option<f64>,
}

fn select_track(
    reader: &dyn FormatReader,
    codec: Codec,
    max_seconds: f32,
) -> Result<(Job, AudioCodecParameters), AudioError> {
    let track = reader
        .default_track(TrackType::Audio)
        .ok_or(AudioError::NoAudioTrack)?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or(AudioError::NoAudioTrack)?;
    // A header that declares an absurd rate is refused before any decoder trusts it.
    if let Some(rate) = params.sample_rate {
        check_rate(rate)?;
    }
    let claimed_seconds = match (track.num_frames, params.sample_rate) {
        (Some(frames), Some(rate)) if rate > 0 => Some(frames as f64 / rate as f64),
        _ => None,
    };
    let job = Job {
        codec,
        track_id: track.id,
        max_seconds,
        claimed_seconds,
    };
    Ok((job, params.clone()))
}

impl Job {
    /// Enforced on decoded frames, not on the header: a header can lie in both directions, and a
    /// truncated upload whose header states the full length must still be heard.
    fn check_length(&self, frames: usize, rate: u32) -> Result<(), AudioError> {
        check_length(frames as f64 / rate as f64, self.max_seconds).map_err(|_| {
            let seconds = (frames as f64 / rate as f64).max(self.claimed_seconds.unwrap_or(0.0));
            AudioError::TooLong {
                seconds: seconds as f32,
                max: self.max_seconds,
            }
        })
    }
}

/// Running state of one container decode.
#[derive(Default)]
struct Acc {
    mono: Vec<f32>,
    rate: u32,
    channels: u16,
    skipped: usize,
}

fn decode_packets(
    reader: &mut dyn FormatReader,
    decoder: &mut dyn AudioDecoder,
    job: &Job,
) -> Result<Mono, AudioError> {
    let mut acc = Acc::default();
    let mut interleaved: Vec<f32> = Vec::new();
    while let Some(packet) = next_packet(reader, &acc, job.codec)? {
        if packet.track_id != job.track_id {
            continue;
        }
        if !decode_one(decoder, &packet, &mut acc, &mut interleaved, job.codec)? {
            break;
        }
        check_rate(acc.rate)?;
        job.check_length(acc.mono.len(), acc.rate)?;
    }
    finish(acc, job.codec)
}

/// `None` at the end of the stream, or where a read error follows some decoded audio: a
/// truncated upload ends in an I/O or demux error, and what came before it is usable.
fn next_packet(
    reader: &mut dyn FormatReader,
    acc: &Acc,
    codec: Codec,
) -> Result<Option<Packet>, AudioError> {
    match reader.next_packet() {
        Ok(packet) => Ok(packet),
        Err(e) if !acc.mono.is_empty() => {
            tracing::debug!(%codec, error = %e, "container read stopped early");
            Ok(None)
        }
        Err(e) => Err(corrupt(codec, "could not read audio packets", e)),
    }
}

/// Appends the packet's audio to `acc` as mono; `false` means stop decoding, keeping what we have.
fn decode_one(
    decoder: &mut dyn AudioDecoder,
    packet: &Packet,
    acc: &mut Acc,
    interleaved: &mut Vec<f32>,
    codec: Codec,
) -> Result<bool, AudioError> {
    match decoder.decode(packet) {
        Ok(buf) => {
            if acc.rate == 0 {
                acc.rate = buf.spec().rate();
                acc.channels = buf.spec().channels().count() as u16;
            }
            buf.copy_to_vec_interleaved(interleaved);
            push_mono(&mut acc.mono, interleaved, buf.num_planes());
            Ok(true)
        }
        // Per symphonia's contract these only spoil this packet; later ones may be fine.
        Err(e @ (SymError::DecodeError(_) | SymError::IoError(_))) => {
            acc.skipped += 1;
            tracing::debug!(%codec, error = %e, "skipping undecodable packet");
            Ok(true)
        }
        Err(e) if !acc.mono.is_empty() => {
            tracing::debug!(%codec, error = %e, "decoder stopped early");
            Ok(false)
        }
        Err(e) => Err(corrupt(codec, "could not decode audio", e)),
    }
}

fn finish(acc: Acc, codec: Codec) -> Result<Mono, AudioError> {
    if acc.skipped > 0 {
        tracing::debug!(%codec, skipped = acc.skipped, "packets skipped while decoding");
    }
    if acc.mono.is_empty() {
        return Err(AudioError::Corrupt(format!(
            "{codec}: stream contains no decodable audio"
        )));
    }
    Ok((acc.mono, acc.rate, acc.channels.max(1)))
}

/// Averages each interleaved frame; non-finite samples (possible in float WAV) become silence
/// so one bad sample cannot turn the whole resampled utterance into NaN.
fn push_mono(out: &mut Vec<f32>, interleaved: &[f32], channels: usize) {
    if channels == 0 {
        return;
    }
    out.extend(interleaved.chunks_exact(channels).map(|frame| {
        let sum: f32 = frame
            .iter()
            .map(|&s| if s.is_finite() { s } else { 0.0 })
            .sum();
        (sum / channels as f32).clamp(-1.0, 1.0)
    }));
}

/// Zero crossings of the sinc kernel on each side: more = steeper anti-alias filter, slower.
const ZERO_CROSSINGS: usize = 32;
/// Kaiser window shape; 8.0 gives about 80 dB stopband rejection.
const KAISER_BETA: f64 = 8.0;
/// Cutoff as a fraction of the lower Nyquist rate, chosen so the Kaiser transition band
/// (about 8 % of the cutoff wide at 32 zero crossings) ends right at Nyquist: no aliasing,
/// flat passband up to ~85 % of Nyquist (6.8 kHz at 16 kHz output).
const ROLLOFF: f64 = 0.925;
/// Kernel table resolution (entries per zero crossing), linearly interpolated.
const TABLE_STEPS: usize = 512;

/// Above this many coefficients (phases x taps) the polyphase bank is not precomputed; only
/// rates with a tiny common divisor get there, and they compute each output's taps instead.
const MAX_BANK_LEN: usize = 1 << 20;

/// Mono downmix already done; resample any rate to any rate (used for 8k/22.05k/44.1k/48k → 16k
/// and for TTS output later).
///
/// Band-limited windowed-sinc interpolation with zero phase: output sample `i` sits exactly at
/// input time `i * from / to`, so there is no delay to trim and the output has
/// `round(len * to / from)` samples. Rates of 0 yield an empty output rather than a panic.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to {
        return samples.to_vec();
    }
    if samples.is_empty() || from == 0 || to == 0 {
        return Vec::new();
    }
    let out_len = (samples.len() as u128 * to as u128 + from as u128 / 2) / from as u128;
    let bank = FilterBank::new(from, to);
    let mut scratch = Vec::new();
    (0..out_len as usize)
        .map(|i| {
            let (start, phase) = bank.locate(i);
            dot_at(samples, start, bank.coefs(phase, &mut scratch))
        })
        .collect()
}

/// Polyphase form of the kernel: with `from / to = step / phases` in lowest terms, output `i`
/// needs only one of `phases` distinct tap sets, so the sinc is evaluated once per tap set
/// instead of once per tap per output.
struct FilterBank {
    kernel: Kernel,
    phases: u64,
    step: u64,
    half: usize,
    taps: usize,
    coefs: Vec<f32>,
}

impl FilterBank {
    fn new(from: u32, to: u32) -> Self {
        // Cutoff below the lower of the two Nyquist rates, as a fraction of the input rate (x2).
        let bandwidth = ROLLOFF * (to as f64 / from as f64).min(1.0);
        let kernel = Kernel {
            table: kernel_table(),
            bandwidth,
        };
        let g = gcd(from, to);
        let half = kernel.half_width().ceil() as usize;
        let (phases, step, taps) = ((to / g) as u64, (from / g) as u64, 2 * half + 1);
        let mut bank = FilterBank {
            kernel,
            phases,
            step,
            half,
            taps,
            coefs: Vec::new(),
        };
        if (phases as usize).saturating_mul(taps) <= MAX_BANK_LEN {
            let mut coefs = Vec::with_capacity(phases as usize * taps);
            (0..phases).for_each(|p| coefs.extend(bank.tap_set(p)));
            bank.coefs = coefs;
        }
        bank
    }

    /// First input index under the kernel for output `i`, and its phase.
    fn locate(&self, i: usize) -> (isize, u64) {
        let pos = i as u128 * self.step as u128;
        let base = (pos / self.phases as u128) as isize;
        (
            base - self.half as isize,
            (pos % self.phases as u128) as u64,
        )
    }

    /// Weights for input samples `base - half ..= base + half` at time `base + phase / phases`.
    fn tap_set(&self, phase: u64) -> impl Iterator<Item = f32> + '_ {
        let frac = phase as f64 / self.phases as f64;
        (0..self.taps).map(move |k| self.kernel.weight(frac + self.half as f64 - k as f64) as f32)
    }

    fn coefs<'a>(&'a self, phase: u64, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        if self.coefs.is_empty() {
            scratch.clear();
            scratch.extend(self.tap_set(phase));
            return scratch;
        }
        let at = phase as usize * self.taps;
        &self.coefs[at..at + self.taps]
    }
}

/// `sum(x[start + k] * coefs[k])`, samples outside `x` counting as silence.
fn dot_at(x: &[f32], start: isize, coefs: &[f32]) -> f32 {
    if start >= 0 && start as usize + coefs.len() <= x.len() {
        let start = start as usize;
        return crate::vecmath::dot(&x[start..start + coefs.len()], coefs);
    }
    coefs
        .iter()
        .enumerate()
        .filter_map(|(k, c)| {
            usize::try_from(start + k as isize)
                .ok()
                .and_then(|j| x.get(j))
                .map(|s| s * c)
        })
        .sum()
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `sinc(u) * kaiser(u / ZERO_CROSSINGS)` for u in [0, ZERO_CROSSINGS], in `1 / TABLE_STEPS`
/// steps. Independent of the rates (they only stretch it), so it is built once per process.
fn kernel_table() -> &'static [f64] {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let len = ZERO_CROSSINGS * TABLE_STEPS;
        let mut table: Vec<f64> = (0..=len)
            .map(|k| {
                let u = k as f64 / TABLE_STEPS as f64;
                sinc(u) * kaiser(u / ZERO_CROSSINGS as f64)
            })
            .collect();
        table.push(0.0); // lets interpolation at the very edge read `idx + 1`
        table
    })
}

/// `bandwidth * sinc(bandwidth * t) * window`, `t` in input samples.
struct Kernel {
    table: &'static [f64],
    bandwidth: f64,
}

impl Kernel {
    fn half_width(&self) -> f64 {
        ZERO_CROSSINGS as f64 / self.bandwidth
    }

    /// Weight of an input sample at distance `t` (input samples) from the output instant.
    fn weight(&self, t: f64) -> f64 {
        let pos = (t.abs() * self.bandwidth) * TABLE_STEPS as f64;
        let idx = pos as usize;
        if idx + 1 >= self.table.len() {
            return 0.0;
        }
        let frac = pos - idx as f64;
        self.bandwidth * (self.table[idx] + frac * (self.table[idx + 1] - self.table[idx]))
    }
}

fn sinc(u: f64) -> f64 {
    if u == 0.0 {
        1.0
    } else {
        (PI * u).sin() / (PI * u)
    }
}

/// Kaiser window over `v` in [-1, 1].
fn kaiser(v: f64) -> f64 {
    if v.abs() >= 1.0 {
        return 0.0;
    }
    bessel_i0(KAISER_BETA * (1.0 - v * v).sqrt()) / bessel_i0(KAISER_BETA)
}

/// Modified Bessel function of the first kind, order 0 (power series; fine for x < 20).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term, mut k) = (1.0, 1.0, 1.0);
    while term > sum * 1e-17 {
        term *= (x / (2.0 * k)).powi(2);
        sum += term;
        k += 1.0;
    }
    sum
}

/// Raw little-endian signed 16-bit PCM (the `pcm_s16le` codec): clamped to [-1, 1],
/// non-finite samples as silence.
pub fn encode_pcm_s16le(samples: &[f32]) -> Vec<u8> {
    samples
        .iter()
        .map(|&s| {
            if s.is_finite() {
                s.clamp(-1.0, 1.0)
            } else {
                0.0
            }
        })
        .flat_map(|s| ((s * 32767.0).round() as i16).to_le_bytes())
        .collect()
}

/// Helper for producers/tests: encode mono f32 samples as a 16-bit PCM WAV file in memory.
pub fn encode_wav_s16(samples: &[f32], rate: u32) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate.wrapping_mul(2)).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&encode_pcm_s16le(samples));
    out
}
