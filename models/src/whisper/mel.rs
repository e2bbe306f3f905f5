//! Log-mel spectrogram exactly as openai-whisper computes it: STFT only over frames
//! that touch audio; frames past the end (padding up to the window) are the silence floor.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
/// Frames in a 30 s window, the longest input the encoder has positions for.
pub const MAX_FRAMES: usize = 3000;
const N_BINS: usize = N_FFT / 2 + 1;

/// One triangular mel filter: its weights over the FFT bins `start..start + weights.len()`.
/// Storing only the non-zero band makes the filter bank ~40x cheaper than a dense product.
struct Band {
    start: usize,
    weights: Vec<f32>,
}

/// Mel filter bank plus the FFT plan, shared by all threads.
#[derive(Clone)]
pub struct MelFrontend {
    filters: Arc<Vec<Band>>,
    n_mels: usize,
    window: Arc<Vec<f32>>,
    fft: Arc<dyn Fft<f32>>,
}

impl MelFrontend {
    /// Reads `mel_<n_mels>` from openai-whisper's `mel_filters.npz`.
    pub fn load(npz: &Path, n_mels: usize) -> anyhow::Result<Self> {
        let key = format!("mel_{n_mels}");
        let t = Tensor::read_npz_by_name(npz, &[key.as_str()])
            .map_err(|e| anyhow::anyhow!("reading {key} from {}: {e}", npz.display()))?;
        let t = t[0].to_dtype(candle_core::DType::F32)?;
        anyhow::ensure!(
            t.dims() == [n_mels, N_BINS],
            "{key} in {} has shape {:?}, expected ({n_mels}, {N_BINS})",
            npz.display(),
            t.dims()
        );
        Ok(Self::new(t.flatten_all()?.to_vec1()?, n_mels))
    }

    pub fn new(filters: Vec<f32>, n_mels: usize) -> Self {
        assert_eq!(filters.len(), n_mels * N_BINS);
        let filters = filters.chunks_exact(N_BINS).map(band).collect();
        // Periodic Hann, as torch.hann_window(400).
        let window = (0..N_FFT)
            .map(|i| 0.5 * (1.0 - (2.0 * std::f32::consts::PI * i as f32 / N_FFT as f32).cos()))
            .collect();
        Self {
            filters: Arc::new(filters),
            n_mels,
            window: Arc::new(window),
            fft: FftPlanner::new().plan_fft_forward(N_FFT),
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Frames computed for `n_samples` of audio: openai's count (n / hop) plus `pad_frames`
    /// of trailing silence, at least `min_frames`, made even for the stride-2 conv, capped at 30 s.
    pub fn n_frames(n_samples: usize, pad_frames: usize, min_frames: usize) -> usize {
        let n = (n_samples / HOP + pad_frames).max(min_frames);
        (n + n % 2).clamp(2, MAX_FRAMES)
    }

    /// Log-mel features of shape (1, n_mels, n_frames); see [`Self::n_frames`].
    pub fn log_mel(
        &self,
        pcm: &[f32],
        pad_frames: usize,
        min_frames: usize,
    ) -> candle_core::Result<Tensor> {
        let n_frames = Self::n_frames(pcm.len(), pad_frames, min_frames);
        let mut mel = vec![0f32; self.n_mels * n_frames];
        let mut buf = vec![Complex32::default(); N_FFT];
        let mut scratch = vec![Complex32::default(); self.fft.get_inplace_scratch_len()];
        let mut power = [0f32; N_BINS];
        // Frames wholly past the end see only zeros: their log-mel is the floor, no FFT needed.
        let audible = (pcm.len() + N_FFT / 2).div_ceil(HOP).min(n_frames);
        let silent = LOG_FLOOR.log10();
        for t in 0..n_frames {
            if t >= audible {
                (0..self.n_mels).for_each(|m| mel[m * n_frames + t] = silent);
                continue;
            }
            self.frame_power(pcm, t, &mut buf, &mut scratch, &mut power);
            for (m, b) in self.filters.iter().enumerate() {
                let p = &power[b.start..b.start + b.weights.len()];
                let e: f32 = b.weights.iter().zip(p).map(|(f, p)| f * p).sum();
                mel[m * n_frames + t] = e.max(LOG_FLOOR).log10();
            }
        }
        normalize(&mut mel);
        Tensor::from_vec(mel, (1, self.n_mels, n_frames), &Device::Cpu)
    }

    /// Power spectrum of frame `t`, centred on sample t*hop.
    fn frame_power(
        &self,
        pcm: &[f32],
        t: usize,
        buf: &mut [Complex32],
        scratch: &mut [Complex32],
        power: &mut [f32; N_BINS],
    ) {
        let start = (t * HOP) as isize - (N_FFT / 2) as isize;
        for (j, (c, w)) in buf.iter_mut().zip(self.window.iter()).enumerate() {
            *c = Complex32::new(w * sample_at(pcm, start + j as isize), 0.0);
        }
        self.fft.process_with_scratch(buf, scratch);
        for (p, c) in power.iter_mut().zip(buf.iter()) {
            *p = c.norm_sqr();
        }
    }
}

/// openai clamps mel energies to this before the log.
const LOG_FLOOR: f32 = 1e-10;

fn band(row: &[f32]) -> Band {
    let start = row.iter().position(|&w| w != 0.0).unwrap_or(0);
    let end = row.iter().rposition(|&w| w != 0.0).map_or(start, |e| e + 1);
    Band {
        start,
        weights: row[start..end].to_vec(),
    }
}

/// torch.stft(center=True) reflect-pads the left edge; on the right openai has already
/// appended 30 s of zeros, so past the end we read silence.
fn sample_at(pcm: &[f32], i: isize) -> f32 {
    let idx = if i < 0 { (-i) as usize } else { i as usize };
    pcm.get(idx).copied().unwrap_or(0.0)
}

/// Whisper's dynamic range compression: clamp to (max - 8), then (x + 4) / 4.
fn normalize(mel: &mut [f32]) {
    let floor = mel.iter().copied().fold(f32::NEG_INFINITY, f32::max) - 8.0;
    for v in mel.iter_mut() {
        *v = (v.max(floor) + 4.0) / 4.0;
    }
}
