//! Building blocks shared by the encoder and both decoders: the weight map, bias-free
//! LayerNorm, partial interleaved rotary embeddings and attention, on any candle device.
//! On the CPU the element-wise hot spots use Whisper's vectorized kernels.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::Linear;

use crate::whisper::kernels::{gelu_erf_, softmax_last_dim_};

/// Hyper-parameters, read from the converter's `config.json` (Hugging Face key names).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub encoder_num_hidden_layers: usize,
    pub decoder_num_hidden_layers: usize,
    pub encoder_num_attention_heads: usize,
    pub decoder_num_attention_heads: usize,
    pub partial_rotary_factor: f64,
    pub rope_theta: f64,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
}

impl Config {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.encoder_num_attention_heads
    }

    /// Dimensions of each head that rotate: Hugging Face's `int(head_dim * factor)`, made even.
    pub fn rotary_dim(&self) -> usize {
        ((self.head_dim() as f64 * self.partial_rotary_factor) as usize) / 2 * 2
    }
}

pub const NORM_EPS: f64 = 1e-5;

/// Tensor lookup with a shape check, so a wrong map fails loudly at load time.
pub struct Weights<'a> {
    map: &'a HashMap<String, Tensor>,
}

impl<'a> Weights<'a> {
    pub fn new(map: &'a HashMap<String, Tensor>) -> Self {
        Self { map }
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .map
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
        if t.dims() != shape {
            candle_core::bail!("tensor {name}: shape {:?}, expected {shape:?}", t.dims());
        }
        Ok(t.clone())
    }

    /// `{p}.weight` (out, in) and, if `bias`, `{p}.bias`.
    pub fn linear(&self, p: &str, n_in: usize, n_out: usize, bias: bool) -> Result<Linear> {
        let w = self.get(&format!("{p}.weight"), &[n_out, n_in])?;
        let b = match bias {
            true => Some(self.get(&format!("{p}.bias"), &[n_out])?),
            false => None,
        };
        Ok(Linear::new(w, b))
    }

    /// Several bias-free projections stacked into one (e.g. q|k|v), each scaled by its factor:
    /// one matmul instead of three, and the attention scale folded into q's weights.
    pub fn stacked(&self, p: &str, parts: &[(&str, f64)], d: usize) -> Result<Tensor> {
        let ws = parts
            .iter()
            .map(|(part, scale)| self.get(&format!("{p}.{part}.weight"), &[d, d])? * *scale)
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&ws, 0)
    }

    pub fn norm(&self, name: &str, d: usize) -> Result<Norm> {
        let weight = self.get(&format!("{name}.weight"), &[d])?;
        let bias = weight.zeros_like()?;
        Ok(Norm { weight, bias })
    }
}

/// LayerNorm without a bias (Moonshine's, unlike RMSNorm it removes the mean). A zero bias
/// lets candle's fused layer-norm kernel do it.
#[derive(Clone)]
pub struct Norm {
    pub weight: Tensor,
    bias: Tensor,
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, NORM_EPS as f32)
    }
}

/// x Wᵀ for a (out, in) weight and rows x (n, in).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)
}

/// Exact (erf) GELU; Whisper's vectorized kernel on the CPU, candle's elsewhere.
pub fn gelu(x: Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        gelu_erf_(x)
    } else {
        x.gelu_erf()
    }
}

pub fn softmax(x: Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        softmax_last_dim_(x)
    } else {
        candle_nn::ops::softmax_last_dim(&x)
    }
}

/// cos/sin of every position's rotary angles, (positions, rotary_dim / 2), computed once.
#[derive(Clone)]
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
    pub dim: usize,
    pub inv_freq: Vec<f32>,
}

/// Positions covered by the table: 64 s of encoder frames (41.6 per second), or decoder tokens.
pub const ROPE_POSITIONS: usize = 4096;

impl Rope {
    pub fn new(cfg: &Config, device: &Device) -> Result<Self> {
        let dim = cfg.rotary_dim();
        let inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / dim as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(ROPE_POSITIONS * dim / 2);
        let mut sin = Vec::with_capacity(ROPE_POSITIONS * dim / 2);
        for p in 0..ROPE_POSITIONS {
            for f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let shape = (ROPE_POSITIONS, dim / 2);
        Ok(Self {
            cos: Tensor::from_vec(cos, shape, device)?,
            sin: Tensor::from_vec(sin, shape, device)?,
            dim,
            inv_freq,
        })
    }

    /// Rotates the first `dim` features of every head of x (1, heads, n, head_dim) by the
    /// angles of positions start..start+n, pairs interleaved (x0,x1), (x2,x3), ...
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_, _, n, hd) = x.dims4()?;
        if start + n > ROPE_POSITIONS {
            candle_core::bail!("rotary table covers {ROPE_POSITIONS} positions");
        }
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        let rot = x.narrow(D::Minus1, 0, self.dim)?.contiguous()?;
        let rot = candle_nn::rotary_emb::rope_i(&rot, &cos, &sin)?;
        Tensor::cat(
            &[rot, x.narrow(D::Minus1, self.dim, hd - self.dim)?],
            D::Minus1,
        )
    }
}

/// (n, d) -> (1, heads, n, d/heads), contiguous.
pub fn split_heads(x: &Tensor, n_head: usize) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    x.reshape((1, n, n_head, d / n_head))?
        .transpose(1, 2)?
        .contiguous()
}

/// (1, heads, n, hd) -> (n, heads*hd).
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (_, h, n, hd) = x.dims4()?;
    x.squeeze(0)?.transpose(0, 1)?.reshape((n, h * hd))
}

/// softmax(q kᵀ + mask) v for pre-split heads, q already scaled.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    merge_heads(&softmax(scores)?.matmul(v)?)
}
