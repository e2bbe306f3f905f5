//! Moonshine's text decoder in candle ops, on any device: pre-norm layers of causal
//! self-attention (partial rotary), cross-attention over the audio features and a SwiGLU
//! MLP; logits from the tied token embedding. Keys and values are cached: the audio's
//! once per utterance, the tokens' as they are fed.
//!
//! On the CPU [`super::step::CpuDecoder`] runs the same computation without a tensor
//! framework in the loop (faster for one token per step); this one is its oracle in tests
//! and the path on other devices.

use candle_core::{Device, Result, Tensor, D};
use candle_nn::{Linear, Module};

use super::ops::{self, Config, Norm, Rope, Weights};

#[derive(Clone)]
pub struct Layer {
    pub self_norm: Norm,
    /// q|k|v (3d, d), q pre-scaled by 1/sqrt(head_dim).
    pub qkv: Tensor,
    pub self_o: Tensor,
    pub cross_norm: Norm,
    /// Pre-scaled like `qkv`'s q.
    pub cross_q: Tensor,
    /// k|v (2d, d), applied once per utterance to the audio features.
    pub cross_kv: Tensor,
    pub cross_o: Tensor,
    pub mlp_norm: Norm,
    /// (2 * ff, d): the first ff outputs are the value, the last ff the gate.
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Layer {
    fn load(w: &Weights, p: &str, cfg: &Config) -> Result<Self> {
        let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let scale = (cfg.head_dim() as f64).powf(-0.5);
        let (sa, ca) = (format!("{p}.self_attn"), format!("{p}.encoder_attn"));
        Ok(Self {
            self_norm: w.norm(&format!("{p}.input_layernorm"), d)?,
            qkv: w.stacked(
                &sa,
                &[("q_proj", scale), ("k_proj", 1.0), ("v_proj", 1.0)],
                d,
            )?,
            self_o: w.get(&format!("{sa}.o_proj.weight"), &[d, d])?,
            cross_norm: w.norm(&format!("{p}.post_attention_layernorm"), d)?,
            cross_q: w.stacked(&ca, &[("q_proj", scale)], d)?,
            cross_kv: w.stacked(&ca, &[("k_proj", 1.0), ("v_proj", 1.0)], d)?,
            cross_o: w.get(&format!("{ca}.o_proj.weight"), &[d, d])?,
            mlp_norm: w.norm(&format!("{p}.final_layernorm"), d)?,
            fc1: w.linear(&format!("{p}.mlp.fc1"), d, 2 * ff, true)?,
            fc2: w.linear(&format!("{p}.mlp.fc2"), ff, d, true)?,
        })
    }
}

/// Per-utterance state: each layer's cross-attention k/v (1, heads, frames, hd) and the
/// self-attention k/v of the tokens fed so far.
#[derive(Clone)]
pub struct State {
    cross: Vec<(Tensor, Tensor)>,
    cache: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl State {
    /// Tokens fed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Clone)]
pub struct Decoder {
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Norm,
    pub rope: Rope,
    pub n_head: usize,
    pub d: usize,
}

impl Decoder {
    pub fn load(w: &Weights, cfg: &Config, device: &Device) -> Result<Self> {
        let d = cfg.hidden_size;
        let layers = (0..cfg.decoder_num_hidden_layers)
            .map(|i| Layer::load(w, &format!("model.decoder.layers.{i}"), cfg))
            .collect::<Result<_>>()?;
        Ok(Self {
            embed: w.get("model.decoder.embed_tokens.weight", &[cfg.vocab_size, d])?,
            layers,
            norm: w.norm("model.decoder.norm", d)?,
            rope: Rope::new(cfg, device)?,
            n_head: cfg.decoder_num_attention_heads,
            d,
        })
    }

    /// Projects the audio features (frames, d) once for every layer's cross-attention.
    pub fn start(&self, audio: &Tensor) -> Result<State> {
        let cross = self
            .layers
            .iter()
            .map(|l| {
                let kv = ops::matmul_t(audio, &l.cross_kv)?;
                let k = ops::split_heads(&kv.narrow(1, 0, self.d)?, self.n_head)?;
                let v = ops::split_heads(&kv.narrow(1, self.d, self.d)?, self.n_head)?;
                Ok((k, v))
            })
            .collect::<Result<_>>()?;
        Ok(State {
            cross,
            cache: vec![None; self.layers.len()],
            len: 0,
        })
    }

    /// Feeds `tokens` after those already in `state`; returns their logits (n, vocab).
    pub fn forward(&self, state: &mut State, tokens: &[u32]) -> Result<Tensor> {
        let n = tokens.len();
        let ids = Tensor::new(tokens, self.embed.device())?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let mask = causal_mask(n, state.len, x.device())?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer(layer, &x, state, i, mask.as_ref())?;
        }
        state.len += n;
        ops::matmul_t(&self.norm.forward(&x)?, &self.embed)
    }

    fn layer(
        &self,
        l: &Layer,
        x: &Tensor,
        state: &mut State,
        i: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let d = self.d;
        let qkv = ops::matmul_t(&l.self_norm.forward(x)?, &l.qkv)?;
        let part = |j| ops::split_heads(&qkv.narrow(1, j * d, d)?, self.n_head);
        let q = self.rope.apply(&part(0)?, state.len)?;
        let mut k = self.rope.apply(&part(1)?, state.len)?;
        let mut v = part(2)?;
        if let Some((pk, pv)) = &state.cache[i] {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        let a = ops::attention(&q, &k, &v, mask)?;
        state.cache[i] = Some((k, v));
        let x = (x + ops::matmul_t(&a, &l.self_o)?)?;

        let q = ops::split_heads(
            &ops::matmul_t(&l.cross_norm.forward(&x)?, &l.cross_q)?,
            self.n_head,
        )?;
        let (ck, cv) = &state.cross[i];
        let a = ops::attention(&q, ck, cv, None)?;
        let x = (x + ops::matmul_t(&a, &l.cross_o)?)?;

        let h = l.fc1.forward(&l.mlp_norm.forward(&x)?)?;
        let ff = h.dim(D::Minus1)? / 2;
        let h =
            (candle_nn::ops::silu(&h.narrow(D::Minus1, ff, ff)?)? * h.narrow(D::Minus1, 0, ff)?)?;
        x + l.fc2.forward(&h)?
    }
}

/// -inf above the diagonal for `n` new tokens after `past` cached ones; none for one token.
fn causal_mask(n: usize, past: usize, device: &Device) -> Result<Option<Tensor>> {
    if n == 1 {
        return Ok(None);
    }
    let m: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..past + n).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    Ok(Some(Tensor::from_vec(m, (n, past + n), device)?))
}
