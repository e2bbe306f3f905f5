//! Small vector kernels shared by the audio resampler, the classifier heads and the
//! speech-to-text engines' weight matrices (Whisper's f16, Moonshine's int8).

use rayon::prelude::*;

/// Dot product with eight independent accumulators, so the compiler can vectorise it
/// (a single running f32 sum has to be evaluated in order).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_widened(a, b, |y| y)
}

/// [`dot`] with weights kept narrower than f32 (e.g. int8), each widened by `widen`.
pub(crate) fn dot_widened<W: Copy>(x: &[f32], w: &[W], widen: impl Fn(W) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (cx, cw) = (x.chunks_exact(8), w.chunks_exact(8));
    let tail: f32 = cx
        .remainder()
        .iter()
        .zip(cw.remainder())
        .map(|(a, &b)| a * widen(b))
        .sum();
    for (a, b) in cx.zip(cw) {
        for k in 0..8 {
            acc[k] += a[k] * widen(b[k]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// X Wᵀ for `n` row-major vectors and a matrix of `rows` weight rows, whatever form the
/// weights are kept in: `fill(first_row, out)` computes the outputs of the weight rows from
/// `first_row` on into `out`, laid out (rows, n), so that tasks own whole weight rows and
/// each row is read once for all n vectors. A matrix of fewer than `par_min` weights runs
/// on the calling thread (handing it to the pool costs more than it saves). The result is
/// (n, rows), row-major.
pub(crate) fn matmul_by_rows(
    rows: usize,
    n: usize,
    weights: usize,
    par_min: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    if weights < par_min {
        fill(0, &mut out);
    } else {
        // Whole tiles of 16 rows for crate::q8's kernels.
        let task_rows = rows.div_ceil(8).max(64).next_multiple_of(16);
        out.par_chunks_mut(task_rows * n)
            .enumerate()
            .for_each(|(t, o)| fill(t * task_rows, o));
    }
    if n == 1 {
        return out;
    }
    (0..n * rows)
        .map(|i| out[(i % rows) * n + i / rows])
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_a_plain_sum_for_every_length() {
        for n in 0..40 {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((super::dot(&a, &b) - plain).abs() < 1e-3, "n = {n}");
        }
    }

    #[test]
    fn matmul_by_rows_is_the_same_inline_and_in_tasks() {
        let (rows, cols, n) = (200, 5, 3);
        let w: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 - 3.0).collect();
        let xs: Vec<f32> = (0..n * cols).map(|i| i as f32 * 0.5).collect();
        let fill = |first: usize, out: &mut [f32]| {
            for (r, ys) in out.chunks_exact_mut(n).enumerate() {
                let row = &w[(first + r) * cols..(first + r + 1) * cols];
                for (y, x) in ys.iter_mut().zip(xs.chunks_exact(cols)) {
                    *y = super::dot(x, row);
                }
            }
        };
        let inline = super::matmul_by_rows(rows, n, w.len(), usize::MAX, fill);
        let tasks = super::matmul_by_rows(rows, n, w.len(), 0, fill);
        assert_eq!(inline, tasks);
        // (n, rows): output [v][r] is vector v times weight row r.
        let want = super::dot(&xs[cols..2 * cols], &w[7 * cols..8 * cols]);
        assert_eq!(inline[rows + 7], want);
    }
}
