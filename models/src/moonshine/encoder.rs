//! Moonshine's audio encoder: the raw 16 kHz waveform through three convolutions (no mel
//! spectrogram, no padding to a fixed window: the cost follows the audio's real length),
//! then pre-norm transformer layers with partial rotary position embeddings.
//!
//! Convolutions run as one matmul each over time-major im2col columns, as Whisper's do.

use candle_core::{Device, Result, Tensor};
use candle_nn::{Linear, Module};

use super::ops::{self, Config, Norm, Rope, Weights, NORM_EPS};

/// Kernel and stride of the three convolutions (Hugging Face's MoonshineEncoder).
const CONV1: (usize, usize) = (127, 64);
const CONV2: (usize, usize) = (7, 3);
const CONV3: (usize, usize) = (3, 2);

/// Fewest samples that leave the encoder at least one frame: 127 + 64 * (6 + 2 * 3).
pub const MIN_SAMPLES: usize = CONV1.0 + CONV1.1 * ((CONV2.0 - 1) + CONV2.1 * (CONV3.0 - 1));

/// Encoder frames for `samples` of audio (0 below [`MIN_SAMPLES`]).
pub fn frames_for(samples: usize) -> usize {
    let out = |n: usize, (k, s): (usize, usize)| if n < k { 0 } else { (n - k) / s + 1 };
    out(out(out(samples, CONV1), CONV2), CONV3)
}

/// Time-major x (t, c) -> im2col columns (t_out, k * c) of a stride-`s`, unpadded
/// convolution: column block j holds tap j, so weights (out, in, k) map to (out, k * in).
fn taps(x: &Tensor, (k, s): (usize, usize)) -> Result<Tensor> {
    let (t, c) = x.dims2()?;
    let t_out = (t - k) / s + 1;
    // Every tap takes t_out * s rows and keeps one in s; the last ones may run past the end
    // by up to s - 1 rows that are never kept.
    let need = k - 1 + t_out * s;
    let x = x.pad_with_zeros(0, 0, need.saturating_sub(t))?;
    let columns = (0..k)
        .map(|j| {
            x.narrow(0, j, t_out * s)?
                .reshape((t_out, s, c))?
                .narrow(1, 0, 1)?
                .squeeze(1)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&columns, 1)
}

/// (out, in, k) convolution weight -> (out, k * in), the column order of [`taps`].
fn conv_as_linear(w: &Weights, name: &str, shape: [usize; 3], bias: bool) -> Result<Linear> {
    let [o, i, k] = shape;
    let weight = w.get(&format!("{name}.weight"), &shape)?;
    let weight = weight
        .permute((0, 2, 1))?
        .reshape((o, k * i))?
        .contiguous()?;
    let bias = match bias {
        true => Some(w.get(&format!("{name}.bias"), &[o])?),
        false => None,
    };
    Ok(Linear::new(weight, bias))
}

#[derive(Clone)]
struct Frontend {
    conv1: Linear,
    /// GroupNorm with one group: normalized over every (time, channel) value, then a
    /// per-channel affine map, (1, channels) each.
    gn_weight: Tensor,
    gn_bias: Tensor,
    conv2: Linear,
    conv3: Linear,
}

impl Frontend {
    fn load(w: &Weights, d: usize) -> Result<Self> {
        let p = "model.encoder";
        Ok(Self {
            conv1: conv_as_linear(w, &format!("{p}.conv1"), [d, 1, CONV1.0], false)?,
            gn_weight: w
                .get(&format!("{p}.groupnorm.weight"), &[d])?
                .unsqueeze(0)?,
            gn_bias: w.get(&format!("{p}.groupnorm.bias"), &[d])?.unsqueeze(0)?,
            conv2: conv_as_linear(w, &format!("{p}.conv2"), [2 * d, d, CONV2.0], true)?,
            conv3: conv_as_linear(w, &format!("{p}.conv3"), [d, 2 * d, CONV3.0], true)?,
        })
    }

    /// pcm (n,) -> (frames, d).
    fn forward(&self, pcm: &Tensor) -> Result<Tensor> {
        let x = taps(&pcm.unsqueeze(1)?, CONV1)?;
        let x = self.conv1.forward(&x)?.tanh()?;
        let x = self.group_norm(&x)?;
        let x = ops::gelu(self.conv2.forward(&taps(&x, CONV2)?)?)?;
        ops::gelu(self.conv3.forward(&taps(&x, CONV3)?)?)
    }

    fn group_norm(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_all()?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_all()?;
        let x = centered.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?;
        x.broadcast_mul(&self.gn_weight)?
            .broadcast_add(&self.gn_bias)
    }
}

#[derive(Clone)]
struct Layer {
    attn_norm: Norm,
    /// q|k|v stacked (3d, d), q pre-scaled by 1/sqrt(head_dim); no biases.
    qkv: Tensor,
    o: Tensor,
    mlp_norm: Norm,
    fc1: Linear,
    fc2: Linear,
}

impl Layer {
    fn load(w: &Weights, p: &str, cfg: &Config) -> Result<Self> {
        let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let scale = (cfg.head_dim() as f64).powf(-0.5);
        let sa = format!("{p}.self_attn");
        Ok(Self {
            attn_norm: w.norm(&format!("{p}.input_layernorm"), d)?,
            qkv: w.stacked(
                &sa,
                &[("q_proj", scale), ("k_proj", 1.0), ("v_proj", 1.0)],
                d,
            )?,
            o: w.get(&format!("{sa}.o_proj.weight"), &[d, d])?,
            mlp_norm: w.norm(&format!("{p}.post_attention_layernorm"), d)?,
            fc1: w.linear(&format!("{p}.mlp.fc1"), d, ff, true)?,
            fc2: w.linear(&format!("{p}.mlp.fc2"), ff, d, true)?,
        })
    }

    fn forward(&self, x: &Tensor, rope: &Rope, n_head: usize) -> Result<Tensor> {
        let qkv = ops::matmul_t(&self.attn_norm.forward(x)?, &self.qkv)?;
        let d = x.dim(1)?;
        let part = |i| ops::split_heads(&qkv.narrow(1, i * d, d)?, n_head);
        let q = rope.apply(&part(0)?, 0)?;
        let k = rope.apply(&part(1)?, 0)?;
        let a = ops::attention(&q, &k, &part(2)?, None)?;
        let x = (x + ops::matmul_t(&a, &self.o)?)?;
        let h = ops::gelu(self.fc1.forward(&self.mlp_norm.forward(&x)?)?)?;
        x + self.fc2.forward(&h)?
    }
}

#[derive(Clone)]
pub struct Encoder {
    frontend: Frontend,
    layers: Vec<Layer>,
    norm: Norm,
    rope: Rope,
    n_head: usize,
    device: Device,
}

impl Encoder {
    pub fn load(w: &Weights, cfg: &Config, device: &Device) -> Result<Self> {
        let layers = (0..cfg.encoder_num_hidden_layers)
            .map(|i| Layer::load(w, &format!("model.encoder.layers.{i}"), cfg))
            .collect::<Result<_>>()?;
        Ok(Self {
            frontend: Frontend::load(w, cfg.hidden_size)?,
            layers,
            norm: w.norm("model.encoder.layer_norm", cfg.hidden_size)?,
            rope: Rope::new(cfg, device)?,
            n_head: cfg.encoder_num_attention_heads,
            device: device.clone(),
        })
    }

    /// The convolutional front end alone: pcm -> (frames, d), for checking against a reference.
    pub fn frontend(&self, pcm: &[f32]) -> Result<Tensor> {
        self.check_len(pcm.len())?;
        self.frontend
            .forward(&Tensor::from_slice(pcm, pcm.len(), &self.device)?)
    }

    /// 16 kHz mono pcm (at least [`MIN_SAMPLES`]) -> audio features (frames, d).
    pub fn forward(&self, pcm: &[f32]) -> Result<Tensor> {
        let mut x = self.frontend(pcm)?;
        for layer in &self.layers {
            x = layer.forward(&x, &self.rope, self.n_head)?;
        }
        self.norm.forward(&x)
    }

    fn check_len(&self, n: usize) -> Result<()> {
        if n < MIN_SAMPLES {
            candle_core::bail!("{n} samples: the encoder needs at least {MIN_SAMPLES}");
        }
        let frames = frames_for(n);
        if frames > super::ops::ROPE_POSITIONS {
            candle_core::bail!("{n} samples: {frames} encoder frames exceed the rotary table");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_counts_follow_the_convolutions() {
        assert_eq!(MIN_SAMPLES, 895);
        assert_eq!(frames_for(MIN_SAMPLES - 1), 0);
        assert_eq!(frames_for(MIN_SAMPLES), 1);
        // 0880.wav of the LibriVox clips: 3.0 s, 123 frames (what ONNX Runtime gives).
        let t1 = (48_000 - 127) / 64 + 1;
        assert_eq!(frames_for(48_000), ((t1 - 7) / 3 + 1 - 3) / 2 + 1);
    }

    #[test]
    fn taps_equal_a_direct_convolution() {
        let dev = Device::Cpu;
        let (t, c, k, s) = (23, 3, 4, 3);
        let xs: Vec<f32> = (0..t * c).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Tensor::from_vec(xs.clone(), (t, c), &dev).unwrap();
        let cols = taps(&x, (k, s)).unwrap();
        let t_out = (t - k) / s + 1;
        assert_eq!(cols.dims(), &[t_out, k * c]);
        let cols: Vec<Vec<f32>> = cols.to_vec2().unwrap();
        for (o, row) in cols.iter().enumerate() {
            for j in 0..k {
                for ch in 0..c {
                    assert_eq!(row[j * c + ch], xs[(o * s + j) * c + ch]);
                }
            }
        }
    }
}
