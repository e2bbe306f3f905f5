//! Whisper's text decoder with a kv-cache, in plain Rust over `Vec<f32>`.
//!
//! Each step feeds one token through every weight matrix, so the step is bound by
//! reading weights, not by arithmetic. Hence f16 weights ([`F16Matrix`], lossless:
//! CTranslate2 stored them as f16) and no tensor framework in the loop: candle's
//! per-op allocation and thread hand-offs cost more than the work at this size.
//! Cross-attention keys/values are computed once per utterance with candle (a big
//! matmul) and kept as plain rows.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module};
use candle_transformers::models::whisper::Config;
use rayon::prelude::*;

use super::kernels::{gelu_slice, F16Matrix};
use super::weights::Weights;

/// f16 weight rows plus an f32 bias.
#[derive(Clone)]
struct F16Linear {
    w: Arc<F16Matrix>,
    b: Arc<Vec<f32>>,
}

impl F16Linear {
    fn new(l: &Linear) -> Result<Self> {
        let b = match l.bias() {
            Some(b) => b.to_vec1()?,
            None => vec![0.0; l.weight().dim(0)?],
        };
        Ok(Self {
            w: Arc::new(F16Matrix::from_tensor(l.weight())?),
            b: Arc::new(b),
        })
    }

    /// `n` row-major input rows -> `n` output rows.
    fn forward(&self, xs: &[f32], n: usize) -> Vec<f32> {
        let mut y = self.w.matmul_t(xs, n);
        for row in y.chunks_exact_mut(self.b.len()) {
            row.iter_mut().zip(self.b.iter()).for_each(|(y, b)| *y += b);
        }
        y
    }
}

#[derive(Clone)]
struct Norm {
    w: Arc<Vec<f32>>,
    b: Arc<Vec<f32>>,
}

impl Norm {
    fn load(w: &Weights, p: &str, d: usize) -> Result<Self> {
        Ok(Self {
            w: Arc::new(w.get(&format!("{p}.weight"), &[d])?.to_vec1()?),
            b: Arc::new(w.get(&format!("{p}.bias"), &[d])?.to_vec1()?),
        })
    }

    /// LayerNorm (eps 1e-5) of each row of `xs`.
    fn forward(&self, xs: &[f32]) -> Vec<f32> {
        let d = self.w.len();
        let mut out = Vec::with_capacity(xs.len());
        for x in xs.chunks_exact(d) {
            let mean = x.iter().sum::<f32>() / d as f32;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + 1e-5).sqrt();
            let row = x.iter().zip(self.w.iter().zip(self.b.iter()));
            out.extend(row.map(|(v, (w, b))| (v - mean) * inv * w + b));
        }
        out
    }
}

#[derive(Clone)]
struct Block {
    attn_ln: Norm,
    /// q|k|v fused, q pre-scaled by 1/sqrt(head_dim).
    qkv: F16Linear,
    attn_out: F16Linear,
    cross_ln: Norm,
    cross_q: F16Linear,
    /// Runs once per utterance over every audio position: a dense f32 matmul.
    cross_kv: Linear,
    cross_out: F16Linear,
    mlp_ln: Norm,
    fc1: F16Linear,
    fc2: F16Linear,
}

impl Block {
    fn load(w: &Weights, p: &str, d: usize, n_head: usize) -> Result<Self> {
        let scale = ((d / n_head) as f64).powf(-0.5);
        let sa = format!("{p}.self_attn");
        let ca = format!("{p}.encoder_attn");
        let f16 = |l: Linear| F16Linear::new(&l);
        Ok(Self {
            attn_ln: Norm::load(w, &format!("{p}.self_attn_layer_norm"), d)?,
            qkv: f16(w.fused(&sa, &["q_proj", "k_proj", "v_proj"], d, scale)?)?,
            attn_out: f16(w.linear(&format!("{sa}.out_proj"), d, d)?)?,
            cross_ln: Norm::load(w, &format!("{p}.encoder_attn_layer_norm"), d)?,
            cross_q: f16(w.scaled_linear(&format!("{ca}.q_proj"), d, scale)?)?,
            cross_kv: w.fused(&ca, &["k_proj", "v_proj"], d, 1.0)?,
            cross_out: f16(w.linear(&format!("{ca}.out_proj"), d, d)?)?,
            mlp_ln: Norm::load(w, &format!("{p}.final_layer_norm"), d)?,
            fc1: f16(w.linear(&format!("{p}.fc1"), d, 4 * d)?)?,
            fc2: f16(w.linear(&format!("{p}.fc2"), 4 * d, d)?)?,
        })
    }
}

/// Keys and values of one attention, laid out per head for the single-query products:
/// keys transposed, (heads, head_dim, cap), so scores are sums of contiguous rows;
/// values (heads, cap, head_dim), so the output is a sum of contiguous rows.
#[derive(Clone)]
pub(crate) struct HeadKv {
    kt: Vec<f32>,
    v: Vec<f32>,
    n_head: usize,
    hd: usize,
    cap: usize,
    pub(crate) len: usize,
}

impl HeadKv {
    pub(crate) fn new(n_head: usize, hd: usize, cap: usize) -> Self {
        Self {
            kt: vec![0.0; n_head * hd * cap],
            v: vec![0.0; n_head * hd * cap],
            n_head,
            hd,
            cap,
            len: 0,
        }
    }

    /// Appends positions from rows laid out k|v (each `2d` wide, as the fused projections emit).
    pub(crate) fn push_rows(&mut self, rows: &[f32], stride: usize, offset: usize) {
        let d = self.n_head * self.hd;
        for row in rows.chunks_exact(stride) {
            let (k, v) = (&row[offset..offset + d], &row[offset + d..offset + 2 * d]);
            let pos = self.len;
            assert!(pos < self.cap, "kv cache full");
            for (i, &kv) in k.iter().enumerate() {
                self.kt[i * self.cap + pos] = kv;
            }
            for h in 0..self.n_head {
                let dst = (h * self.cap + pos) * self.hd;
                self.v[dst..dst + self.hd].copy_from_slice(&v[h * self.hd..(h + 1) * self.hd]);
            }
            self.len += 1;
        }
    }
}

/// Per-utterance state: cross-attention k/v (from the audio, computed once) and the
/// self-attention k/v of every token fed so far.
pub struct DecoderState {
    cross: Vec<HeadKv>,
    cache: Vec<HeadKv>,
}

impl DecoderState {
    /// Tokens fed so far.
    pub fn len(&self) -> usize {
        self.cache.first().map_or(0, |c| c.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the tokens but keeps the cross-attention k/v, for a retry on the same audio.
    pub fn reset(&mut self) {
        // Stale entries past `len` are never read, so there is nothing to clear.
        self.cache.iter_mut().for_each(|c| c.len = 0);
    }
}

#[derive(Clone)]
pub struct Decoder {
    /// Token embedding, also the (tied) output projection.
    embed: Arc<F16Matrix>,
    positions: Arc<Vec<f32>>,
    blocks: Vec<Block>,
    ln: Norm,
    d: usize,
    n_head: usize,
    max_positions: usize,
}

impl Decoder {
    pub(super) fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let d = cfg.d_model;
        let embed = w.get("model.decoder.embed_tokens.weight", &[cfg.vocab_size, d])?;
        let n_ctx = cfg.max_target_positions;
        let positions = w.get("model.decoder.embed_positions.weight", &[n_ctx, d])?;
        let blocks = (0..cfg.decoder_layers)
            .map(|i| {
                let p = format!("model.decoder.layers.{i}");
                Block::load(w, &p, d, cfg.decoder_attention_heads)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            embed: Arc::new(F16Matrix::from_tensor(&embed)?),
            positions: Arc::new(positions.flatten_all()?.to_vec1()?),
            blocks,
            ln: Norm::load(w, "model.decoder.layer_norm", d)?,
            d,
            n_head: cfg.decoder_attention_heads,
            max_positions: n_ctx,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Projects the audio features (frames, d) once per utterance for every layer's cross-attention.
    pub fn start(&self, audio: &Tensor) -> Result<DecoderState> {
        let len = audio.dim(0)?;
        let hd = self.d / self.n_head;
        let cross = self
            .blocks
            .iter()
            .map(|b| {
                let rows: Vec<f32> = b.cross_kv.forward(audio)?.flatten_all()?.to_vec1()?;
                let mut kv = HeadKv::new(self.n_head, hd, len);
                kv.push_rows(&rows, 2 * self.d, 0);
                Ok(kv)
            })
            .collect::<Result<_>>()?;
        let cache = (0..self.blocks.len())
            .map(|_| HeadKv::new(self.n_head, hd, self.max_positions))
            .collect();
        Ok(DecoderState { cross, cache })
    }

    /// Feeds `tokens` after those already in `state`; returns their final hidden
    /// states, row-major (tokens.len(), d). Logits of a row come from [`Self::logits`].
    pub fn step(&self, state: &mut DecoderState, tokens: &[u32]) -> Result<Vec<f32>> {
        let owners = vec![0; tokens.len()];
        self.step_rows(&mut [state], &owners, tokens)
    }

    /// One token for each of several sequences (a batch): row `i` of the result is the
    /// hidden state of `tokens[i]` fed to `states[i]`. Every weight matrix is read once for
    /// the whole batch, which is what a step costs; the numbers equal separate steps.
    pub fn step_batch(&self, states: &mut [&mut DecoderState], tokens: &[u32]) -> Result<Vec<f32>> {
        assert_eq!(
            states.len(),
            tokens.len(),
            "step_batch: one token per state"
        );
        let owners: Vec<usize> = (0..tokens.len()).collect();
        self.step_rows(states, &owners, tokens)
    }

    /// Rows of the final hidden states -> their logits, (rows, vocab) row-major.
    pub fn logits_rows(&self, hidden: &[f32]) -> Vec<f32> {
        self.embed.matmul_t(hidden, hidden.len() / self.d)
    }

    /// Token `tokens[i]` goes to `states[owners[i]]`, after that state's earlier tokens
    /// (and after earlier rows with the same owner).
    fn step_rows(
        &self,
        states: &mut [&mut DecoderState],
        owners: &[usize],
        tokens: &[u32],
    ) -> Result<Vec<f32>> {
        let d = self.d;
        let mut next: Vec<usize> = states.iter().map(|s| s.len()).collect();
        let mut x = Vec::with_capacity(tokens.len() * d);
        for (&t, &o) in tokens.iter().zip(owners) {
            let pos = next[o];
            next[o] += 1;
            if pos >= self.max_positions {
                candle_core::bail!(
                    "decoder context of {} positions exceeded",
                    self.max_positions
                );
            }
            let pos = &self.positions[pos * d..(pos + 1) * d];
            let emb = self.embed.row_f32(t as usize);
            x.extend(emb.iter().zip(pos).map(|(e, p)| e + p));
        }
        for (layer, b) in self.blocks.iter().enumerate() {
            self.block_step(b, layer, &mut x, states, owners);
        }
        Ok(self.ln.forward(&x))
    }

    /// Logits of row `row` of `hidden`: a product with the tied token embedding.
    pub fn logits(&self, hidden: &[f32], row: usize) -> Vec<f32> {
        self.embed.matvec(&hidden[row * self.d..(row + 1) * self.d])
    }

    /// One pre-norm residual block over the rows of `x`, in place; row `i` attends over
    /// the caches of `states[owners[i]]`.
    fn block_step(
        &self,
        b: &Block,
        layer: usize,
        x: &mut [f32],
        states: &mut [&mut DecoderState],
        owners: &[usize],
    ) {
        let (d, n) = (self.d, owners.len());
        let qkv = b.qkv.forward(&b.attn_ln.forward(x), n);
        // Each row of `qkv` is q|k|v. A row is appended to its sequence's cache before it
        // attends, so it sees that sequence's earlier tokens and itself: causal, no mask.
        let mut a = vec![0f32; n * d];
        for (i, out) in a.chunks_exact_mut(d).enumerate() {
            let row = &qkv[i * 3 * d..(i + 1) * 3 * d];
            let cache = &mut states[owners[i]].cache[layer];
            cache.push_rows(row, 3 * d, d);
            attend(&row[..d], cache, cache.len, out);
        }
        add(x, &b.attn_out.forward(&a, n));

        let q = b.cross_q.forward(&b.cross_ln.forward(x), n);
        let mut a = vec![0f32; n * d];
        for (i, (q, out)) in q.chunks_exact(d).zip(a.chunks_exact_mut(d)).enumerate() {
            let cross = &states[owners[i]].cross[layer];
            attend(q, cross, cross.len, out);
        }
        add(x, &b.cross_out.forward(&a, n));

        let mut h = b.fc1.forward(&b.mlp_ln.forward(x), n);
        gelu_slice(&mut h);
        add(x, &b.fc2.forward(&h, n));
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

/// Positions from which spreading the heads over threads pays for the hand-off.
const PAR_ATTEND_LEN: usize = 256;

/// Multi-head attention of one (pre-scaled) query over the first `len` positions of
/// `kv`; writes the heads' outputs side by side into `out` (d).
pub(crate) fn attend(q: &[f32], kv: &HeadKv, len: usize, out: &mut [f32]) {
    let (hd, cap) = (kv.hd, kv.cap);
    let head = |(h, o): (usize, &mut [f32])| {
        let kt = &kv.kt[h * hd * cap..(h + 1) * hd * cap];
        let v = &kv.v[h * cap * hd..(h * cap + len) * hd];
        attend_head(&q[h * hd..(h + 1) * hd], kt, cap, v, len, o);
    };
    if len >= PAR_ATTEND_LEN {
        out.par_chunks_mut(hd).enumerate().for_each(head);
    } else {
        out.chunks_mut(hd).enumerate().for_each(head);
    }
}

/// One head: `kt` is (hd, cap) with the first `len` columns valid, `v` is (len, hd).
fn attend_head(q: &[f32], kt: &[f32], cap: usize, v: &[f32], len: usize, out: &mut [f32]) {
    // `attend_head_body` compiled again for a wider instruction set, run where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    macro_rules! attend_with {
        ($feature:tt) => {
            if std::is_x86_feature_detected!($feature) {
                #[target_feature(enable = $feature)]
                unsafe fn wide(
                    q: &[f32],
                    kt: &[f32],
                    cap: usize,
                    v: &[f32],
                    len: usize,
                    out: &mut [f32],
                ) {
                    attend_head_body(q, kt, cap, v, len, out)
                }
                // SAFETY: support for the feature was checked just above.
                return unsafe { wide(q, kt, cap, v, len, out) };
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    {
        attend_with!("avx512f");
        attend_with!("avx2");
    }
    attend_head_body(q, kt, cap, v, len, out)
}

/// Written as row updates (no horizontal sums) so that it vectorizes as is.
#[inline(always)]
fn attend_head_body(q: &[f32], kt: &[f32], cap: usize, v: &[f32], len: usize, out: &mut [f32]) {
    let mut w = vec![0f32; len];
    for (qd, row) in q.iter().zip(kt.chunks_exact(cap)) {
        w.iter_mut()
            .zip(&row[..len])
            .for_each(|(w, k)| *w += qd * k);
    }
    super::kernels::softmax_slice(&mut w);
    out.fill(0.0);
    for (wj, vj) in w.iter().zip(v.chunks_exact(out.len())) {
        out.iter_mut().zip(vj).for_each(|(o, v)| *o += wj * v);
    }
}
