//! Named tensors of a converted checkpoint, checked for shape as the model takes them:
//! shared by the encoder ([`super::model`]) and the decoder ([`super::decoder`]).

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{LayerNorm, Linear};

pub(super) struct Weights<'a>(pub(super) &'a HashMap<String, Tensor>);

impl Weights<'_> {
    pub(super) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .0
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
        if t.dims() != shape {
            candle_core::bail!("tensor {name}: shape {:?}, expected {shape:?}", t.dims());
        }
        Ok(t.clone())
    }

    pub(super) fn linear(&self, p: &str, n_in: usize, n_out: usize) -> Result<Linear> {
        let w = self.get(&format!("{p}.weight"), &[n_out, n_in])?;
        let b = self.get(&format!("{p}.bias"), &[n_out])?;
        Ok(Linear::new(w, Some(b)))
    }

    pub(super) fn layer_norm(&self, p: &str, d: usize) -> Result<LayerNorm> {
        let w = self.get(&format!("{p}.weight"), &[d])?;
        let b = self.get(&format!("{p}.bias"), &[d])?;
        Ok(LayerNorm::new(w, b, 1e-5))
    }

    /// q|k|v (or k|v) stacked into one linear; k has no bias in Whisper, hence zeros.
    /// Scaling q by 1/sqrt(head_dim) here saves a pass over the scores at run time.
    pub(super) fn fused(&self, p: &str, parts: &[&str], d: usize, q_scale: f64) -> Result<Linear> {
        let mut ws = Vec::with_capacity(parts.len());
        let mut bs = Vec::with_capacity(parts.len());
        for part in parts {
            let w = self.get(&format!("{p}.{part}.weight"), &[d, d])?;
            let b = match *part {
                "k_proj" => Tensor::zeros(d, DType::F32, &Device::Cpu)?,
                _ => self.get(&format!("{p}.{part}.bias"), &[d])?,
            };
            let s = if *part == "q_proj" { q_scale } else { 1.0 };
            ws.push((w * s)?);
            bs.push((b * s)?);
        }
        Ok(Linear::new(
            Tensor::cat(&ws, 0)?,
            Some(Tensor::cat(&bs, 0)?),
        ))
    }

    pub(super) fn scaled_linear(&self, p: &str, d: usize, scale: f64) -> Result<Linear> {
        let l = self.linear(p, d, d)?;
        Ok(Linear::new(
            (l.weight() * scale)?,
            Some((l.bias().unwrap() * scale)?),
        ))
    }
}
