//! In-place CPU kernels for the two element-wise hot spots of the encoder, where
//! candle's scalar `exp`/`erf` cost more than the matmuls around them on a 30 s window:
//! softmax over the last dimension and exact (erf) GELU.
//!
//! Both are written as fixed-width lane loops so the compiler vectorizes them even
//! without target-specific flags, and split across rayon's pool by rows.
//!
//! Plus [`F16Matrix`] for the decoder, which multiplies one token's vector by every
//! weight matrix each step: bound by memory bandwidth, so f16 weights (as CTranslate2
//! stored them, hence lossless) halve the bytes read.

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::vecmath::matmul_by_rows;

/// Elements per rayon task: big enough to amortize scheduling, small enough to balance 2+ cores.
const TASK_ELEMS: usize = 1 << 15;
const LANES: usize = 8;

/// exp(x) for x <= 88, relative error about 2e-7: 2^k * p(r) with r in [-ln2/2, ln2/2].
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer using only adds.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((k as i32 + 127) as u32) << 23)
}

/// erf with absolute error below 2e-7 (Abramowitz & Stegun 7.1.26 plus `fast_exp`).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    (1.0 - poly * fast_exp(-z * z)).copysign(x)
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    rest.iter()
        .chain(&m)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Runs `$body` compiled for AVX-512F or AVX2 when the CPU has it (16 or 8 lanes instead of
/// SSE2's 4); the crate is built for baseline x86-64, so this must be chosen at run time.
macro_rules! with_wide_lanes {
    ($name:ident, $body:ident) => {
        with_wide_lanes!($name, $body, "avx512f", "avx2");
    };
    ($name:ident, $body:ident, $($feature:tt),+) => {
        pub fn $name(xs: &mut [f32]) {
            $(
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!($feature) {
                    #[target_feature(enable = $feature)]
                    unsafe fn wide(xs: &mut [f32]) {
                        $body(xs)
                    }
                    // SAFETY: support for the feature was checked just above.
                    return unsafe { wide(xs) };
                }
            )+
            $body(xs)
        }
    };
}

with_wide_lanes!(softmax_slice, softmax_row_body);
with_wide_lanes!(gelu_slice, gelu_slice_body);

#[inline(always)]
fn softmax_row_body(row: &mut [f32]) {
    let max = row_max(row);
    let mut s = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = fast_exp(c[i] - max);
            s[i] += c[i];
        }
    }
    let mut sum: f32 = s.iter().sum();
    for v in chunks.into_remainder() {
        *v = fast_exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[inline(always)]
fn gelu_slice_body(xs: &mut [f32]) {
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    for v in xs.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * FRAC_1_SQRT_2));
    }
}

/// The tensor's own f32 buffer, if it is contiguous (the ops below require it).
fn contiguous_f32<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 is supported");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: tensor must be contiguous");
    };
    Ok(&mut data[start..end])
}

struct SoftmaxLastDim;

impl InplaceOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let n = *layout.dims().last().unwrap_or(&1);
        let data = contiguous_f32(storage, layout, self.name())?;
        if data.len() <= TASK_ELEMS {
            // Handing a decoder step's few rows to the pool costs more than doing them.
            data.chunks_exact_mut(n).for_each(softmax_slice);
            return Ok(());
        }
        let rows_per_task = (TASK_ELEMS / n.max(1)).max(1);
        data.par_chunks_mut(n * rows_per_task)
            .for_each(|rows| rows.chunks_exact_mut(n).for_each(softmax_slice));
        Ok(())
    }
}

struct GeluErf;

impl InplaceOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let data = contiguous_f32(storage, layout, self.name())?;
        if data.len() <= TASK_ELEMS {
            gelu_slice(data);
            return Ok(());
        }
        data.par_chunks_mut(TASK_ELEMS).for_each(gelu_slice);
        Ok(())
    }
}

/// Softmax over the last dimension, overwriting `x`. `x` must be a fresh, unshared result.
pub fn softmax_last_dim_(x: Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.inplace_op1(&SoftmaxLastDim)?;
    Ok(x)
}

/// Exact GELU, overwriting `x`. `x` must be a fresh, unshared result.
pub fn gelu_erf_(x: Tensor) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.inplace_op1(&GeluErf)?;
    Ok(x)
}

/// A row-major matrix kept in f16, multiplied by f32 vectors with f32 accumulation.
pub struct F16Matrix {
    cols: usize,
    data: Vec<f16>,
}

/// Below this many weights a product runs on the calling thread: handing it to the
/// pool costs more than it saves.
const PAR_MIN_ELEMS: usize = 1 << 18;

impl F16Matrix {
    /// From a (rows, cols) float tensor; exact when its values came from f16.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (_, cols) = t.dims2()?;
        let data = t.to_dtype(DType::F16)?.flatten_all()?.to_vec1::<f16>()?;
        Ok(Self { cols, data })
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.cols
    }

    /// Row `i` widened to f32 (e.g. a token's embedding).
    pub fn row_f32(&self, i: usize) -> Vec<f32> {
        let row = &self.data[i * self.cols..(i + 1) * self.cols];
        row.iter().map(|v| v.to_f32()).collect()
    }

    /// W x for one vector x.
    pub fn matvec(&self, x: &[f32]) -> Vec<f32> {
        self.matmul_t(x, 1)
    }

    /// X Wᵀ for `n` row-major vectors in `xs`; the result is (n, rows), row-major.
    /// Each weight row is read once for all n vectors.
    pub fn matmul_t(&self, xs: &[f32], n: usize) -> Vec<f32> {
        let (rows, cols) = (self.rows(), self.cols);
        assert_eq!(xs.len(), n * cols, "matmul_t: input length");
        let dot = dot_f16_fn(cols);
        let fill = |first_row: usize, o: &mut [f32]| {
            let w = &self.data[first_row * cols..];
            for (ys, row) in o.chunks_exact_mut(n).zip(w.chunks_exact(cols)) {
                for (y, x) in ys.iter_mut().zip(xs.chunks_exact(cols)) {
                    *y = dot(x, row);
                }
            }
        };
        matmul_by_rows(rows, n, self.data.len(), PAR_MIN_ELEMS, fill)
    }
}

type DotF16 = fn(&[f32], &[f16]) -> f32;

/// The fastest dot product this CPU supports for rows of `n` elements.
fn dot_f16_fn(n: usize) -> DotF16 {
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(16)
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        return |x, w| {
            // SAFETY: the features were detected above and the length is a multiple of 16.
            unsafe { dot_f16_avx2(x, w) }
        };
    }
    let _ = n;
    |x, w| x.iter().zip(w).map(|(a, b)| a * b.to_f32()).sum()
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `x.len() == w.len()` must be a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(x: &[f32], w: &[f16]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert!(x.len() == w.len() && x.len().is_multiple_of(16));
    let (xp, wp) = (x.as_ptr(), w.as_ptr() as *const u16);
    let mut a0 = _mm256_setzero_ps();
    let mut a1 = _mm256_setzero_ps();
    for i in (0..x.len()).step_by(16) {
        let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i) as *const __m128i));
        let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i + 8) as *const __m128i));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), w0, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i + 8)), w1, a1);
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0, a1));
    lanes.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fast_exp_is_accurate() {
        for i in -870..=880 {
            let x = i as f32 / 10.0;
            let (got, want) = (fast_exp(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 5e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert!(fast_exp(f32::NEG_INFINITY) < 1e-37);
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn kernels_match_candle() {
        let x = Tensor::randn(0f32, 3.0, (7, 133), &Device::Cpu).unwrap();
        let want = candle_nn::ops::softmax_last_dim(&x).unwrap();
        let got = softmax_last_dim_(x.copy().unwrap()).unwrap();
        let err = max_abs_diff(&want, &got);
        assert!(err < 1e-6, "softmax error {err}");
        let want = x.gelu_erf().unwrap();
        let got = gelu_erf_(x.copy().unwrap()).unwrap();
        let err = max_abs_diff(&want, &got);
        assert!(err < 2e-6, "gelu error {err}");
    }

    #[test]
    fn f16_matmul_t_matches_f32_matmul() {
        for (rows, n) in [(1536, 3), (300, 2)] {
            let w = Tensor::randn(0f32, 1.0, (rows, 384), &Device::Cpu).unwrap();
            let w = w
                .to_dtype(DType::F16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let x = Tensor::randn(0f32, 1.0, (n, 384), &Device::Cpu).unwrap();
            let want: Vec<f32> = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let got = F16Matrix::from_tensor(&w).unwrap().matmul_t(&xs, n);
            let err = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-3, "matmul_t error {err}");
        }
    }

    #[test]
    fn f16_matvec_matches_f32_matmul() {
        let w = Tensor::randn(0f32, 1.0, (5000, 384), &Device::Cpu).unwrap();
        let w = w
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 384), &Device::Cpu).unwrap();
        let want: Vec<f32> = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = F16Matrix::from_tensor(&w)
            .unwrap()
            .matvec(&x.squeeze(0).unwrap().to_vec1().unwrap());
        let err = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-3, "matvec error {err}");
    }
}
