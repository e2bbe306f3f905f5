//! Int8 weight matrices for the decoder step, which multiplies one token's vector by every
//! weight matrix: bound by reading weights, so a quarter of f32's bytes is most of the speed.
//!
//! Lossless: Moonshine's weights *are* int8 (one scale and zero point per tensor, as shipped in
//! moonshine-cpp); the converter writes them out as fp32 plus `quantization.json`, and
//! [`I8Matrix::from_affine`] takes the int8 values back, checking bit for bit that
//! `q * scale + zero_point` gives every fp32 weight again.
//!
//! With w = q s + z per row, W x = s (Q x) + z Σx: one int8 dot product per row. Where the
//! CPU has one of [`crate::q8`]'s integer kernels ([`I8Matrix::pack`]), x is rounded to int8
//! per 32 values too and Q x runs in integers; elsewhere Q is widened to f32 against x.

use candle_core::{Result, Tensor};

use crate::q8::{self, PackedQ8};
use crate::vecmath::{dot_widened, matmul_by_rows};

/// Row-major int8 matrix with one scale and zero point per row (rows of several source
/// tensors can be stacked, e.g. q|k|v, each keeping its own).
pub struct I8Matrix {
    cols: usize,
    /// The codes, row-major; emptied once [`I8Matrix::pack`] holds them as tiles.
    data: Vec<i8>,
    scale: Vec<f32>,
    zero: Vec<f32>,
    /// The same codes as [`crate::q8`] tiles, once [`I8Matrix::pack`] found the CPU for them.
    packed: Option<PackedQ8>,
}

/// Below this many weights a product runs on the calling thread: handing it to the
/// pool costs more than it saves.
const PAR_MIN_ELEMS: usize = 1 << 19;

impl I8Matrix {
    /// From a (rows, cols) fp32 tensor that is `q * scale + zero` for int8 q, with the result
    /// multiplied by `factor` (e.g. an attention scale). Fails if any weight is not exactly
    /// such a value: then the weights are not what the converter wrote.
    pub fn from_affine(t: &Tensor, scale: f32, zero: f32, factor: f32) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        let w: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let mut data = Vec::with_capacity(w.len());
        for (i, &v) in w.iter().enumerate() {
            let q = ((v - zero) / scale).round();
            if !(-128.0..=127.0).contains(&q) || (q * scale + zero).to_bits() != v.to_bits() {
                candle_core::bail!(
                    "weight {i} = {v} is not int8 * {scale} + {zero}: the model files do not match quantization.json"
                );
            }
            data.push(q as i8);
        }
        Ok(Self {
            cols,
            data,
            scale: vec![scale * factor; rows],
            zero: vec![zero * factor; rows],
            packed: None,
        })
    }

    /// Rows of `parts` one after another (all with the same number of columns).
    pub fn stack(parts: Vec<Self>) -> Self {
        let cols = parts[0].cols;
        let mut m = Self {
            cols,
            data: Vec::new(),
            scale: Vec::new(),
            zero: Vec::new(),
            packed: None,
        };
        for p in parts {
            assert_eq!(p.cols, cols, "stacked matrices need equal widths");
            m.data.extend(p.data);
            m.scale.extend(p.scale);
            m.zero.extend(p.zero);
        }
        m
    }

    /// Repacked for [`crate::q8`]'s integer kernels where the CPU has one (AVX2 or
    /// AVX512-VNNI): activations are then quantized per 32 values (to ~1/254 of each block's
    /// largest) and the product runs on int8 codes instead of widening every weight to f32.
    /// Elsewhere, or for shapes that are not whole tiles, unchanged.
    pub fn pack(mut self) -> Self {
        self.packed = PackedQ8::from_rows(&self.data, &self.scale, self.cols);
        if self.packed.is_some() {
            self.data = Vec::new();
        }
        self
    }

    pub fn rows(&self) -> usize {
        self.scale.len()
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `i` as f32 (a token's embedding).
    pub fn row_f32(&self, i: usize) -> Vec<f32> {
        let (s, z) = (self.scale[i], self.zero[i]);
        let value = |q: i8| q as f32 * s + z;
        match &self.packed {
            Some(p) => (0..self.cols).map(|j| value(p.code(i, j))).collect(),
            None => self.data[i * self.cols..(i + 1) * self.cols]
                .iter()
                .map(|&q| value(q))
                .collect(),
        }
    }

    /// X Wᵀ for `n` row-major vectors in `xs`; the result is (n, rows), row-major. Each
    /// output is computed the same way whatever `n` is, so a batch equals its rows alone.
    pub fn matmul_t(&self, xs: &[f32], n: usize) -> Vec<f32> {
        let (rows, cols) = (self.rows(), self.cols);
        assert_eq!(xs.len(), n * cols, "matmul_t: input length");
        let sums: Vec<f32> = xs.chunks_exact(cols).map(|x| x.iter().sum()).collect();
        if let Some(p) = &self.packed {
            let acts = q8::quantize(xs, n, cols);
            let fill = |first_row: usize, o: &mut [f32]| {
                p.columns(&acts, n, first_row..first_row + o.len() / n, o);
                for (r, ys) in o.chunks_exact_mut(n).enumerate() {
                    let z = self.zero[first_row + r];
                    ys.iter_mut().zip(&sums).for_each(|(y, sum)| *y += z * sum);
                }
            };
            return matmul_by_rows(rows, n, rows * cols, PAR_MIN_ELEMS, fill);
        }
        let dots = dots_i8_fn(cols);
        let fill = |first_row: usize, o: &mut [f32]| {
            let w = &self.data[first_row * cols..];
            for (r, ys) in o.chunks_exact_mut(n).enumerate() {
                let row = &w[r * cols..(r + 1) * cols];
                let (s, z) = (self.scale[first_row + r], self.zero[first_row + r]);
                dots(xs, row, ys);
                for (y, sum) in ys.iter_mut().zip(&sums) {
                    *y = s * *y + z * sum;
                }
            }
        };
        matmul_by_rows(rows, n, rows * cols, PAR_MIN_ELEMS, fill)
    }
}

/// The dot products of one weight row `w` with each row of `xs` (as wide as `w`), into `out`.
type DotsI8 = fn(xs: &[f32], w: &[i8], out: &mut [f32]);

fn dots_i8_fn(n: usize) -> DotsI8 {
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(32) && std::is_x86_feature_detected!("avx512f") {
        return |xs, w, out| {
            // SAFETY: AVX-512F was detected, and the width is a multiple of 32.
            unsafe { dots_i8_avx512(xs, w, out) }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(16)
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
    {
        return |xs, w, out| {
            // SAFETY: AVX2 and FMA were detected, and the width is a multiple of 16.
            unsafe { dots_i8_avx2(xs, w, out) }
        };
    }
    let _ = n;
    |xs, w, out| {
        for (o, x) in out.iter_mut().zip(xs.chunks_exact(w.len())) {
            *o = dot_i8_plain(x, w);
        }
    }
}

fn dot_i8_plain(x: &[f32], w: &[i8]) -> f32 {
    dot_widened(x, w, f32::from)
}

/// Rows of `xs` (each `cols` wide) four at a time through `four`, the rest one at a time
/// through `one`, into `out`: each kernel takes a row's sums in one order whatever `R`, so a
/// row's result does not depend on its batch.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn in_fours(
    xs: &[f32],
    cols: usize,
    out: &mut [f32],
    mut four: impl FnMut(&[f32], &mut [f32; 4]),
    mut one: impl FnMut(&[f32], &mut [f32; 1]),
) {
    let whole = out.len() / 4 * 4;
    let (fours, rest) = out.split_at_mut(whole);
    for (k, o) in fours.chunks_exact_mut(4).enumerate() {
        four(&xs[4 * k * cols..], o.try_into().expect("four"));
    }
    for (k, o) in rest.iter_mut().enumerate() {
        one(&xs[(whole + k) * cols..], std::array::from_mut(o));
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA, and `x.len() == w.len()` must be a multiple of 16.
/// Four rows at a time share each widening of the weights (the costly part of the int8
/// dot product, and what a beam's hypotheses have in common).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_i8_avx2(xs: &[f32], w: &[i8], out: &mut [f32]) {
    in_fours(
        xs,
        w.len(),
        out,
        // SAFETY: this function's own contract.
        |x, o| unsafe { rows_i8_avx2::<4>(x, w, o) },
        |x, o| unsafe { rows_i8_avx2::<1>(x, w, o) },
    );
}

/// The dot products of `w` with the `R` rows at the start of `xs`, 16 weights a step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_i8_avx2<const R: usize>(xs: &[f32], w: &[i8], out: &mut [f32; R]) {
    use std::arch::x86_64::*;
    let cols = w.len();
    let xp: [*const f32; R] = std::array::from_fn(|j| xs[j * cols..(j + 1) * cols].as_ptr());
    let wp = w.as_ptr();
    let mut a0 = [_mm256_setzero_ps(); R];
    let mut a1 = [_mm256_setzero_ps(); R];
    for i in (0..cols).step_by(16) {
        let w16 = _mm_loadu_si128(wp.add(i).cast());
        let w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(w16));
        let w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(w16, 8)));
        for j in 0..R {
            a0[j] = _mm256_fmadd_ps(_mm256_loadu_ps(xp[j].add(i)), w0, a0[j]);
            a1[j] = _mm256_fmadd_ps(_mm256_loadu_ps(xp[j].add(i + 8)), w1, a1[j]);
        }
    }
    for j in 0..R {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(a0[j], a1[j]));
        out[j] = lanes.iter().sum();
    }
}

/// # Safety
/// The CPU must support AVX-512F, and `x.len() == w.len()` must be a multiple of 32.
/// [`dots_i8_avx2`] at twice the width.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_i8_avx512(xs: &[f32], w: &[i8], out: &mut [f32]) {
    in_fours(
        xs,
        w.len(),
        out,
        // SAFETY: this function's own contract.
        |x, o| unsafe { rows_i8_avx512::<4>(x, w, o) },
        |x, o| unsafe { rows_i8_avx512::<1>(x, w, o) },
    );
}

/// The dot products of `w` with the `R` rows at the start of `xs`, 32 weights a step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_i8_avx512<const R: usize>(xs: &[f32], w: &[i8], out: &mut [f32; R]) {
    use std::arch::x86_64::*;
    let cols = w.len();
    let xp: [*const f32; R] = std::array::from_fn(|j| xs[j * cols..(j + 1) * cols].as_ptr());
    let wp = w.as_ptr();
    let mut a0 = [_mm512_setzero_ps(); R];
    let mut a1 = [_mm512_setzero_ps(); R];
    for i in (0..cols).step_by(32) {
        let w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(wp.add(i).cast())));
        let w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(wp.add(i + 16).cast())));
        for j in 0..R {
            a0[j] = _mm512_fmadd_ps(_mm512_loadu_ps(xp[j].add(i)), w0, a0[j]);
            a1[j] = _mm512_fmadd_ps(_mm512_loadu_ps(xp[j].add(i + 16)), w1, a1[j]);
        }
    }
    for j in 0..R {
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_add_ps(a0[j], a1[j]));
        out[j] = lanes.iter().sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A (rows, cols) fp32 tensor built as the converter builds them: q * scale + zero.
    fn affine(rows: usize, cols: usize, scale: f32, zero: f32) -> (Tensor, Vec<i8>) {
        let q: Vec<i8> = (0..rows * cols)
            .map(|i| ((i * 7919 + 13) % 256) as u8 as i8)
            .collect();
        let w: Vec<f32> = q.iter().map(|&q| q as f32 * scale + zero).collect();
        (Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap(), q)
    }

    #[test]
    fn recovers_int8_and_multiplies_like_f32() {
        // Whole tiles of 16 rows take crate::q8's kernels where the CPU has one; 900 and 33
        // rows keep the f32 path.
        for (rows, cols, n) in [
            (704, 416, 1),
            (1296, 416, 3),
            (900, 416, 4),
            (496, 416, 6),
            (33, 40, 2),
            (33, 40, 5),
        ] {
            let (w, q) = affine(rows, cols, 0.0123, 0.0246);
            let m = I8Matrix::from_affine(&w, 0.0123, 0.0246, 0.5).unwrap();
            assert_eq!(m.data, q);
            let m = m.pack();
            // Packed or not, a row reads back as its weights (factor 0.5 rounds nothing).
            let last: Vec<f32> = (w.get(rows - 1).unwrap() * 0.5).unwrap().to_vec1().unwrap();
            assert_eq!(m.row_f32(rows - 1), last);
            let x = Tensor::randn(0f32, 1.0, (n, cols), &Device::Cpu).unwrap();
            let want: Vec<f32> = (x.matmul(&w.t().unwrap()).unwrap() * 0.5)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let got = m.matmul_t(&xs, n);
            let err = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // The integer kernels also round the activations, to 1/254 of each 32-value
            // block's largest (their exact arithmetic is crate::q8's own test).
            let largest = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let bound = match m.packed.is_some() {
                true => 0.02 * largest,
                false => 1e-3,
            };
            println!("{rows}x{cols}, n={n}: error {err:.2e} of {largest:.1}");
            assert!(
                err < bound,
                "{rows}x{cols}, n={n}: error {err} of {largest}"
            );
            // A batch gives exactly what its rows give alone.
            for (i, x) in xs.chunks_exact(cols).enumerate() {
                assert_eq!(m.matmul_t(x, 1), got[i * rows..(i + 1) * rows]);
            }
        }
    }

    #[test]
    fn rejects_weights_that_are_not_on_the_grid() {
        let (w, _) = affine(4, 16, 0.5, 0.25);
        assert!(I8Matrix::from_affine(&w, 0.5, 0.25, 1.0).is_ok());
        let err = I8Matrix::from_affine(&w, 0.4, 0.25, 1.0).err().unwrap();
        assert!(err.to_string().contains("quantization.json"), "{err}");
        let off = (w + 1e-3).unwrap();
        assert!(I8Matrix::from_affine(&off, 0.5, 0.25, 1.0).is_err());
    }

    #[test]
    fn stacked_rows_keep_their_own_scales() {
        let (a, _) = affine(3, 16, 0.5, 0.25);
        let (b, _) = affine(2, 16, 0.125, -1.0);
        let m = I8Matrix::stack(vec![
            I8Matrix::from_affine(&a, 0.5, 0.25, 1.0).unwrap(),
            I8Matrix::from_affine(&b, 0.125, -1.0, 1.0).unwrap(),
        ]);
        assert_eq!(m.rows(), 5);
        let b_rows: Vec<Vec<f32>> = b.to_vec2().unwrap();
        assert_eq!(m.row_f32(4), b_rows[1]);
    }
}
