//! SmolLM2's llama forward over the GGUF weights, for several sequences in one pass.
//!
//! candle's `quantized_llama::ModelWeights` holds one kv cache per layer for one batch of
//! sequences of equal length. Continuous batching needs more: each sequence has its own
//! [`KvCache`] and its own number of new tokens (a prefill chunk, or the one token sampled
//! last). [`Llama::forward`] stacks the new tokens of every sequence into one matrix for the
//! projections and the MLP, so each weight is read once per pass for all of them (one token
//! per sequence is bound by reading weights on a CPU), and runs attention per sequence over
//! its own keys.
//!
//! A sequence's logits do not depend on what else is in the pass or on how its prompt was cut
//! into chunks: the quantized matmul and RMSNorm work row by row, and attention of one query
//! row and head is computed by one thread in a fixed order. So a reply is the same token for
//! token alone, batched, or from a prepared prefix.
//!
//! Keys and values of a finished prefix (the preamble, a conversation's history) are frozen
//! into shared blocks: every sequence starting from it reads the same memory, and a cache
//! clone copies only its own unfrozen tail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};

/// Positions the rotary tables cover: a prompt and its reply must fit.
pub const MAX_POSITIONS: usize = 4096;
/// Query (row, head) pairs per unit of parallel attention work.
const ATTENTION_UNIT: usize = 4;

/// Shapes read from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
}

impl Config {
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let get = |key: &str| match ct.metadata.get(key) {
            Some(v) => Ok(v),
            None => candle_core::bail!("GGUF metadata has no {key}"),
        };
        let arch = get("general.architecture")?.to_string()?;
        if arch != "llama" {
            // Other architectures pair rotary dimensions differently (NEOX) or differ more.
            candle_core::bail!("reply model architecture {arch:?} is not llama");
        }
        let hidden = get("llama.embedding_length")?.to_u32()? as usize;
        let heads = get("llama.attention.head_count")?.to_u32()? as usize;
        let cfg = Self {
            layers: get("llama.block_count")?.to_u32()? as usize,
            hidden,
            heads,
            kv_heads: get("llama.attention.head_count_kv")?.to_u32()? as usize,
            head_dim: hidden / heads,
            vocab: 0,
            rms_eps: get("llama.attention.layer_norm_rms_epsilon")?.to_f32()?,
            rope_base: get("llama.rope.freq_base")
                .and_then(|v| v.to_f32())
                .unwrap_or(10_000.0),
        };
        let rope_dim = get("llama.rope.dimension_count")?.to_u32()? as usize;
        // Not `is_multiple_of`: the workspace MSRV (1.85) predates it.
        if rope_dim != cfg.head_dim
            || cfg.kv_heads == 0
            || heads / cfg.kv_heads * cfg.kv_heads != heads
        {
            candle_core::bail!("unsupported attention shape {cfg:?} (rope over {rope_dim})");
        }
        Ok(cfg)
    }

    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

struct Layer {
    attn_norm: Tensor,
    /// Query, key and value projections as one matrix: one pass over the input rows.
    qkv: QMatMul,
    out: QMatMul,
    ffn_norm: Tensor,
    /// Gate and up projections as one matrix.
    gate_up: QMatMul,
    down: QMatMul,
}

/// The weights, loaded once and shared by every sequence (`Send + Sync`).
pub struct Llama {
    cfg: Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    /// cos and sin of position × frequency, `MAX_POSITIONS` rows of `head_dim / 2`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    device: Device,
}

/// Token embeddings. A Q8_0 table (shared with the output layer, as SmolLM2 ties them) is
/// read row by row instead of being expanded to f32: 113 MiB less for a 49k vocabulary.
enum Embedding {
    Q8Rows(Arc<QTensor>),
    Dense(Tensor),
}

/// One sequence's part of a [`Llama::forward`] pass.
pub struct Input<'a> {
    pub cache: &'a mut KvCache,
    /// New tokens, at positions `cache.len()..`; at least one.
    pub tokens: &'a [u32],
    /// Whether to return logits for the last of them.
    pub logits: bool,
}

impl Llama {
    /// Build from GGUF metadata and its tensors by name (as [`super::weights`] loads them).
    pub fn new(
        ct: &gguf_file::Content,
        mut tensors: HashMap<String, QTensor>,
        device: &Device,
    ) -> Result<Self> {
        let mut cfg = Config::from_gguf(ct)?;
        let mut take = |name: &str| match tensors.remove(name) {
            Some(t) => Ok(t),
            None => candle_core::bail!("GGUF has no tensor {name}"),
        };
        let embed = Arc::new(take("token_embd.weight")?);
        cfg.vocab = embed.shape().dims2()?.0;
        let output = match take("output.weight") {
            Ok(t) => QMatMul::from_qtensor(t)?,
            Err(_) => QMatMul::from_arc(embed.clone())?,
        };
        let norm = take("output_norm.weight")?.dequantize(device)?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let mut t = |part: &str| take(&format!("blk.{i}.{part}.weight"));
            let (q, k, v) = (t("attn_q")?, t("attn_k")?, t("attn_v")?);
            let (gate, up) = (t("ffn_gate")?, t("ffn_up")?);
            layers.push(Layer {
                attn_norm: t("attn_norm")?.dequantize(device)?,
                qkv: QMatMul::from_qtensor(stack_rows(&[&q, &k, &v], device)?)?,
                out: QMatMul::from_qtensor(t("attn_output")?)?,
                ffn_norm: t("ffn_norm")?.dequantize(device)?,
                gate_up: QMatMul::from_qtensor(stack_rows(&[&gate, &up], device)?)?,
                down: QMatMul::from_qtensor(t("ffn_down")?)?,
            });
        }
        let embed = match embed.dtype() {
            GgmlDType::Q8_0 if device.is_cpu() => Embedding::Q8Rows(embed),
            _ => Embedding::Dense(embed.dequantize(device)?),
        };
        let (cos, sin) = rotary_tables(cfg.head_dim, cfg.rope_base);
        Ok(Self {
            cfg,
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Run each input's new tokens on top of its cache (which grows by them) and return the
    /// logits `(n, vocab)` of the inputs that asked, in order (`None` when none asked).
    pub fn forward(&self, inputs: &mut [Input<'_>]) -> Result<Option<Tensor>> {
        let rows = Rows::of(inputs)?;
        if rows.total == 0 {
            return Ok(None);
        }
        for input in inputs.iter_mut() {
            input.cache.reserve(&self.cfg, input.tokens.len());
        }
        let mut x = self.embed(&rows.ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            x = self.layer(l, layer, x, inputs, &rows)?;
        }
        for input in inputs.iter_mut() {
            input.cache.tail.len += input.tokens.len();
        }
        if rows.wanted.is_empty() {
            return Ok(None);
        }
        let wanted = Tensor::new(rows.wanted.as_slice(), &self.device)?;
        let last = x.index_select(&wanted, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.cfg.rms_eps)?;
        Ok(Some(self.output.forward(&last)?))
    }

    fn layer(
        &self,
        l: usize,
        layer: &Layer,
        x: Tensor,
        inputs: &mut [Input<'_>],
        rows: &Rows,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (q_dim, kv_dim) = (cfg.hidden, cfg.kv_dim());
        let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, cfg.rms_eps)?;
        let qkv: Vec<f32> = layer.qkv.forward(&h)?.flatten_all()?.to_vec1()?;
        let width = q_dim + 2 * kv_dim;
        let mut q = Vec::with_capacity(rows.total * q_dim);
        for (row, r) in qkv.chunks_exact(width).enumerate() {
            let pos = rows.positions[row];
            let (rq, rest) = r.split_at(q_dim);
            let (rk, rv) = rest.split_at(kv_dim);
            let start = q.len();
            q.extend_from_slice(rq);
            self.rotate(&mut q[start..], pos);
            let mut k = rk.to_vec();
            self.rotate(&mut k, pos);
            let cache = &mut inputs[rows.input[row]].cache;
            cache.tail.k[l].extend_from_slice(&k);
            cache.tail.v[l].extend_from_slice(rv);
        }
        let attn = self.attention(l, inputs, &q, rows)?;
        let x = (layer.out.forward(&attn)? + x)?;
        let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, cfg.rms_eps)?;
        let gate_up = layer.gate_up.forward(&h)?;
        let ffn = gate_up.dim(1)? / 2;
        let gate = gate_up.narrow(1, 0, ffn)?;
        let up = gate_up.narrow(1, ffn, ffn)?;
        let mlp = layer.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)?;
        mlp + x
    }

    /// Rotary position embedding of one row of heads, in place: dimensions (2i, 2i+1)
    /// rotate together (llama's interleaved pairing, as llama.cpp's "norm" rope).
    fn rotate(&self, row: &mut [f32], pos: usize) {
        let half = self.cfg.head_dim / 2;
        let (cos, sin) = (
            &self.cos[pos * half..(pos + 1) * half],
            &self.sin[pos * half..(pos + 1) * half],
        );
        for head in row.chunks_exact_mut(self.cfg.head_dim) {
            for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * cos[i] - b * sin[i];
                pair[1] = a * sin[i] + b * cos[i];
            }
        }
    }

    /// Causal attention of every new row over its own sequence's keys, heads of a group
    /// sharing their key/value head; rows × heads are shared out over candle's CPU pool
    /// (the threads its matmuls use, so no second pool competes for the cores).
    fn attention(&self, l: usize, inputs: &[Input<'_>], q: &[f32], rows: &Rows) -> Result<Tensor> {
        let cfg = &self.cfg;
        let hd = cfg.head_dim;
        let segments: Vec<Vec<Segment<'_>>> = inputs.iter().map(|i| i.cache.segments(l)).collect();
        let mut out = vec![0f32; rows.total * cfg.hidden];
        let cells: Vec<Mutex<&mut [f32]>> = out
            .chunks_mut(ATTENTION_UNIT * hd)
            .map(Mutex::new)
            .collect();
        let attend = |cell: usize| {
            // Each cell is taken by exactly one worker: the lock is never contended.
            let mut dst = cells[cell].lock().expect("attention cell");
            for (u, o) in dst.chunks_exact_mut(hd).enumerate() {
                let unit = cell * ATTENTION_UNIT + u;
                let (row, head) = (unit / cfg.heads, unit % cfg.heads);
                let group = head / (cfg.heads / cfg.kv_heads);
                let query = &q[unit * hd..(unit + 1) * hd];
                let keys = rows.positions[row] + 1;
                let segments = &segments[rows.input[row]];
                kernels::attend(query, segments, keys, group * hd, cfg.kv_dim(), o);
            }
        };
        candle_core::utils::barrier_pool().execute_chunked(cells.len(), |range| {
            range.for_each(attend);
        });
        drop(cells);
        Tensor::from_vec(out, (rows.total, cfg.hidden), &self.device)
    }

    fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let hidden = self.cfg.hidden;
        match &self.embed {
            Embedding::Dense(table) => table.index_select(&Tensor::new(ids, &self.device)?, 0),
            Embedding::Q8Rows(table) => {
                let data = table.data()?;
                let row_bytes = hidden / 32 * Q8_0_BLOCK;
                let mut out = Vec::with_capacity(ids.len() * hidden);
                for &id in ids {
                    let id = id as usize;
                    if id >= self.cfg.vocab {
                        candle_core::bail!("token id {id} outside the vocabulary");
                    }
                    dequantize_q8_0(&data[id * row_bytes..(id + 1) * row_bytes], &mut out);
                }
                Tensor::from_vec(out, (ids.len(), hidden), &self.device)
            }
        }
    }
}

/// Bytes of one Q8_0 block: an f16 scale and 32 signed bytes.
const Q8_0_BLOCK: usize = 34;

/// The same values as candle's Q8_0 dequantization: `scale * q`.
fn dequantize_q8_0(row: &[u8], out: &mut Vec<f32>) {
    for block in row.chunks_exact(Q8_0_BLOCK) {
        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        out.extend(block[2..].iter().map(|&q| q as i8 as f32 * d));
    }
}

/// Matrices with the same input stacked as one (their output rows one after another).
/// Quantized rows are whole blocks, so this only concatenates bytes.
fn stack_rows(parts: &[&QTensor], device: &Device) -> Result<QTensor> {
    let dtype = parts[0].dtype();
    let (_, k) = parts[0].shape().dims2()?;
    let mut bytes = Vec::new();
    let mut n = 0;
    for p in parts {
        let (rows, pk) = p.shape().dims2()?;
        if p.dtype() != dtype || pk != k {
            candle_core::bail!("cannot stack {:?} with {:?}", p.shape(), parts[0].shape());
        }
        bytes.extend_from_slice(&p.data()?);
        n += rows;
    }
    candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &bytes, vec![n, k], device)
}

/// cos/sin tables of llama's rotary embedding, frequencies `base^(-2i/d)`.
fn rotary_tables(head_dim: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let freqs: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(MAX_POSITIONS * freqs.len());
    let mut sin = Vec::with_capacity(MAX_POSITIONS * freqs.len());
    for pos in 0..MAX_POSITIONS {
        for f in &freqs {
            let angle = pos as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

/// Where each new row of a pass comes from.
struct Rows {
    total: usize,
    ids: Vec<u32>,
    /// Position of each row in its sequence.
    positions: Vec<usize>,
    /// Which input each row belongs to.
    input: Vec<usize>,
    /// Rows whose logits are returned.
    wanted: Vec<u32>,
}

impl Rows {
    fn of(inputs: &[Input<'_>]) -> Result<Self> {
        let mut rows = Self {
            total: 0,
            ids: Vec::new(),
            positions: Vec::new(),
            input: Vec::new(),
            wanted: Vec::new(),
        };
        for (i, input) in inputs.iter().enumerate() {
            let start = input.cache.len();
            if input.tokens.is_empty() || start + input.tokens.len() > MAX_POSITIONS {
                candle_core::bail!(
                    "{} new tokens after {start} do not fit {MAX_POSITIONS} positions (or none)",
                    input.tokens.len()
                );
            }
            rows.ids.extend_from_slice(input.tokens);
            rows.positions.extend(start..start + input.tokens.len());
            rows.input
                .extend(std::iter::repeat_n(i, input.tokens.len()));
            rows.total += input.tokens.len();
            if input.logits {
                rows.wanted.push(rows.total as u32 - 1);
            }
        }
        Ok(rows)
    }
}

/// Keys and values of one sequence so far, per layer: frozen shared blocks, then its own tail.
#[derive(Clone, Default)]
pub struct KvCache {
    frozen: Vec<Arc<KvBlock>>,
    tail: KvBlock,
}

/// `len` positions; per layer, rows of `kv_heads * head_dim` keys (and values).
#[derive(Clone, Default)]
struct KvBlock {
    len: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// Keys and values of some positions of one layer.
type Segment<'a> = (&'a [f32], &'a [f32]);

impl KvCache {
    /// Positions run so far.
    pub fn len(&self) -> usize {
        self.frozen.iter().map(|b| b.len).sum::<usize>() + self.tail.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Make what has been run so far a shared block: clones of this cache (every sequence
    /// started from it) then share its memory instead of copying it.
    pub fn freeze(&mut self) {
        if self.tail.len > 0 {
            self.frozen.push(Arc::new(std::mem::take(&mut self.tail)));
        }
    }

    /// Bytes of keys and values this cache holds itself (frozen blocks are shared).
    pub fn own_bytes(&self) -> usize {
        let floats: usize = self.tail.k.iter().chain(&self.tail.v).map(Vec::len).sum();
        floats * std::mem::size_of::<f32>()
    }

    fn reserve(&mut self, cfg: &Config, new: usize) {
        let tail = &mut self.tail;
        tail.k.resize_with(cfg.layers, Vec::new);
        tail.v.resize_with(cfg.layers, Vec::new);
        for buf in tail.k.iter_mut().chain(tail.v.iter_mut()) {
            buf.reserve(new * cfg.kv_dim());
        }
    }

    fn segments(&self, layer: usize) -> Vec<Segment<'_>> {
        self.frozen
            .iter()
            .map(|b| b.as_ref())
            .chain(std::iter::once(&self.tail))
            .filter(|b| !b.k.is_empty())
            .map(|b| (b.k[layer].as_slice(), b.v[layer].as_slice()))
            .collect()
    }
}

/// The inner loops of attention, in fixed-width lanes so they vectorize, compiled for AVX2
/// when the CPU has it (the crate is built for baseline x86-64).
mod kernels {
    use std::cell::RefCell;

    use super::Segment;

    const LANES: usize = 8;

    thread_local! {
        /// Attention scores of one query row, reused across calls.
        static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    /// Softmax attention of one query head over the first `keys` positions of `segments`,
    /// reading the key/value head at `offset` in each row of `stride`; the result goes to
    /// `out`. Always the same operations in the same order for the same inputs.
    pub fn attend(
        query: &[f32],
        segments: &[Segment<'_>],
        keys: usize,
        offset: usize,
        stride: usize,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            unsafe fn wide(
                q: &[f32],
                s: &[Segment<'_>],
                keys: usize,
                offset: usize,
                stride: usize,
                out: &mut [f32],
            ) {
                attend_lanes(q, s, keys, offset, stride, out)
            }
            // SAFETY: AVX2 support was checked just above.
            return unsafe { wide(query, segments, keys, offset, stride, out) };
        }
        attend_lanes(query, segments, keys, offset, stride, out)
    }

    #[inline(always)]
    fn attend_lanes(
        query: &[f32],
        segments: &[Segment<'_>],
        keys: usize,
        offset: usize,
        stride: usize,
        out: &mut [f32],
    ) {
        let hd = query.len();
        let scale = (hd as f32).sqrt();
        SCORES.with(|scores| {
            let mut scores = scores.borrow_mut();
            scores.clear();
            let mut left = keys;
            for (k, _) in segments {
                for key in k.chunks_exact(stride).take(left) {
                    scores.push(dot(query, &key[offset..offset + hd]) / scale);
                }
                left -= (k.len() / stride).min(left);
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            out.fill(0.0);
            let mut weights = scores.iter();
            for (_, v) in segments {
                for (value, w) in v.chunks_exact(stride).zip(weights.by_ref()) {
                    let w = *w / sum;
                    for (o, x) in out.iter_mut().zip(&value[offset..offset + hd]) {
                        *o += w * x;
                    }
                }
            }
        });
    }

    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..LANES {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

/// f32 logits of row `i` as a vector tensor (what the samplers take).
pub fn logits_row(logits: &Tensor, i: usize) -> Result<Tensor> {
    logits.get(i)?.to_dtype(DType::F32)
}
