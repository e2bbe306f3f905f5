//! Whisper encoder and a kv-cached decoder, batch size 1, as plain functions over
//! weights loaded from candle-named tensors (see [`super::ct2`]).
//!
//! Differences from candle-transformers' model, all for speed on CPU: q/k/v are one
//! fused matmul, the attention scale is folded into the query weights, convolutions
//! are im2col matmuls, attention runs in blocks of queries, and the decoder
//! ([`super::decoder`]) keeps a self-attention kv-cache so each step costs one token.

use std::collections::HashMap;

use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, Linear, Module};
use candle_transformers::models::whisper::Config;

use super::decoder::Decoder;
use super::kernels::{gelu_erf_, softmax_last_dim_};
use super::weights::Weights;

/// Tensor lookup with a shape check, so a wrong map fails loudly at load time.
#[derive(Clone)]
struct Mlp {
    ln: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn load(w: &Weights, p: &str, d: usize) -> Result<Self> {
        Ok(Self {
            ln: w.layer_norm(&format!("{p}.final_layer_norm"), d)?,
            fc1: w.linear(&format!("{p}.fc1"), d, 4 * d)?,
            fc2: w.linear(&format!("{p}.fc2"), 4 * d, d)?,
        })
    }

    /// Pre-norm residual MLP; exact (erf) GELU as in openai-whisper and CTranslate2's spec.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = gelu_erf_(self.fc1.forward(&self.ln.forward(x)?)?)?;
        x + self.fc2.forward(&h)?
    }
}

/// (n, d) -> (heads, n, d/heads), contiguous for the matmuls.
fn split_heads(x: &Tensor, n_head: usize) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    x.reshape((n, n_head, d / n_head))?
        .transpose(0, 1)?
        .contiguous()
}

/// (heads, n, hd) -> (n, heads*hd).
fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (h, n, hd) = x.dims3()?;
    x.transpose(0, 1)?.reshape((n, h * hd))
}

/// Query rows per block in [`attention_blocked`].
pub const ATTENTION_BLOCK: usize = 128;

/// [`attention`] in blocks of query rows, so each block's scores stay in cache
/// instead of a (heads, n, n) matrix making three round trips through memory.
pub fn attention_blocked(q: &Tensor, k: &Tensor, v: &Tensor, block: usize) -> Result<Tensor> {
    let n = q.dim(1)?;
    let kt = k.t()?.contiguous()?;
    if n <= block {
        return attention(q, &kt, v, None);
    }
    let mut outs = Vec::with_capacity(n.div_ceil(block));
    for start in (0..n).step_by(block) {
        let qb = q.narrow(1, start, block.min(n - start))?;
        let w = softmax_last_dim_(qb.matmul(&kt)?)?;
        outs.push(w.matmul(v)?);
    }
    merge_heads(&Tensor::cat(&outs, 1)?)
}

/// softmax(q kᵀ + mask) v for pre-split heads; q is already scaled and the keys come
/// transposed, (heads, hd, n), so the product reads them contiguously.
pub fn attention(q: &Tensor, kt: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let mut scores = q.matmul(kt)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let w = softmax_last_dim_(scores)?;
    merge_heads(&w.matmul(v)?)
}

#[derive(Clone)]
struct SelfAttention {
    ln: LayerNorm,
    qkv: Linear,
    out: Linear,
    n_head: usize,
}

impl SelfAttention {
    fn load(w: &Weights, p: &str, d: usize, n_head: usize) -> Result<Self> {
        let scale = ((d / n_head) as f64).powf(-0.5);
        Ok(Self {
            ln: w.layer_norm(&format!("{p}.self_attn_layer_norm"), d)?,
            qkv: w.fused(
                &format!("{p}.self_attn"),
                &["q_proj", "k_proj", "v_proj"],
                d,
                scale,
            )?,
            out: w.linear(&format!("{p}.self_attn.out_proj"), d, d)?,
            n_head,
        })
    }

    /// Projects x (n, d) to per-head q, k, v.
    fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let qkv = self.qkv.forward(&self.ln.forward(x)?)?;
        let d = qkv.dim(1)? / 3;
        let part = |i| split_heads(&qkv.narrow(1, i * d, d)?, self.n_head);
        Ok((part(0)?, part(1)?, part(2)?))
    }
}

#[derive(Clone)]
struct EncoderBlock {
    attn: SelfAttention,
    mlp: Mlp,
}

impl EncoderBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.attn.qkv(x)?;
        let a = attention_blocked(&q, &k, &v, ATTENTION_BLOCK)?;
        let x = (x + self.attn.out.forward(&a)?)?;
        self.mlp.forward(&x)
    }
}

/// Kernel-3, padding-1 convolution over time-major x (t, c) as one matmul on im2col
/// columns (t / stride, 3c): on CPU candle's conv1d is several times slower than this.
fn conv3(x: &Tensor, w: &Linear, stride: usize) -> Result<Tensor> {
    let (t, c) = x.dims2()?;
    let t_out = t / stride;
    let xp = x.pad_with_zeros(0, 1, 1)?;
    let taps = (0..3)
        .map(|k| {
            let tap = xp.narrow(0, k, t_out * stride)?;
            tap.reshape((t_out, stride, c))?.narrow(1, 0, 1)?.squeeze(1)
        })
        .collect::<Result<Vec<_>>>()?;
    w.forward(&Tensor::cat(&taps, 1)?)
}

#[derive(Clone)]
pub struct Encoder {
    /// Convolutions as linears over im2col columns, see [`conv3`].
    conv1: Linear,
    conv2: Linear,
    positions: Tensor,
    blocks: Vec<EncoderBlock>,
    ln_post: LayerNorm,
}

impl Encoder {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let (d, n_mels) = (cfg.d_model, cfg.num_mel_bins);
        // (out, in, tap) -> (out, tap * in), matching the column order built by `conv3`.
        let conv = |name: &str, n_in: usize| -> Result<Linear> {
            let p = format!("model.encoder.{name}");
            let weight = w.get(&format!("{p}.weight"), &[d, n_in, 3])?;
            let weight = weight.permute((0, 2, 1))?.reshape((d, 3 * n_in))?;
            Ok(Linear::new(
                weight,
                Some(w.get(&format!("{p}.bias"), &[d])?),
            ))
        };
        let blocks = (0..cfg.encoder_layers)
            .map(|i| {
                let p = format!("model.encoder.layers.{i}");
                Ok(EncoderBlock {
                    attn: SelfAttention::load(w, &p, d, cfg.encoder_attention_heads)?,
                    mlp: Mlp::load(w, &p, d)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv1: conv("conv1", n_mels)?,
            conv2: conv("conv2", d)?,
            positions: w.get(
                "model.encoder.embed_positions.weight",
                &[cfg.max_source_positions, d],
            )?,
            blocks,
            ln_post: w.layer_norm("model.encoder.layer_norm", d)?,
        })
    }

    /// mel (1, n_mels, frames) -> audio features (frames/2, d), for any even number of
    /// frames up to 3000 (how many is the caller's choice, see `WhisperOptions`).
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let x = mel.squeeze(0)?.t()?.contiguous()?;
        let x = gelu_erf_(conv3(&x, &self.conv1, 1)?)?;
        let x = gelu_erf_(conv3(&x, &self.conv2, 2)?)?;
        let n = x.dim(0)?;
        if n > self.positions.dim(0)? {
            candle_core::bail!(
                "encoder input of {n} positions exceeds the model's {}",
                self.positions.dim(0)?
            );
        }
        let mut x = (x + self.positions.narrow(0, 0, n)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.ln_post.forward(&x)
    }
}

/// Encoder + decoder weights. Cloning copies only `Arc`s inside the tensors.
#[derive(Clone)]
pub struct Model {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl Model {
    pub fn load(tensors: &HashMap<String, Tensor>, cfg: &Config) -> Result<Self> {
        let w = Weights(tensors);
        Ok(Self {
            encoder: Encoder::load(&w, cfg)?,
            decoder: Decoder::load(&w, cfg)?,
        })
    }
}
