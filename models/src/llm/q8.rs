//! Q8_0 weights times rows of activations with AVX512-VNNI, 16 output columns at a time.
//!
//! candle's CPU kernel for Q8_0 computes one dot product per row and column, converting both
//! f16 scales of every 32-value block each time; its tiled VNNI kernel needs an inner size that
//! is a multiple of 256 and quantizes activations with one scale per 256 values, which moved
//! SmolLM2's logits by ~5 (its hidden size is 576 and its activations have outlier channels).
//! Here the weights are repacked once into tiles of 16 columns × one 32-value block (codes
//! offset to unsigned bytes, scales as f32), activations are quantized per 32 values as Q8_0
//! does, and each weight tile is loaded once for up to [`ROWS`] activation rows: several
//! sequences' tokens cost little more than one. CPUs without AVX512-VNNI keep candle's kernel.
//!
//! Per block the integer dot product is exact; scales apply in f32 with one fused
//! multiply-add per block and column, the same order for every row, so a row's result does
//! not depend on the other rows.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Result, Tensor};

/// Values per block.
const BLOCK: usize = 32;
/// Output columns per tile (one 512-bit register of f32).
const COLS: usize = 16;
/// Activation rows per unit of work: one accumulator register each.
const ROWS: usize = 8;
/// Bytes of one Q8_0 block: an f16 scale and 32 signed codes.
const Q8_0_BYTES: usize = 34;

/// One block of 32 weights for each of 16 columns.
#[repr(C, align(64))]
#[derive(Clone)]
struct Tile {
    /// Codes + 128, by groups of 4 values: `[group][column][4]`, so one register holds one
    /// group for all 16 columns.
    qs: [u8; BLOCK * COLS],
    scale: [f32; COLS],
}

/// A Q8_0 matrix `(n, k)` repacked into tiles, column tile major.
pub struct PackedQ8 {
    n: usize,
    k: usize,
    tiles: Vec<Tile>,
}

/// One row's block of 32 activations.
#[derive(Clone, Copy)]
struct ActBlock {
    qs: [i8; BLOCK],
    scale: f32,
    /// Sum of the codes: undoes the +128 offset of the weights.
    sum: i32,
}

impl PackedQ8 {
    /// Repack `w` when this CPU has AVX512-VNNI and the shape fits (`None` otherwise).
    pub fn new(w: &QTensor) -> Result<Option<Self>> {
        let (n, k) = w.shape().dims2()?;
        if !available() || w.dtype() != GgmlDType::Q8_0 || n % COLS != 0 || k % BLOCK != 0 {
            return Ok(None);
        }
        let data = w.data()?;
        let blocks = k / BLOCK;
        let mut tiles = Vec::with_capacity(n / COLS * blocks);
        for tile_col in 0..n / COLS {
            for b in 0..blocks {
                let mut tile = Tile {
                    qs: [0; BLOCK * COLS],
                    scale: [0.0; COLS],
                };
                for c in 0..COLS {
                    let at = ((tile_col * COLS + c) * blocks + b) * Q8_0_BYTES;
                    let block = &data[at..at + Q8_0_BYTES];
                    tile.scale[c] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    for (i, &q) in block[2..].iter().enumerate() {
                        let (group, j) = (i / 4, i % 4);
                        tile.qs[(group * COLS + c) * 4 + j] = (q as i8 as i16 + 128) as u8;
                    }
                }
                tiles.push(tile);
            }
        }
        Ok(Some(Self { n, k, tiles }))
    }

    /// `x (m, k)` times this matrix transposed: `(m, n)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            candle_core::bail!("input of {k} columns for a matrix of {}", self.k);
        }
        let x: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let acts = quantize(&x, m, k);
        let mut out = vec![0f32; m * self.n];
        self.matmul(&acts, m, &mut out);
        Tensor::from_vec(out, (m, self.n), &candle_core::Device::Cpu)
    }

    fn matmul(&self, acts: &[ActBlock], m: usize, out: &mut [f32]) {
        let blocks = self.k / BLOCK;
        let tile_cols = self.n / COLS;
        let row_tiles = m.div_ceil(ROWS);
        // Units are (row tile, column tile), row tile major: a worker walking a range keeps
        // the same activations hot and streams the weights.
        let units = row_tiles * tile_cols;
        let out_ptr = SendPtr(out.as_mut_ptr());
        candle_core::utils::barrier_pool().execute_chunked(units, |range| {
            for unit in range {
                let (rt, tc) = (unit / tile_cols, unit % tile_cols);
                let rows = rt * ROWS..m.min(rt * ROWS + ROWS);
                let tiles = &self.tiles[tc * blocks..(tc + 1) * blocks];
                let mut acc = [[0f32; COLS]; ROWS];
                // SAFETY: `available()` was true when this matrix was packed.
                unsafe { tile_rows(tiles, acts, blocks, rows.clone(), &mut acc) };
                for (i, r) in rows.enumerate() {
                    // SAFETY: each (row, column tile) of `out` is written by exactly one unit,
                    // and `out` outlives the pool call.
                    unsafe {
                        let dst = out_ptr.at(r * self.n + tc * COLS);
                        std::ptr::copy_nonoverlapping(acc[i].as_ptr(), dst, COLS);
                    }
                }
            }
        });
    }
}

/// A pointer the pool's workers may share; every worker writes its own elements.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY (caller): `offset` is inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// Whether the kernel runs on this CPU.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Rows of `x (m, k)` as Q8_0 blocks: scale = max |value| / 127 (kept in f32), codes
/// rounded to nearest.
fn quantize(x: &[f32], m: usize, k: usize) -> Vec<ActBlock> {
    let mut out = Vec::with_capacity(m * k / BLOCK);
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        let mut qs = [0i8; BLOCK];
        for (q, v) in qs.iter_mut().zip(block) {
            *q = (v * inv).round() as i8;
        }
        let sum = qs.iter().map(|&q| q as i32).sum();
        out.push(ActBlock { qs, scale, sum });
    }
    out
}

/// `acc[i][c]` = dot of activation row `rows.start + i` with column `c` of the tile column.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_rows(
    tiles: &[Tile],
    acts: &[ActBlock],
    blocks: usize,
    rows: std::ops::Range<usize>,
    acc: &mut [[f32; COLS]; ROWS],
) {
    use std::arch::x86_64::*;
    let mt = rows.len();
    let mut sums = [_mm512_setzero_ps(); ROWS];
    for (b, tile) in tiles.iter().enumerate() {
        let mut dots = [_mm512_setzero_si512(); ROWS];
        for g in 0..BLOCK / 4 {
            let w = _mm512_load_si512(tile.qs.as_ptr().add(g * COLS * 4) as *const _);
            for (i, dot) in dots.iter_mut().enumerate().take(mt) {
                let a = &acts[(rows.start + i) * blocks + b];
                let four = std::ptr::read_unaligned(a.qs.as_ptr().add(g * 4) as *const i32);
                *dot = _mm512_dpbusd_epi32(*dot, w, _mm512_set1_epi32(four));
            }
        }
        let scale = _mm512_load_ps(tile.scale.as_ptr());
        for (i, sum) in sums.iter_mut().enumerate().take(mt) {
            let a = &acts[(rows.start + i) * blocks + b];
            let exact = _mm512_sub_epi32(dots[i], _mm512_set1_epi32(128 * a.sum));
            let s = _mm512_mul_ps(scale, _mm512_set1_ps(a.scale));
            *sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), s, *sum);
        }
    }
    for i in 0..mt {
        _mm512_storeu_ps(acc[i].as_mut_ptr(), sums[i]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_rows(
    _: &[Tile],
    _: &[ActBlock],
    _: usize,
    _: std::ops::Range<usize>,
    _: &mut [[f32; COLS]; ROWS],
) {
    unreachable!("PackedQ8 is only built where available() holds");
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The same arithmetic one value at a time: exact integer dots per block, then
    /// `sum = dot * (w_scale * x_scale) + sum` fused, block by block.
    fn reference(w: &QTensor, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = w.shape().dims2().unwrap();
        let data = w.data().unwrap();
        let acts = quantize(x, m, k);
        let blocks = k / BLOCK;
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let mut sum = 0f32;
                for b in 0..blocks {
                    let at = (c * blocks + b) * Q8_0_BYTES;
                    let blk = &data[at..at + Q8_0_BYTES];
                    let ws = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let a = &acts[r * blocks + b];
                    let dot: i32 = blk[2..]
                        .iter()
                        .zip(a.qs)
                        .map(|(&q, x)| q as i8 as i32 * x as i32)
                        .sum();
                    sum = (dot as f32).mul_add(ws * a.scale, sum);
                }
                out[r * n + c] = sum;
            }
        }
        out
    }

    fn values(t: Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn noise(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn tiles_compute_what_the_reference_computes_for_any_row_count() {
        if !available() {
            eprintln!("no AVX512-VNNI on this CPU: candle's kernel is used instead");
            return;
        }
        let (n, k) = (48, 96);
        let w = Tensor::from_vec(noise(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let w = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let packed = PackedQ8::new(&w).unwrap().unwrap();
        // An outlier column, as SmolLM2's activations have.
        let mut x = noise(11 * k, 2);
        x[5] = 40.0;
        for m in [1, 3, 8, 11] {
            let xs = Tensor::from_slice(&x[..m * k], (m, k), &Device::Cpu).unwrap();
            let got = values(packed.forward(&xs).unwrap());
            assert_eq!(got, reference(&w, &x[..m * k], m), "{m} rows");
        }
        // Close to the float product too (a row without the outlier): Q8_0 keeps values to
        // ~1/254 of their block's largest.
        let xs = Tensor::from_slice(&x[k..2 * k], (1, k), &Device::Cpu).unwrap();
        let got = values(packed.forward(&xs).unwrap());
        let dequantized = w.dequantize(&Device::Cpu).unwrap();
        let exact = values(xs.matmul(&dequantized.t().unwrap()).unwrap());
        for (g, e) in got.iter().zip(&exact) {
            assert!((g - e).abs() < 0.05, "{g} vs {e}");
        }
    }
}
