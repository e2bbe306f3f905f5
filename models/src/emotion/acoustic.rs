//! Prosody of one utterance from 16 kHz mono f32 PCM: pitch (YIN), energy, speaking rate,
//! pauses and pitch variability.
//!
//! Pipeline: 10 ms frames → RMS level (dBFS) + YIN F0 per frame → a silence gate relative
//! to the loudest frame → speech span (first to last loud frame) → pauses (quiet runs
//! inside it), syllable nuclei (energy peaks in voiced frames), pitch statistics.
//!
//! Everything is absolute (no per-child baseline): a caller that knows the child can
//! compare against earlier utterances; the emotion fusion only uses coarse cues.

use serde::{Deserialize, Serialize};

/// Input sample rate: [`crate::audio`] resamples everything to this.
pub const SAMPLE_RATE: usize = 16_000;
/// 10 ms hop: fine enough for syllables (~150–300 ms) and pauses.
const HOP: usize = SAMPLE_RATE / 100;
/// YIN integration window, 25 ms: at least 1.75 periods of the lowest F0 searched.
const WINDOW: usize = 400;
/// Pitch search range. Adults go down to ~70 Hz; children's F0 reaches 250–400 Hz and
/// excited or crying children go higher, so search up to 600 Hz.
const F0_MIN: f32 = 70.0;
const F0_MAX: f32 = 600.0;
/// Fewest lags YIN is run with at the end of the audio: two periods of F0_MAX.
const MIN_TAIL_LAGS: usize = 2 * SAMPLE_RATE / F0_MAX as usize;
/// YIN's absolute threshold on the cumulative mean normalised difference: the first dip
/// below it is taken as the period (the paper's 0.1–0.15 range; 0.15 keeps breathy
/// children's voices voiced).
const YIN_THRESHOLD: f32 = 0.15;
/// A frame whose best dip is above this is aperiodic (unvoiced or noise).
const VOICED_MAX_APERIODICITY: f32 = 0.3;
/// Frames more than this far below the loudest frame count as silence...
const GATE_BELOW_PEAK_DB: f32 = 30.0;
/// ...and so does anything below this absolute level, whatever the peak.
const GATE_FLOOR_DB: f32 = -55.0;
/// A quiet run inside speech this long or longer is a pause; shorter ones are stop
/// closures and word gaps.
const MIN_PAUSE_FRAMES: usize = 20;
/// Syllable nuclei: peaks at least this far above the dip since the previous peak
/// (de Jong & Wempe, 2009, use 2 dB on intensity) and at least 100 ms apart.
const SYLLABLE_DIP_DB: f32 = 2.0;
const MIN_SYLLABLE_GAP: usize = 10;
/// Level reported for digital silence, so every field stays finite (JSON has no -inf).
const SILENCE_DB: f32 = -100.0;

/// Prosodic features of one utterance. All fields are finite; silence gives zeros and
/// [`SILENCE_DB`] levels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AcousticFeatures {
    /// Length of the audio.
    pub duration_ms: u32,
    /// Speaking time: from the first to the last loud frame, pauses excluded.
    pub speech_ms: u32,
    /// Voiced frames / speaking frames.
    pub voiced_fraction: f32,
    /// Median F0 of voiced frames (0 when nothing was voiced).
    pub pitch_hz: f32,
    /// Mean F0 of voiced frames.
    pub pitch_mean_hz: f32,
    /// Standard deviation of voiced F0 in semitones around the median: monotone ≈ 1,
    /// lively ≈ 3–5.
    pub pitch_variability_st: f32,
    /// 10th to 90th percentile F0 range in semitones.
    pub pitch_range_st: f32,
    /// Mean frame RMS over the sounding frames of the speaking time, dB re full scale.
    pub energy_db: f32,
    /// Loudest frame, dBFS.
    pub energy_max_db: f32,
    /// Standard deviation of those frames' levels, dB.
    pub energy_variability_db: f32,
    /// Syllable-like energy peaks counted in voiced frames.
    pub syllables: u32,
    /// Syllables per second of speaking time.
    pub speaking_rate: f32,
    /// Quiet runs of at least 200 ms inside the speech span.
    pub pauses: u32,
    /// Their total length.
    pub pause_ms: u32,
}

/// One 10 ms frame's measurements.
#[derive(Debug, Clone, Copy)]
struct Frame {
    db: f32,
    /// F0 in Hz when voiced.
    f0: Option<f32>,
}

/// Analyse 16 kHz mono PCM in [-1, 1].
pub fn analyze(pcm: &[f32]) -> AcousticFeatures {
    let frames = frames(pcm);
    let duration_ms = (pcm.len() * 1000 / SAMPLE_RATE) as u32;
    let peak = frames.iter().map(|f| f.db).fold(SILENCE_DB, f32::max);
    let gate = (peak - GATE_BELOW_PEAK_DB).max(GATE_FLOOR_DB);
    let loud: Vec<bool> = frames.iter().map(|f| f.db >= gate).collect();
    let Some((first, last)) = speech_span(&loud) else {
        return AcousticFeatures {
            duration_ms,
            energy_db: SILENCE_DB,
            energy_max_db: peak,
            ..Default::default()
        };
    };
    let pauses = pauses(&loud[first..=last]);
    let in_pause = pause_mask(last - first + 1, &pauses);
    let speaking: Vec<&Frame> = frames[first..=last]
        .iter()
        .zip(&in_pause)
        .filter(|(_, &p)| !p)
        .map(|(f, _)| f)
        .collect();
    let speech_ms = speaking.len() as u32 * 10;
    let syllables = syllables(&frames[first..=last], &loud[first..=last]);
    let f0s: Vec<f32> = speaking.iter().filter_map(|f| f.f0).collect();
    // Level of the sounding frames only: gaps between words would otherwise make a
    // fast talker sound loud and a hesitant one quiet.
    let levels: Vec<f32> = speaking
        .iter()
        .map(|f| f.db)
        .filter(|&db| db >= gate)
        .collect();
    let pitch = PitchStats::of(&f0s);
    AcousticFeatures {
        duration_ms,
        speech_ms,
        voiced_fraction: f0s.len() as f32 / speaking.len().max(1) as f32,
        pitch_hz: pitch.median,
        pitch_mean_hz: pitch.mean,
        pitch_variability_st: pitch.std_st,
        pitch_range_st: pitch.range_st,
        energy_db: mean(&levels),
        energy_max_db: peak,
        energy_variability_db: std_dev(&levels),
        syllables,
        speaking_rate: syllables as f32 / (speech_ms.max(1) as f32 / 1000.0),
        pauses: pauses.len() as u32,
        pause_ms: pauses.iter().map(|(a, b)| (b - a) as u32 * 10).sum(),
    }
}

/// Level and pitch of each 10 ms hop. The last partial hop is dropped.
fn frames(pcm: &[f32]) -> Vec<Frame> {
    let tau_max = (SAMPLE_RATE as f32 / F0_MIN).ceil() as usize;
    (0..pcm.len() / HOP)
        .map(|i| {
            let start = i * HOP;
            let level = &pcm[start..(start + HOP).min(pcm.len())];
            let db = rms_db(level);
            // YIN wants WINDOW + tau_max samples; near the end it makes do with fewer lags
            // (only the lowest pitches become undetectable there).
            let end = (start + WINDOW + tau_max).min(pcm.len());
            let enough = end >= start + WINDOW + MIN_TAIL_LAGS;
            let f0 = (enough && db > GATE_FLOOR_DB)
                .then(|| yin(&pcm[start..end]))
                .flatten();
            Frame { db, f0 }
        })
        .collect()
}

fn rms_db(x: &[f32]) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32;
    if ms <= 1e-10 {
        SILENCE_DB
    } else {
        (10.0 * ms.log10()).max(SILENCE_DB)
    }
}

/// YIN (de Cheveigné & Kawahara, 2002): difference function → cumulative mean
/// normalisation → first dip below the threshold → parabolic interpolation.
/// `x` holds WINDOW + tau_max samples. Returns F0 in Hz, or None when aperiodic.
fn yin(x: &[f32]) -> Option<f32> {
    let tau_min = (SAMPLE_RATE as f32 / F0_MAX).floor() as usize;
    let tau_max = x.len() - WINDOW;
    let d = difference(x, tau_max);
    let cmnd = cumulative_mean_normalised(&d);
    let tau = pick_dip(&cmnd, tau_min)?;
    let refined = parabolic(&cmnd, tau);
    let f0 = SAMPLE_RATE as f32 / refined;
    (F0_MIN * 0.95..=F0_MAX * 1.05).contains(&f0).then_some(f0)
}

/// d(τ) = Σ_j (x_j − x_{j+τ})², τ = 0..=tau_max.
fn difference(x: &[f32], tau_max: usize) -> Vec<f32> {
    let w = &x[..WINDOW];
    (0..=tau_max)
        .map(|tau| {
            let shifted = &x[tau..tau + WINDOW];
            w.iter().zip(shifted).map(|(a, b)| (a - b) * (a - b)).sum()
        })
        .collect()
}

/// d'(τ) = d(τ) / ((1/τ) Σ_{j≤τ} d(j)), d'(0) = 1: removes the dip at τ = 0 and makes
/// the threshold independent of level.
fn cumulative_mean_normalised(d: &[f32]) -> Vec<f32> {
    let mut out = vec![1.0; d.len()];
    let mut running = 0.0;
    for tau in 1..d.len() {
        running += d[tau];
        out[tau] = if running > 0.0 {
            d[tau] * tau as f32 / running
        } else {
            1.0
        };
    }
    out
}

/// First τ ≥ tau_min where d' dips below the threshold, walked down to its local
/// minimum; else the global minimum if it is periodic enough.
fn pick_dip(cmnd: &[f32], tau_min: usize) -> Option<usize> {
    let mut tau = tau_min.max(1);
    while tau < cmnd.len() - 1 {
        if cmnd[tau] < YIN_THRESHOLD {
            while tau + 1 < cmnd.len() && cmnd[tau + 1] < cmnd[tau] {
                tau += 1;
            }
            return Some(tau);
        }
        tau += 1;
    }
    let (best, &v) = cmnd
        .iter()
        .enumerate()
        .skip(tau_min.max(1))
        .min_by(|a, b| a.1.total_cmp(b.1))?;
    (v < VOICED_MAX_APERIODICITY).then_some(best)
}

/// Sub-sample position of the minimum through the three points around `tau`.
fn parabolic(y: &[f32], tau: usize) -> f32 {
    if tau == 0 || tau + 1 >= y.len() {
        return tau as f32;
    }
    let (a, b, c) = (y[tau - 1], y[tau], y[tau + 1]);
    let den = a - 2.0 * b + c;
    if den.abs() < 1e-12 {
        tau as f32
    } else {
        tau as f32 + 0.5 * (a - c) / den
    }
}

/// First and last loud frame.
fn speech_span(loud: &[bool]) -> Option<(usize, usize)> {
    let first = loud.iter().position(|&l| l)?;
    let last = loud.iter().rposition(|&l| l)?;
    Some((first, last))
}

/// Quiet runs of at least MIN_PAUSE_FRAMES inside a span that starts and ends loud,
/// as half-open frame ranges.
fn pauses(loud: &[bool]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &l) in loud.iter().enumerate() {
        match (l, start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                if i - s >= MIN_PAUSE_FRAMES {
                    out.push((s, i));
                }
                start = None;
            }
            _ => {}
        }
    }
    out
}

fn pause_mask(len: usize, pauses: &[(usize, usize)]) -> Vec<bool> {
    let mut mask = vec![false; len];
    for &(a, b) in pauses {
        mask[a..b].iter_mut().for_each(|m| *m = true);
    }
    mask
}

/// Syllable nuclei: peaks of the smoothed level contour in loud, voiced frames that rise
/// at least SYLLABLE_DIP_DB above the lowest point since the previous nucleus.
fn syllables(frames: &[Frame], loud: &[bool]) -> u32 {
    let levels: Vec<f32> = frames.iter().map(|f| f.db).collect();
    let smooth = moving_average(&levels, 2);
    let mut count = 0;
    let mut dip = f32::INFINITY;
    let mut last_peak: Option<usize> = None;
    for i in 1..smooth.len().saturating_sub(1) {
        dip = dip.min(smooth[i]);
        let is_peak = smooth[i] >= smooth[i - 1] && smooth[i] > smooth[i + 1];
        let eligible = loud[i] && frames[i].f0.is_some();
        let spaced = last_peak.is_none_or(|p| i - p >= MIN_SYLLABLE_GAP);
        if is_peak && eligible && spaced && smooth[i] - dip >= SYLLABLE_DIP_DB {
            count += 1;
            last_peak = Some(i);
            dip = smooth[i];
        }
    }
    count
}

/// Centred moving average over 2·radius + 1 frames (shorter at the edges).
fn moving_average(x: &[f32], radius: usize) -> Vec<f32> {
    (0..x.len())
        .map(|i| {
            let lo = i.saturating_sub(radius);
            let hi = (i + radius + 1).min(x.len());
            mean(&x[lo..hi])
        })
        .collect()
}

/// Pitch summary of voiced frames.
struct PitchStats {
    median: f32,
    mean: f32,
    std_st: f32,
    range_st: f32,
}

impl PitchStats {
    fn of(f0s: &[f32]) -> Self {
        if f0s.is_empty() {
            return Self {
                median: 0.0,
                mean: 0.0,
                std_st: 0.0,
                range_st: 0.0,
            };
        }
        let mut sorted = f0s.to_vec();
        sorted.sort_by(f32::total_cmp);
        let median = percentile(&sorted, 0.5);
        // Semitones around the median, so variability does not grow with the voice's pitch.
        let st: Vec<f32> = f0s.iter().map(|f| 12.0 * (f / median).log2()).collect();
        let range = 12.0 * (percentile(&sorted, 0.9) / percentile(&sorted, 0.1)).log2();
        Self {
            median,
            mean: mean(f0s),
            std_st: std_dev(&st),
            range_st: range,
        }
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f32], q: f32) -> f32 {
    let i = ((sorted.len() - 1) as f32 * q).round() as usize;
    sorted[i]
}

fn mean(x: &[f32]) -> f32 {
    if x.is_empty() {
        0.0
    } else {
        x.iter().sum::<f32>() / x.len() as f32
    }
}

fn std_dev(x: &[f32]) -> f32 {
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(f0: f32, secs: f32) -> Vec<f32> {
        let n = (secs * SAMPLE_RATE as f32) as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / SAMPLE_RATE as f32;
                // A few harmonics, like a voice, so YIN is not tested on a pure sine only.
                (1..=4)
                    .map(|h| (std::f32::consts::TAU * f0 * h as f32 * t).sin() * 0.3 / h as f32)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn silence_is_all_zeros_and_finite() {
        let f = analyze(&vec![0.0; 16_000]);
        assert_eq!(f.pitch_hz, 0.0);
        assert_eq!(f.energy_db, SILENCE_DB);
        assert_eq!(f.duration_ms, 1000);
        assert!(serde_json::to_string(&f).is_ok());
        assert_eq!(analyze(&[]).duration_ms, 0);
    }

    #[test]
    fn tone_pitch_within_one_percent() {
        for f0 in [90.0, 200.0, 320.0, 450.0] {
            let f = analyze(&tone(f0, 0.5));
            assert!((f.pitch_hz - f0).abs() / f0 < 0.01, "{f0}: {f:?}");
            assert!(f.pitch_variability_st < 0.1, "{f:?}");
            assert!(f.voiced_fraction > 0.9, "{f:?}");
        }
    }
}
