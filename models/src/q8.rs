//! Int8 weights times rows of activations in integer arithmetic (AVX512-VNNI, else AVX2), 16
//! output columns at a time.
//!
//! Two engines use it. SmolLM2's Q8_0 matrices ([`PackedQ8::new`]): candle's CPU kernel for
//! Q8_0 computes one dot product per row and column, converting both f16 scales of every
//! 32-value block each time; its tiled VNNI kernel needs an inner size that is a multiple of
//! 256 and quantizes activations with one scale per 256 values, which moved SmolLM2's logits
//! by ~5 (its hidden size is 576 and its activations have outlier channels). And Moonshine's
//! decoder step ([`PackedQ8::from_rows`]): int8 weights with one scale per row, whose
//! f32-activation kernel spends most of its time widening weights to f32.
//! Here the weights are repacked once into tiles of 16 columns × one 32-value block (codes
//! offset to unsigned bytes, scales as f32), activations are quantized per 32 values as Q8_0
//! does, and each weight tile is loaded once for up to [`ROWS`] activation rows: several
//! sequences' tokens cost little more than one. CPUs without AVX2 keep the engines' own
//! kernels.
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

/// An int8 matrix `(n, k)`, one scale per column and 32 values (Q8_0's layout, or one scale
/// per row repeated), repacked into tiles, column tile major.
pub struct PackedQ8 {
    n: usize,
    k: usize,
    tiles: Vec<Tile>,
    kernel: Kernel,
}

/// The instructions that multiply the tiles. Both compute the same exact integer dot per
/// block and the same f32 steps after it, so results are bit for bit the same on either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX512-VNNI: one `vpdpbusd` per 4 values × 16 columns.
    Vnni,
    /// AVX2: `vpmaddubsw` on |weight| and the activation carrying the weight's sign (pairs
    /// stay below 2·128·127, so nothing saturates), then `vpmaddwd` into i32.
    Avx2,
}

impl Kernel {
    /// The best this CPU runs, if any.
    pub fn detect() -> Option<Self> {
        [Self::Vnni, Self::Avx2].into_iter().find(|k| k.runs_here())
    }

    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        match self {
            Self::Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            Self::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

/// One row's block of 32 activations.
#[derive(Clone, Copy)]
pub struct ActBlock {
    qs: [i8; BLOCK],
    scale: f32,
    /// Sum of the codes: undoes the +128 offset of the weights (VNNI multiplies unsigned by
    /// signed bytes; the AVX2 kernel flips the offset off instead).
    sum: i32,
}

impl PackedQ8 {
    /// Repack `w` when this CPU has a [`Kernel`] and the shape fits (`None` otherwise).
    pub fn new(w: &QTensor) -> Result<Option<Self>> {
        let (n, k) = w.shape().dims2()?;
        let Some(kernel) = fits(n, k).filter(|_| w.dtype() == GgmlDType::Q8_0) else {
            return Ok(None);
        };
        let data = w.data()?;
        let blocks = k / BLOCK;
        Ok(Some(Self::pack(kernel, n, k, |c, b| {
            let at = (c * blocks + b) * Q8_0_BYTES;
            let block = &data[at..at + Q8_0_BYTES];
            let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            (scale, std::array::from_fn(|i| block[2 + i] as i8))
        })))
    }

    /// From int8 `codes`, row-major `(n, k)` with `n = scales.len()`, row `c` worth
    /// `codes * scales[c]` (`None` where the CPU or the shape does not fit).
    pub fn from_rows(codes: &[i8], scales: &[f32], k: usize) -> Option<Self> {
        let n = scales.len();
        assert_eq!(codes.len(), n * k, "from_rows: codes for every row");
        let kernel = fits(n, k)?;
        Some(Self::pack(kernel, n, k, |c, b| {
            let row = &codes[c * k + b * BLOCK..];
            (scales[c], std::array::from_fn(|i| row[i]))
        }))
    }

    /// Tiles from `block(column, block) = (scale, codes)`, multiplied by `kernel`.
    fn pack(
        kernel: Kernel,
        n: usize,
        k: usize,
        block: impl Fn(usize, usize) -> (f32, [i8; BLOCK]),
    ) -> Self {
        let blocks = k / BLOCK;
        let mut tiles = Vec::with_capacity(n / COLS * blocks);
        for tile_col in 0..n / COLS {
            for b in 0..blocks {
                let mut tile = Tile {
                    qs: [0; BLOCK * COLS],
                    scale: [0.0; COLS],
                };
                for c in 0..COLS {
                    let (scale, codes) = block(tile_col * COLS + c, b);
                    tile.scale[c] = scale;
                    for (i, q) in codes.into_iter().enumerate() {
                        let (group, j) = (i / 4, i % 4);
                        tile.qs[(group * COLS + c) * 4 + j] = (q as i16 + 128) as u8;
                    }
                }
                tiles.push(tile);
            }
        }
        Self {
            n,
            k,
            tiles,
            kernel,
        }
    }

    /// Column `c`'s code at depth `i` (a token's embedding row, for instance).
    pub fn code(&self, c: usize, i: usize) -> i8 {
        let tile = &self.tiles[c / COLS * (self.k / BLOCK) + i / BLOCK];
        let (group, j) = (i % BLOCK / 4, i % 4);
        (tile.qs[(group * COLS + c % COLS) * 4 + j] as i16 - 128) as i8
    }

    /// Output columns `cols` (starting and ending on a multiple of 16) of the `m` rows of
    /// `acts` (from [`quantize`]) on the calling thread, into `out` laid out (column, row).
    pub fn columns(
        &self,
        acts: &[ActBlock],
        m: usize,
        cols: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        assert!(
            cols.start.is_multiple_of(COLS) && cols.end.is_multiple_of(COLS) && cols.end <= self.n
        );
        assert_eq!(out.len(), cols.len() * m, "columns: output size");
        for tc in cols.start / COLS..cols.end / COLS {
            for first in (0..m).step_by(ROWS) {
                let rows = first..m.min(first + ROWS);
                let acc = self.tile_column(tc, acts, rows.clone());
                for (i, r) in rows.enumerate() {
                    for (c, v) in acc[i].iter().enumerate() {
                        out[(tc * COLS + c - cols.start) * m + r] = *v;
                    }
                }
            }
        }
    }

    /// Tile column `tc` (16 output columns) for activation rows `rows` (at most [`ROWS`]):
    /// `acc[i][c]` for row `rows.start + i`.
    fn tile_column(
        &self,
        tc: usize,
        acts: &[ActBlock],
        rows: std::ops::Range<usize>,
    ) -> [[f32; COLS]; ROWS] {
        let blocks = self.k / BLOCK;
        let tiles = &self.tiles[tc * blocks..(tc + 1) * blocks];
        let mut acc = [[0f32; COLS]; ROWS];
        self.kernel.tile_rows(tiles, acts, blocks, rows, &mut acc);
        acc
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
                let acc = self.tile_column(tc, acts, rows.clone());
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

/// The kernel for an `(n, k)` matrix here: `None` unless the CPU has one and the shape is
/// whole tiles.
fn fits(n: usize, k: usize) -> Option<Kernel> {
    Kernel::detect().filter(|_| n.is_multiple_of(COLS) && k.is_multiple_of(BLOCK))
}

/// Rows of `x (m, k)` as Q8_0 blocks: scale = max |value| / 127 (kept in f32), codes
/// rounded to nearest.
pub fn quantize(x: &[f32], m: usize, k: usize) -> Vec<ActBlock> {
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

impl Kernel {
    /// `acc[i][c]` = dot of activation row `rows.start + i` with column `c` of the tile
    /// column (`rows` at most [`ROWS`] long).
    fn tile_rows(
        self,
        tiles: &[Tile],
        acts: &[ActBlock],
        blocks: usize,
        rows: std::ops::Range<usize>,
        acc: &mut [[f32; COLS]; ROWS],
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `Kernel` is only made by `detect`, which checked the CPU features.
        unsafe {
            match self {
                Self::Vnni => tile_rows_vnni(tiles, acts, blocks, rows, acc),
                Self::Avx2 => tile_rows_avx2(tiles, acts, blocks, rows, acc),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (tiles, acts, blocks, rows, acc);
            unreachable!("{self:?} is never detected off x86_64");
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_rows_vnni(
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

/// The AVX2 twin of [`tile_rows_vnni`]: a 256-bit register holds 8 columns, so each tile is
/// walked as two halves, 4 rows at a time (16 registers: 4 dots, 4 sums and the operands).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_rows_avx2(
    tiles: &[Tile],
    acts: &[ActBlock],
    blocks: usize,
    rows: std::ops::Range<usize>,
    acc: &mut [[f32; COLS]; ROWS],
) {
    use std::arch::x86_64::*;
    const HALF: usize = COLS / 2;
    const PASS: usize = 4;
    let ones = _mm256_set1_epi16(1);
    let offset = _mm256_set1_epi8(-128);
    for half in 0..2 {
        for first in (0..rows.len()).step_by(PASS) {
            let mt = (rows.len() - first).min(PASS);
            let row = |i: usize, b: usize| &acts[(rows.start + first + i) * blocks + b];
            let mut sums = [_mm256_setzero_ps(); PASS];
            for (b, tile) in tiles.iter().enumerate() {
                let mut dots = [_mm256_setzero_si256(); PASS];
                for g in 0..BLOCK / 4 {
                    let at = tile.qs.as_ptr().add(g * COLS * 4 + half * HALF * 4);
                    // Codes were stored + 128: flipping the top bit gives the signed code.
                    let w = _mm256_xor_si256(_mm256_load_si256(at as *const _), offset);
                    let magnitude = _mm256_abs_epi8(w);
                    for (i, dot) in dots.iter_mut().enumerate().take(mt) {
                        let four = std::ptr::read_unaligned(
                            row(i, b).qs.as_ptr().add(g * 4) as *const i32
                        );
                        let signed = _mm256_sign_epi8(_mm256_set1_epi32(four), w);
                        let pairs = _mm256_maddubs_epi16(magnitude, signed);
                        *dot = _mm256_add_epi32(*dot, _mm256_madd_epi16(pairs, ones));
                    }
                }
                let scale = _mm256_loadu_ps(tile.scale.as_ptr().add(half * HALF));
                for (i, sum) in sums.iter_mut().enumerate().take(mt) {
                    let s = _mm256_mul_ps(scale, _mm256_set1_ps(row(i, b).scale));
                    *sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[i]), s, *sum);
                }
            }
            for (i, sum) in sums.iter().enumerate().take(mt) {
                _mm256_storeu_ps(acc[first + i].as_mut_ptr().add(half * HALF), *sum);
            }
        }
    }
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

    /// Every kernel this CPU runs (AVX512-VNNI CPUs run both).
    fn kernels() -> Vec<Kernel> {
        let here: Vec<_> = [Kernel::Vnni, Kernel::Avx2]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect();
        if here.is_empty() {
            eprintln!(
                "neither AVX2 nor AVX512-VNNI on this CPU: the engines' own kernels are used"
            );
        }
        here
    }

    #[test]
    fn tiles_compute_what_the_reference_computes_for_any_row_count() {
        let (n, k) = (48, 96);
        let w = Tensor::from_vec(noise(n * k, 1), (n, k), &Device::Cpu).unwrap();
        let w = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let Some(mut packed) = PackedQ8::new(&w).unwrap() else {
            return assert!(
                kernels().is_empty(),
                "a kernel runs here, yet nothing was packed"
            );
        };
        // An outlier column, as SmolLM2's activations have.
        let mut x = noise(11 * k, 2);
        x[5] = 40.0;
        for kernel in kernels() {
            packed.kernel = kernel;
            for m in [1, 3, 8, 11] {
                let xs = Tensor::from_slice(&x[..m * k], (m, k), &Device::Cpu).unwrap();
                let got = values(packed.forward(&xs).unwrap());
                assert_eq!(got, reference(&w, &x[..m * k], m), "{kernel:?}, {m} rows");
            }
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

    /// Codes at both ends of i8 (-128 has no positive twin, which the AVX2 kernel's sign
    /// trick must survive) against the integer dot written out.
    #[test]
    fn rows_of_extreme_codes_multiply_exactly() {
        let (n, k, m) = (32, 64, 5);
        let codes: Vec<i8> = (0..n * k).map(|i| [-128, 127, -1, 0, 3][i % 5]).collect();
        let scales: Vec<f32> = (0..n).map(|c| 0.01 * (c + 1) as f32).collect();
        let Some(mut packed) = PackedQ8::from_rows(&codes, &scales, k) else {
            return assert!(
                kernels().is_empty(),
                "a kernel runs here, yet nothing was packed"
            );
        };
        assert_eq!(packed.code(17, 40), codes[17 * k + 40]);
        // Whole numbers up to 127: quantizing them loses nothing, so the dots are exact.
        let x: Vec<f32> = (0..m * k).map(|i| [127.0, -127.0, 5.0][i % 3]).collect();
        let acts = quantize(&x, m, k);
        for kernel in kernels() {
            packed.kernel = kernel;
            let mut out = vec![0f32; m * n];
            packed.columns(&acts, m, 0..n, &mut out);
            for (c, r) in (0..n).flat_map(|c| (0..m).map(move |r| (c, r))) {
                let dot: i64 = (0..k)
                    .map(|i| codes[c * k + i] as i64 * x[r * k + i] as i64)
                    .sum();
                let want = dot as f32 * scales[c];
                let got = out[c * m + r];
                assert!(
                    (got - want).abs() <= want.abs() * 1e-6,
                    "{kernel:?} ({c}, {r}): {got} vs {want}"
                );
            }
        }
    }
}
