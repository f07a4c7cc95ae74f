//! `gemm_layout_free`: over the domain where the CPU executor folds column-strided views
//! (permuted attention heads) into `gemm`, every combination of row-major and transposed
//! operands and result rounds exactly as the row-major product the reference interpreter
//! computes. If a `gemm` upgrade changes its kernels, this fails before any training step
//! drifts from the reference.

mod common;

use common::gradcheck::Rng;
use lorac_compiler::ir::ops::linalg::gemm_layout_free;

/// `out[m×n] = a @ b` through `gemm` with the given element strides (`rs`, `cs`) of `a`, `b`
/// and the result, returned row-major; `par` splits it over rayon's threads.
#[allow(clippy::too_many_arguments)]
fn product(
    par: bool,
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    (ars, acs): (usize, usize),
    b: &[f32],
    (brs, bcs): (usize, usize),
    (ors, ocs): (usize, usize),
) -> Vec<f32> {
    let mut o = vec![0f32; m * n];
    // SAFETY: the strides address exactly the m·k, k·n and m·n elements of each buffer.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            o.as_mut_ptr(),
            ocs as isize,
            ors as isize,
            false,
            a.as_ptr(),
            acs as isize,
            ars as isize,
            b.as_ptr(),
            bcs as isize,
            brs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            if par {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
    let mut r = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            r[i * n + j] = o[i * ors + j * ocs];
        }
    }
    r
}

/// Transposed copy of a row-major `rows × cols` matrix.
fn transposed(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|e| x[(e % rows) * cols + e / rows])
        .collect()
}

#[test]
fn gemm_rounds_the_same_for_every_layout_inside_the_domain() {
    let mut rng = Rng::new(17);
    // Sides below 17 are outside the domain: they catch a domain drawn too wide.
    let sides = [5, 9, 12, 16, 17, 20, 33, 64, 128];
    let inner = [1, 2, 7, 16, 17, 32, 64, 100, 128, 257, 700];
    let mut shapes: Vec<(usize, usize, usize)> = vec![(17, 3000, 17), (20, 2600, 19)];
    for m in sides {
        for n in sides {
            for k in inner {
                shapes.push((m, k, n));
            }
        }
    }
    shapes.retain(|&(m, k, n)| gemm_layout_free(m, k, n));
    assert!(shapes.len() > 150, "the grid covers the domain");
    for (m, k, n) in shapes {
        let (a, b) = (rng.vec(m * k, -1.0, 1.0), rng.vec(k * n, -1.0, 1.0));
        let (at, bt) = (transposed(&a, m, k), transposed(&b, k, n));
        let dims = (m, k, n);
        // The reference's product: row-major, one thread below 2²⁰ multiply-adds.
        let want = product(false, dims, &a, (k, 1), &b, (n, 1), (n, 1));
        // The executor splits single products from 2¹⁸ multiply-adds over its threads.
        let pars: &[bool] = if m * k * n >= 1 << 18 {
            &[false, true]
        } else {
            &[false]
        };
        for &par in pars {
            for (name, got) in [
                ("bᵀ", product(par, dims, &a, (k, 1), &bt, (1, k), (n, 1))),
                ("aᵀ", product(par, dims, &at, (1, m), &b, (n, 1), (n, 1))),
                ("outᵀ", product(par, dims, &a, (k, 1), &b, (n, 1), (1, m))),
                ("all", product(par, dims, &at, (1, m), &bt, (1, k), (1, m))),
            ] {
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{m}×{k}×{n} with {name} (threads: {par}) rounds differently"
                );
            }
        }
    }
}

#[test]
fn the_domain_excludes_thin_sides_and_large_products() {
    assert!(gemm_layout_free(128, 32, 128));
    assert!(gemm_layout_free(32, 128, 128));
    assert!(gemm_layout_free(17, 1, 17));
    assert!(!gemm_layout_free(16, 32, 128));
    assert!(!gemm_layout_free(128, 32, 16));
    assert!(!gemm_layout_free(2048, 384, 384));
    assert!(!gemm_layout_free(128, 64, 128));
}
