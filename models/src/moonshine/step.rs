//! The decoder step on the CPU in plain Rust over `Vec<f32>`, as Whisper's is: one token per
//! step through every weight matrix, so bound by reading weights. Int8 weights
//! ([`I8Matrix`], lossless here) and no tensor framework in the loop. Cross-attention
//! keys/values are computed once per utterance with candle (a big matmul) and kept as rows.
//!
//! Computes what [`super::decoder::Decoder`] computes (tested against it).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::int8::I8Matrix;
use super::ops::{Config, Rope, Weights, NORM_EPS};
use crate::whisper::decoder::{attend, HeadKv};

/// Scale and zero point of each int8 weight, by name (the converter's `quantization.json`).
pub type Quantization = HashMap<String, (f32, f32)>;

struct Linear {
    w: I8Matrix,
    b: Option<Vec<f32>>,
}

impl Linear {
    /// `n` row-major input rows -> `n` output rows.
    fn forward(&self, xs: &[f32], n: usize) -> Vec<f32> {
        let mut y = self.w.matmul_t(xs, n);
        if let Some(b) = &self.b {
            for row in y.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
            }
        }
        y
    }
}

/// Bias-free LayerNorm of each row.
struct Norm(Vec<f32>);

impl Norm {
    fn forward(&self, xs: &[f32]) -> Vec<f32> {
        let d = self.0.len();
        let mut out = Vec::with_capacity(xs.len());
        for x in xs.chunks_exact(d) {
            let mean = x.iter().sum::<f32>() / d as f32;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + NORM_EPS as f32).sqrt();
            out.extend(x.iter().zip(&self.0).map(|(v, w)| (v - mean) * inv * w));
        }
        out
    }
}

struct Layer {
    self_norm: Norm,
    /// q|k|v, q scaled by 1/sqrt(head_dim).
    qkv: Linear,
    self_o: Linear,
    cross_norm: Norm,
    cross_q: Linear,
    cross_o: Linear,
    mlp_norm: Norm,
    /// value|gate (2 ff rows).
    fc1: Linear,
    fc2: Linear,
}

/// Loads int8 matrices by name, checking each against the fp32 weights.
struct Loader<'a> {
    w: &'a Weights<'a>,
    quant: &'a Quantization,
}

impl Loader<'_> {
    fn matrix(&self, name: &str, shape: &[usize], factor: f32) -> Result<I8Matrix> {
        let t = self.w.get(name, shape)?;
        let &(scale, zero) = self.quant.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{name} missing from quantization.json"))
        })?;
        I8Matrix::from_affine(&t, scale, zero, factor)
    }

    fn linear(&self, p: &str, n_in: usize, n_out: usize, bias: bool) -> Result<Linear> {
        let b = match bias {
            true => Some(self.w.get(&format!("{p}.bias"), &[n_out])?.to_vec1()?),
            false => None,
        };
        Ok(Linear {
            w: self
                .matrix(&format!("{p}.weight"), &[n_out, n_in], 1.0)?
                .pack(),
            b,
        })
    }

    fn stacked(&self, p: &str, parts: &[(&str, f32)], d: usize) -> Result<Linear> {
        let parts = parts
            .iter()
            .map(|(part, f)| self.matrix(&format!("{p}.{part}.weight"), &[d, d], *f))
            .collect::<Result<Vec<_>>>()?;
        Ok(Linear {
            w: I8Matrix::stack(parts).pack(),
            b: None,
        })
    }

    fn norm(&self, name: &str, d: usize) -> Result<Norm> {
        Ok(Norm(
            self.w.get(&format!("{name}.weight"), &[d])?.to_vec1()?,
        ))
    }

    fn layer(&self, p: &str, cfg: &Config) -> Result<Layer> {
        let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let scale = (cfg.head_dim() as f32).powf(-0.5);
        let (sa, ca) = (format!("{p}.self_attn"), format!("{p}.encoder_attn"));
        Ok(Layer {
            self_norm: self.norm(&format!("{p}.input_layernorm"), d)?,
            qkv: self.stacked(
                &sa,
                &[("q_proj", scale), ("k_proj", 1.0), ("v_proj", 1.0)],
                d,
            )?,
            self_o: self.linear(&format!("{sa}.o_proj"), d, d, false)?,
            cross_norm: self.norm(&format!("{p}.post_attention_layernorm"), d)?,
            cross_q: self.stacked(&ca, &[("q_proj", scale)], d)?,
            cross_o: self.linear(&format!("{ca}.o_proj"), d, d, false)?,
            mlp_norm: self.norm(&format!("{p}.final_layernorm"), d)?,
            fc1: self.linear(&format!("{p}.mlp.fc1"), d, 2 * ff, true)?,
            fc2: self.linear(&format!("{p}.mlp.fc2"), ff, d, true)?,
        })
    }
}

/// Per-utterance state: cross-attention k/v (from the audio, computed once) and the
/// self-attention k/v of every token fed so far. A clone (a beam's new branch) copies only
/// the tokens' k/v: the audio's are shared.
#[derive(Clone)]
pub struct CpuState {
    cross: Arc<Vec<HeadKv>>,
    cache: Vec<HeadKv>,
    cap: usize,
}

impl CpuState {
    /// Tokens fed so far.
    pub fn len(&self) -> usize {
        self.cache.first().map_or(0, |c| c.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct CpuDecoder {
    /// Token embedding, also the (tied) output projection.
    embed: I8Matrix,
    layers: Vec<Layer>,
    /// Per layer, k|v (2d, d) as a candle tensor: applied once per utterance to all frames.
    cross_kv: Vec<Tensor>,
    norm: Norm,
    inv_freq: Vec<f32>,
    rot: usize,
    d: usize,
    n_head: usize,
}

impl CpuDecoder {
    pub fn load(w: &Weights, quant: &Quantization, cfg: &Config, rope: &Rope) -> Result<Self> {
        let d = cfg.hidden_size;
        let loader = Loader { w, quant };
        let mut layers = Vec::new();
        let mut cross_kv = Vec::new();
        for i in 0..cfg.decoder_num_hidden_layers {
            let p = format!("model.decoder.layers.{i}");
            layers.push(loader.layer(&p, cfg)?);
            cross_kv.push(w.stacked(
                &format!("{p}.encoder_attn"),
                &[("k_proj", 1.0), ("v_proj", 1.0)],
                d,
            )?);
        }
        Ok(Self {
            embed: loader
                .matrix(
                    "model.decoder.embed_tokens.weight",
                    &[cfg.vocab_size, d],
                    1.0,
                )?
                .pack(),
            layers,
            cross_kv,
            norm: loader.norm("model.decoder.norm", d)?,
            inv_freq: rope.inv_freq.clone(),
            rot: rope.dim,
            d,
            n_head: cfg.decoder_num_attention_heads,
        })
    }

    pub fn vocab(&self) -> usize {
        self.embed.rows()
    }

    /// Projects the audio features (frames, d) once for every layer's cross-attention;
    /// the state holds up to `cap` tokens.
    pub fn start(&self, audio: &Tensor, cap: usize) -> Result<CpuState> {
        let frames = audio.dim(0)?;
        let hd = self.d / self.n_head;
        let audio = audio.to_device(&candle_core::Device::Cpu)?;
        let cross = self
            .cross_kv
            .iter()
            .map(|w| {
                let rows: Vec<f32> = audio.matmul(&w.t()?)?.flatten_all()?.to_vec1()?;
                let mut kv = HeadKv::new(self.n_head, hd, frames);
                kv.push_rows(&rows, 2 * self.d, 0);
                Ok(kv)
            })
            .collect::<Result<Vec<_>>>()?;
        let cross = Arc::new(cross);
        let cache = (0..self.layers.len())
            .map(|_| HeadKv::new(self.n_head, hd, cap))
            .collect();
        Ok(CpuState { cross, cache, cap })
    }

    /// One token for each of several sequences: row `i` of the result is the logits of
    /// `tokens[i]` fed to `states[i]`. Every weight matrix is read once for the whole batch;
    /// the numbers equal separate steps.
    pub fn step(&self, states: &mut [&mut CpuState], tokens: &[u32]) -> Result<Vec<f32>> {
        assert_eq!(states.len(), tokens.len(), "step: one token per state");
        let d = self.d;
        let mut positions = Vec::with_capacity(tokens.len());
        let mut x = Vec::with_capacity(tokens.len() * d);
        for (s, &t) in states.iter().zip(tokens) {
            if s.len() >= s.cap {
                candle_core::bail!("decoder state full ({} tokens)", s.cap);
            }
            if t as usize >= self.embed.rows() {
                candle_core::bail!("token {t} outside the vocabulary");
            }
            positions.push(s.len());
            x.extend(self.embed.row_f32(t as usize));
        }
        let angles = self.rotary_angles(&positions);
        for (i, l) in self.layers.iter().enumerate() {
            self.layer(l, i, &mut x, states, &angles);
        }
        Ok(self.embed.matmul_t(&self.norm.forward(&x), tokens.len()))
    }

    /// (cos, sin) of every rotary frequency at each position.
    fn rotary_angles(&self, positions: &[usize]) -> Vec<(Vec<f32>, Vec<f32>)> {
        positions
            .iter()
            .map(|&p| {
                self.inv_freq
                    .iter()
                    .map(|f| (p as f32 * f).sin_cos())
                    .map(|(s, c)| (c, s))
                    .unzip()
            })
            .collect()
    }

    /// Rotates the first `rot` dims of each head of `x` (d), pairs interleaved.
    fn rotate(&self, x: &mut [f32], (cos, sin): &(Vec<f32>, Vec<f32>)) {
        let hd = self.d / self.n_head;
        for head in x.chunks_exact_mut(hd) {
            for (i, pair) in head[..self.rot].chunks_exact_mut(2).enumerate() {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * cos[i] - b * sin[i];
                pair[1] = a * sin[i] + b * cos[i];
            }
        }
    }

    fn layer(
        &self,
        l: &Layer,
        layer: usize,
        x: &mut [f32],
        states: &mut [&mut CpuState],
        angles: &[(Vec<f32>, Vec<f32>)],
    ) {
        let (d, n) = (self.d, states.len());
        let mut qkv = l.qkv.forward(&l.self_norm.forward(x), n);
        // Each row appends its k/v to its sequence's cache before attending, so it sees the
        // earlier tokens and itself: causal without a mask.
        let mut a = vec![0f32; n * d];
        for (i, out) in a.chunks_exact_mut(d).enumerate() {
            let row = &mut qkv[i * 3 * d..(i + 1) * 3 * d];
            self.rotate(&mut row[..d], &angles[i]);
            self.rotate(&mut row[d..2 * d], &angles[i]);
            let cache = &mut states[i].cache[layer];
            cache.push_rows(row, 3 * d, d);
            attend(&row[..d], cache, cache.len, out);
        }
        add(x, &l.self_o.forward(&a, n));

        let q = l.cross_q.forward(&l.cross_norm.forward(x), n);
        let mut a = vec![0f32; n * d];
        for (i, (q, out)) in q.chunks_exact(d).zip(a.chunks_exact_mut(d)).enumerate() {
            let cross = &states[i].cross[layer];
            attend(q, cross, cross.len, out);
        }
        add(x, &l.cross_o.forward(&a, n));

        let h = l.fc1.forward(&l.mlp_norm.forward(x), n);
        let ff = h.len() / n / 2;
        let mut g = Vec::with_capacity(n * ff);
        for row in h.chunks_exact(2 * ff) {
            let (value, gate) = row.split_at(ff);
            g.extend(
                value
                    .iter()
                    .zip(gate)
                    .map(|(v, g)| v * g / (1.0 + (-g).exp())),
            );
        }
        add(x, &l.fc2.forward(&g, n));
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}
