//! Loading the GGUF weights, with Q4_1 matrices re-encoded as Q8_0 on the way in.
//!
//! candle 0.11 has no SIMD kernel for Q4_1 on x86 (its `vec_dot` is the generic scalar loop),
//! while Q8_0 has AVX2 ones. A Q4_1 value is `d * q + m` with a 4-bit `q`; storing it as Q8_0
//! (per 32 values: one scale, 8-bit codes) keeps it to within 1/254 of the block's largest
//! magnitude, far below the 4-bit step already there. Measured with `examples/reply.rs
//! [--as-shipped]` on one thread of the 2-core box: prefill ~4x and decode ~3x faster
//! (~30 vs ~10 tokens/s). The price is 8.5 instead of 5 bits per weight (+50 MiB RSS).
//!
//! [`tensors`] hands the tensors to the project's own forward ([`super::llama`]);
//! [`model_weights`] builds candle's `quantized_llama::ModelWeights` from the same tensors
//! (kept as the reference the own forward is checked against). `ModelWeights::from_gguf`
//! reads tensors through `Content`, so they are handed to it as an in-memory GGUF body.

use std::collections::HashMap;
use std::io::{Cursor, Read, Seek};

use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result};
use candle_transformers::models::quantized_llama::ModelWeights;

/// How the shipped weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Q4_1 matrices re-encoded as Q8_0 (SIMD kernels on x86): the default.
    #[default]
    Q8_0,
    /// Exactly as shipped (Q4_1 matrices): smaller, much slower on x86 CPUs.
    AsShipped,
}

/// Every tensor of the GGUF whose header `ct` was read from `reader`, by name.
pub fn tensors<R: Read + Seek>(
    ct: &Content,
    reader: &mut R,
    device: &Device,
    format: WeightFormat,
) -> Result<HashMap<String, QTensor>> {
    let mut out = HashMap::with_capacity(ct.tensor_infos.len());
    for (name, info) in &ct.tensor_infos {
        let q = info.read(reader, ct.tensor_data_offset, device)?;
        out.insert(name.clone(), reencoded(q, device, format)?);
    }
    Ok(out)
}

fn reencoded(q: QTensor, device: &Device, format: WeightFormat) -> Result<QTensor> {
    match (format, q.dtype()) {
        (WeightFormat::Q8_0, GgmlDType::Q4_1) => {
            QTensor::quantize(&q.dequantize(device)?, GgmlDType::Q8_0)
        }
        _ => Ok(q),
    }
}

/// candle's model from a GGUF whose header `ct` was read from `reader`.
pub fn model_weights<R: Read + Seek>(
    ct: Content,
    reader: &mut R,
    device: &Device,
    format: WeightFormat,
) -> Result<ModelWeights> {
    match format {
        WeightFormat::AsShipped => ModelWeights::from_gguf(ct, reader, device),
        WeightFormat::Q8_0 => {
            let (ct, body) = reencode(ct, reader, device)?;
            ModelWeights::from_gguf(ct, &mut Cursor::new(body), device)
        }
    }
}

/// Every tensor read, Q4_1 ones re-encoded, all laid out in one buffer that `ct`'s tensor
/// infos now point into.
fn reencode<R: Read + Seek>(
    ct: Content,
    reader: &mut R,
    device: &Device,
) -> Result<(Content, Vec<u8>)> {
    let mut body = Vec::new();
    let mut infos = HashMap::with_capacity(ct.tensor_infos.len());
    for (name, info) in &ct.tensor_infos {
        let q = info.read(reader, ct.tensor_data_offset, device)?;
        let q = reencoded(q, device, WeightFormat::Q8_0)?;
        infos.insert(name.clone(), append(&mut body, &q)?);
    }
    let ct = Content {
        tensor_infos: infos,
        tensor_data_offset: 0,
        ..ct
    };
    Ok((ct, body))
}

fn append(body: &mut Vec<u8>, q: &QTensor) -> Result<TensorInfo> {
    let offset = body.len() as u64;
    body.extend_from_slice(&q.data()?);
    Ok(TensorInfo {
        ggml_dtype: q.dtype(),
        shape: q.shape().clone(),
        offset,
    })
}
