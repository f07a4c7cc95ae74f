//! Row-major copies of frozen weights that products read transposed (`x·Wᵀ`), made once
//! per session instead of reading `W` through strides on every step: gemm runs 4–9 %
//! slower on a transposed right operand than on a row-major one of the same shape
//! (goat_all profiles: `[2048x384]@[384x384]T` 1.85 ms a call against 1.69 ms), and the
//! backward pass keeps reading `W` itself, so both layouts stay.
//!
//! The contract that makes this sound: a session's frozen weights do not change after it
//! binds them (`init` has already rewritten them). A run whose frozen tensor is not the one
//! bound (another address) gets a fresh copy for that run, so a mismatch costs time, never
//! values.

use lorac_compiler::ir::Tensor;
use lorac_compiler::lower::plan::{Plan, Step, Storage};
use std::collections::HashMap;
use std::sync::Arc;

/// Shared copies by weight name, so a session's programs hold one copy of each weight.
pub type Shared = HashMap<String, Arc<Vec<f32>>>;

/// One frozen weight's row-major copy of its transpose.
pub struct Bound {
    /// The plan buffer of the weight itself.
    pub src: usize,
    /// The weight tensor's address when copied: a run passing another tensor recopies.
    pub at: usize,
    /// Rows and columns of the stored weight (`[rows, cols]`; the copy is `[cols, rows]`).
    pub rows: usize,
    /// See `rows`.
    pub cols: usize,
    /// The copy.
    pub data: Arc<Vec<f32>>,
}

/// Rewrites `plan`'s single products whose right operand is a transposed frozen weight
/// named in `frozen` to read a row-major copy instead; the copies become buffers
/// `plan.bufs.len() + i` for the returned `i`-th entry.
pub fn bind(plan: &mut Plan, frozen: &HashMap<String, Tensor>, shared: &mut Shared) -> Vec<Bound> {
    let mut bound: Vec<Bound> = vec![];
    let first = plan.bufs.len();
    for step in &mut plan.steps {
        let Step::MatMul {
            b, batch: 1, k, n, ..
        } = step
        else {
            continue;
        };
        if !b.trans || b.view.is_some() || b.buf >= first {
            continue;
        }
        let Storage::Input(name) = &plan.bufs[b.buf].storage else {
            continue;
        };
        let Some(t) = frozen.get(name) else { continue };
        let lorac_compiler::ir::Data::F32(w) = &t.data else {
            continue;
        };
        // Stored `[n, k]`, read as its transpose `[k, n]`.
        if w.len() != *k * *n {
            continue;
        }
        let i = match bound.iter().position(|x| x.src == b.buf) {
            Some(i) => i,
            None => {
                let data = shared
                    .entry(name.clone())
                    .or_insert_with(|| Arc::new(transpose(w, *n, *k)))
                    .clone();
                bound.push(Bound {
                    src: b.buf,
                    at: w.as_ptr() as usize,
                    rows: *n,
                    cols: *k,
                    data,
                });
                bound.len() - 1
            }
        };
        b.buf = first + i;
        b.trans = false;
    }
    bound
}

/// `w[rows, cols]` row-major → its transpose `[cols, rows]` row-major, in 32×32 tiles.
pub fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const T: usize = 32;
    let mut out = vec![0f32; rows * cols];
    for i0 in (0..rows).step_by(T) {
        for j0 in (0..cols).step_by(T) {
            for i in i0..(i0 + T).min(rows) {
                for j in j0..(j0 + T).min(cols) {
                    out[j * rows + i] = w[i * cols + j];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiled transpose is the plain one, on shapes that are and are not tile multiples.
    #[test]
    fn transpose_matches_the_definition() {
        for (r, c) in [(1, 1), (3, 70), (64, 32), (33, 65), (100, 7)] {
            let w: Vec<f32> = (0..r * c).map(|x| x as f32 * 0.5 - 3.0).collect();
            let t = transpose(&w, r, c);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(t[j * r + i], w[i * c + j], "({r}x{c}) at {i},{j}");
                }
            }
        }
    }
}
