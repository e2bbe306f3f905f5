//! SmolLM2's llama forward over the GGUF weights, for several sequences in one pass.
//!
//! candle's `quantized_llama::ModelWeights` holds one kv cache per layer for one batch of
//! sequences of equal length. Continuous batching needs more: each sequence has its own
//! [`KvCache`] and its own number of new tokens (a prefill chunk, or the one token sampled
//! last). [`Llama::forward`] stacks the new tokens of every sequence into one matrix for the
//! projections and the MLP, so each weight tile is loaded once per pass for all of them
//! ([`crate::q8`]), and runs attention per sequence over its own keys.
//!
//! A sequence's logits do not depend on what else is in the pass or on how its prompt was cut
//! into chunks: the quantized matmul and RMSNorm work row by row, and the attention of one
//! row's heads is computed by one thread in a fixed order. So a reply is the same token for
//! token alone, batched, or from a prepared prefix.
//!
//! Keys and values of a finished prefix (the preamble, a conversation's history) are frozen
//! into shared blocks: every sequence starting from it reads the same memory, and a cache
//! clone copies only its own unfrozen tail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};

use crate::q8::PackedQ8;

/// Positions the rotary tables cover: a prompt and its reply must fit.
pub const MAX_POSITIONS: usize = 4096;

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
            || cfg.head_dim / 4 * 4 != cfg.head_dim
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
    qkv: Matrix,
    out: Matrix,
    ffn_norm: Tensor,
    /// Gate and up projections as one matrix.
    gate_up: Matrix,
    down: Matrix,
}

/// The weights, loaded once and shared by every sequence (`Send + Sync`).
pub struct Llama {
    cfg: Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Matrix,
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
            Ok(t) => Matrix::new(Arc::new(t))?,
            // Tied to the embeddings (as in SmolLM2): candle's kernel shares their memory.
            Err(_) => Matrix::new(embed.clone())?,
        };
        let norm = take("output_norm.weight")?.dequantize(device)?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let mut t = |part: &str| take(&format!("blk.{i}.{part}.weight"));
            let (q, k, v) = (t("attn_q")?, t("attn_k")?, t("attn_v")?);
            let (gate, up) = (t("ffn_gate")?, t("ffn_up")?);
            layers.push(Layer {
                attn_norm: t("attn_norm")?.dequantize(device)?,
                qkv: Matrix::new(Arc::new(stack_rows(&[&q, &k, &v], device)?))?,
                out: Matrix::new(Arc::new(t("attn_output")?))?,
                ffn_norm: t("ffn_norm")?.dequantize(device)?,
                gate_up: Matrix::new(Arc::new(stack_rows(&[&gate, &up], device)?))?,
                down: Matrix::new(Arc::new(t("ffn_down")?))?,
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
            inputs[rows.input[row]].cache.tail.push(l, &k, rv, cfg);
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

    /// Causal attention of every new row over its own sequence's keys. The heads sharing a
    /// key/value head are done together (each key read once for them); rows × key/value
    /// heads are shared out over candle's CPU pool (the threads its matmuls use, so no second
    /// pool competes for the cores).
    fn attention(&self, l: usize, inputs: &[Input<'_>], q: &[f32], rows: &Rows) -> Result<Tensor> {
        let cfg = &self.cfg;
        let segments: Vec<Vec<Segment<'_>>> = inputs
            .iter()
            .map(|i| i.cache.segments(l, cfg.kv_dim()))
            .collect();
        let group = cfg.heads / cfg.kv_heads * cfg.head_dim;
        let mut out = vec![0f32; rows.total * cfg.hidden];
        let cells: Vec<Mutex<&mut [f32]>> = out.chunks_mut(group).map(Mutex::new).collect();
        let attend = |cell: usize| {
            // Each cell is taken by exactly one worker: the lock is never contended.
            let mut dst = cells[cell].lock().expect("attention cell");
            let (row, kv_head) = (cell / cfg.kv_heads, cell % cfg.kv_heads);
            let queries = &q[cell * group..(cell + 1) * group];
            let keys = rows.positions[row] + 1;
            let segments = &segments[rows.input[row]];
            kernels::attend(queries, segments, keys, kv_head, cfg, &mut dst);
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

/// A weight matrix applied to rows of activations: the repacked integer kernel ([`crate::q8`]) where
/// the CPU has it, else candle's quantized matmul.
enum Matrix {
    Packed(PackedQ8),
    Candle(QMatMul),
}

impl Matrix {
    fn new(w: Arc<QTensor>) -> Result<Self> {
        Ok(match PackedQ8::new(&w)? {
            Some(p) => Self::Packed(p),
            None => Self::Candle(QMatMul::from_arc(w)?),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Packed(p) => p.forward(x),
            Self::Candle(m) => m.forward(x),
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
    qtensor_from_ggml(dtype, &bytes, vec![n, k], device)
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

/// Positions whose keys are stored together, transposed: one attention score per lane.
const KEY_GROUP: usize = 16;

/// `len` positions. Per layer, keys in groups of [`KEY_GROUP`] positions, each group laid
/// out `[kv_head][dimension][position]` (so one query dimension multiplies 16 keys at once),
/// and values as rows of `kv_heads * head_dim`.
#[derive(Clone, Default)]
struct KvBlock {
    len: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvBlock {
    /// Append the (rotated) key and the value of the next position of layer `l`.
    fn push(&mut self, l: usize, key: &[f32], value: &[f32], cfg: &Config) {
        let at = self.v[l].len() / cfg.kv_dim();
        self.v[l].extend_from_slice(value);
        let group = cfg.kv_dim() * KEY_GROUP;
        let keys = &mut self.k[l];
        if keys.len() < (at / KEY_GROUP + 1) * group {
            keys.resize((at / KEY_GROUP + 1) * group, 0.0);
        }
        let base = at / KEY_GROUP * group + at % KEY_GROUP;
        for (i, &x) in key.iter().enumerate() {
            keys[base + i * KEY_GROUP] = x;
        }
    }
}

/// Keys (grouped, as in [`KvBlock`]), values and the number of positions of some positions
/// of one layer.
struct Segment<'a> {
    k: &'a [f32],
    v: &'a [f32],
    len: usize,
}

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

    fn reserve(&mut self, cfg: &Config, new: usize) {
        let tail = &mut self.tail;
        tail.k.resize_with(cfg.layers, Vec::new);
        tail.v.resize_with(cfg.layers, Vec::new);
        for buf in tail.k.iter_mut().chain(tail.v.iter_mut()) {
            buf.reserve(new * cfg.kv_dim());
        }
    }

    /// Layer `l`'s positions, block by block; the tail's rows run in this pass included.
    fn segments(&self, l: usize, kv_dim: usize) -> Vec<Segment<'_>> {
        self.frozen
            .iter()
            .map(|b| b.as_ref())
            .chain(std::iter::once(&self.tail))
            .filter(|b| !b.v.is_empty())
            .map(|b| Segment {
                k: &b.k[l],
                v: &b.v[l],
                len: b.v[l].len() / kv_dim,
            })
            .collect()
    }
}

/// The inner loops of attention, written in lanes of [`KEY_GROUP`] so they vectorize,
/// compiled for AVX512 or AVX2 when the CPU has it (the crate is built for baseline x86-64).
mod kernels {
    use std::cell::RefCell;

    use super::{Config, Segment, KEY_GROUP};

    /// Independent partial sums per score: enough to keep the multiply-add units busy.
    const CHAINS: usize = 4;

    thread_local! {
        /// Attention scores of one row's heads, reused across calls.
        static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    }

    /// Softmax attention of the query heads sharing key/value head `kv_head` (`queries`, one
    /// after another) over the first `keys` positions of `segments`; the results go to
    /// `out` in the same layout. Always the same operations in the same order for the same
    /// inputs, whatever rows or sequences are computed beside it.
    pub fn attend(
        queries: &[f32],
        segments: &[Segment<'_>],
        keys: usize,
        kv_head: usize,
        cfg: &Config,
        out: &mut [f32],
    ) {
        // `attend_lanes` compiled again for a wider instruction set, run where the CPU has it.
        #[cfg(target_arch = "x86_64")]
        macro_rules! attend_with {
            ($feature:tt) => {
                if std::is_x86_feature_detected!($feature) {
                    #[target_feature(enable = $feature)]
                    unsafe fn wide(
                        q: &[f32],
                        s: &[Segment<'_>],
                        keys: usize,
                        kv: usize,
                        cfg: &Config,
                        out: &mut [f32],
                    ) {
                        attend_lanes(q, s, keys, kv, cfg, out)
                    }
                    // SAFETY: support for the feature was checked just above.
                    return unsafe { wide(queries, segments, keys, kv_head, cfg, out) };
                }
            };
        }
        #[cfg(target_arch = "x86_64")]
        {
            attend_with!("avx512f");
            attend_with!("avx2");
        }
        attend_lanes(queries, segments, keys, kv_head, cfg, out)
    }

    #[inline(always)]
    fn attend_lanes(
        queries: &[f32],
        segments: &[Segment<'_>],
        keys: usize,
        kv_head: usize,
        cfg: &Config,
        out: &mut [f32],
    ) {
        let hd = cfg.head_dim;
        let heads = queries.len() / hd;
        let scale = (hd as f32).sqrt();
        let stride = cfg.kv_dim();
        SCORES.with(|scores| {
            let mut scores = scores.borrow_mut();
            scores.clear();
            scores.resize(heads * keys, 0.0);
            // Scores, 16 keys at a time, as [head][position].
            let mut pos = 0;
            for seg in segments {
                for (g, block) in seg.k.chunks_exact(stride * KEY_GROUP).enumerate() {
                    let first = pos + g * KEY_GROUP;
                    let n = KEY_GROUP
                        .min(seg.len - g * KEY_GROUP)
                        .min(keys.saturating_sub(first));
                    if n == 0 {
                        break;
                    }
                    let block = &block[kv_head * hd * KEY_GROUP..(kv_head + 1) * hd * KEY_GROUP];
                    for (h, q) in queries.chunks_exact(hd).enumerate() {
                        let s = dot_group(q, block);
                        let dst = &mut scores[h * keys + first..h * keys + first + n];
                        for (d, v) in dst.iter_mut().zip(s) {
                            *d = v / scale;
                        }
                    }
                }
                pos += seg.len;
            }
            // Softmax per head, then the weighted sum of values.
            let mut sums = vec![0f32; heads];
            for (h, row) in scores.chunks_exact_mut(keys).enumerate() {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for x in row.iter_mut() {
                    *x = (*x - max).exp();
                    sums[h] += *x;
                }
            }
            out.fill(0.0);
            let mut pos = 0;
            for seg in segments {
                let take = seg.len.min(keys.saturating_sub(pos));
                for (j, value) in seg.v.chunks_exact(stride).take(take).enumerate() {
                    let value = &value[kv_head * hd..(kv_head + 1) * hd];
                    for (h, o) in out.chunks_exact_mut(hd).enumerate() {
                        let w = scores[h * keys + pos + j] / sums[h];
                        for (o, x) in o.iter_mut().zip(value) {
                            *o += w * x;
                        }
                    }
                }
                pos += seg.len;
            }
        });
    }

    /// Scores of one query head against 16 keys stored `[dimension][position]`.
    #[inline(always)]
    fn dot_group(q: &[f32], block: &[f32]) -> [f32; KEY_GROUP] {
        let mut acc = [[0f32; KEY_GROUP]; CHAINS];
        for (qs, ks) in q
            .chunks_exact(CHAINS)
            .zip(block.chunks_exact(CHAINS * KEY_GROUP))
        {
            for c in 0..CHAINS {
                let k = &ks[c * KEY_GROUP..(c + 1) * KEY_GROUP];
                for l in 0..KEY_GROUP {
                    acc[c][l] += qs[c] * k[l];
                }
            }
        }
        let mut s = [0f32; KEY_GROUP];
        for l in 0..KEY_GROUP {
            s[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
        }
        s
    }
}

/// f32 logits of row `i` as a vector tensor (what the samplers take).
pub fn logits_row(logits: &Tensor, i: usize) -> Result<Tensor> {
    logits.get(i)?.to_dtype(DType::F32)
}
