//! The thin-product kernel (`ir::ops::thin`): accuracy against an f64 oracle, the AVX-512
//! path against the scalar definition bit for bit, and layout independence (strided views
//! give the bits of row-major copies, as the CPU executor and the reference interpreter need).

use lorac_compiler::ir::ops::linalg::gemm_rowmajor;
use lorac_compiler::ir::ops::thin::{self, Path, View};

/// Sizes that hit every register-tile tail (1 row / 8 lanes / 16 lanes) and a long run.
const ODD: [usize; 8] = [1, 3, 7, 8, 16, 17, 50, 783];

/// The MiniLM GOAT / LoRA product shapes `(m, k, n)` from the profile.
const BENCH: [(usize, usize, usize); 13] = [
    (2048, 384, 8),
    (4096, 384, 8),
    (2048, 1536, 8),
    (4096, 1536, 8),
    (384, 4096, 8),
    (1536, 4096, 8),
    (384, 2048, 8),
    (1536, 2048, 8),
    (2048, 8, 384),
    (4096, 8, 384),
    (2048, 8, 1536),
    (8, 2048, 384),
    (8, 2048, 1536),
];

/// Every odd-size shape the kernel is meant for (smallest dimension at most 16).
fn odd_shapes() -> Vec<(usize, usize, usize)> {
    let mut v = vec![];
    for m in ODD {
        for k in ODD {
            for n in ODD {
                if m.min(k).min(n) <= 16 {
                    v.push((m, k, n));
                }
            }
        }
    }
    v
}

/// Deterministic values in [-1, 1) (xorshift; no dependency).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// How a logical `rows × cols` matrix is stored.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Row-major, contiguous.
    Rows,
    /// Stored transposed (`cols × rows` row-major): read with strides (1, rows).
    Trans,
    /// Transposed with 3 elements of padding per stored row: general strides.
    Padded,
}

/// A logical matrix stored in a layout; `view` reads it back through strides.
struct Stored {
    data: Vec<f32>,
    rs: isize,
    cs: isize,
}

impl Stored {
    fn new(logical: &[f32], rows: usize, cols: usize, layout: Layout) -> Stored {
        let (ld, rs, cs) = match layout {
            Layout::Rows => return Stored::rows(logical.to_vec(), cols),
            Layout::Trans => (rows, 1, rows as isize),
            Layout::Padded => (rows + 3, 1, (rows + 3) as isize),
        };
        let mut data = vec![f32::NAN; cols * ld];
        for r in 0..rows {
            for c in 0..cols {
                data[c * ld + r] = logical[r * cols + c];
            }
        }
        Stored { data, rs, cs }
    }

    fn rows(data: Vec<f32>, cols: usize) -> Stored {
        Stored {
            data,
            rs: cols as isize,
            cs: 1,
        }
    }

    fn view(&self) -> View {
        View {
            ptr: self.data.as_ptr(),
            rs: self.rs,
            cs: self.cs,
        }
    }
}

/// Runs the kernel on `(m, k, n)` with operands stored in the given layouts; the output
/// starts as NaN so that an unwritten element shows.
fn run(path: Path, shape: (usize, usize, usize), la: Layout, lb: Layout, par: bool) -> Vec<f32> {
    let (m, k, n) = shape;
    let seed = (m * 1_000_003 + k * 1009 + n) as u64;
    let a = Stored::new(&values(m * k, seed), m, k, la);
    let b = Stored::new(&values(k * n, seed + 1), k, n, lb);
    let mut out = vec![f32::NAN; m * n];
    // SAFETY: the views cover the stored matrices; `out` holds m·n elements.
    unsafe { thin::matmul_with(path, m, k, n, a.view(), b.view(), out.as_mut_ptr(), par) };
    out
}

/// The reference interpreter's product (`gemm_rowmajor`) on [`run`]'s operands.
fn via_gemm_rowmajor((m, k, n): (usize, usize, usize)) -> Vec<f32> {
    let seed = (m * 1_000_003 + k * 1009 + n) as u64;
    let mut out = vec![f32::NAN; m * n];
    gemm_rowmajor(
        m,
        k,
        n,
        &values(m * k, seed),
        &values(k * n, seed + 1),
        &mut out,
    );
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

const LAYOUTS: [(Layout, Layout); 4] = [
    (Layout::Rows, Layout::Rows),
    (Layout::Rows, Layout::Trans),
    (Layout::Trans, Layout::Rows),
    (Layout::Trans, Layout::Trans),
];

/// Against a naive f64 triple loop. Tolerance: each output's error is at most 1e-5 of
/// `Σ_p |a[i,p]·b[p,j]|` (relative to the magnitude sum, so that cancellation in the exact
/// value cannot make a correct f32 result look wrong; f32 chains of length 4096 stay well
/// under it).
#[test]
fn matches_f64_oracle_on_bench_and_odd_shapes() {
    const TOL: f64 = 1e-5;
    let mut shapes = odd_shapes();
    shapes.extend(BENCH);
    for &(m, k, n) in &shapes {
        let seed = (m * 1_000_003 + k * 1009 + n) as u64;
        let (a, b) = (values(m * k, seed), values(k * n, seed + 1));
        let mut exact = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        for i in 0..m {
            for p in 0..k {
                let x = a[i * k + p] as f64;
                for j in 0..n {
                    let t = x * b[p * n + j] as f64;
                    exact[i * n + j] += t;
                    mag[i * n + j] += t.abs();
                }
            }
        }
        for (la, lb) in LAYOUTS {
            let got = run(Path::Auto, (m, k, n), la, lb, true);
            for e in 0..m * n {
                let err = (got[e] as f64 - exact[e]).abs();
                assert!(
                    err <= TOL * mag[e] + 1e-30,
                    "({m}x{k})@({k}x{n}) {la:?}/{lb:?} element {e}: got {} want {} (|ab| sum {})",
                    got[e],
                    exact[e],
                    mag[e]
                );
            }
        }
    }
}

/// The AVX-512 path and the scalar definition give the same bits, in every layout.
#[test]
fn avx512_equals_scalar_bit_for_bit() {
    if !thin::has_avx512() {
        eprintln!("no AVX-512 on this CPU: only the scalar path exists here");
        return;
    }
    let mut shapes = odd_shapes();
    shapes.extend([
        (2048, 384, 8),
        (384, 2048, 8),
        (2048, 8, 384),
        (8, 2048, 384),
    ]);
    for &shape in &shapes {
        for (la, lb) in LAYOUTS
            .into_iter()
            .chain([(Layout::Padded, Layout::Padded)])
        {
            let v = run(Path::Avx512, shape, la, lb, true);
            let s = run(Path::Scalar, shape, la, lb, false);
            assert_eq!(bits(&v), bits(&s), "{shape:?} {la:?}/{lb:?}");
        }
    }
}

/// Transposed and padded (strided) operands give the bits of row-major copies, whether or
/// not the outputs are split across threads; and the reference interpreter's row-major
/// entry point (`gemm_rowmajor`) gives the same bits as the strided kernel call.
#[test]
fn strided_operands_equal_row_major_copies() {
    let mut shapes = odd_shapes();
    shapes.extend(BENCH);
    for &shape in &shapes {
        let (m, k, n) = shape;
        let want = run(Path::Auto, shape, Layout::Rows, Layout::Rows, false);
        for (la, lb) in LAYOUTS.into_iter().chain([
            (Layout::Padded, Layout::Rows),
            (Layout::Rows, Layout::Padded),
        ]) {
            let got = run(Path::Auto, shape, la, lb, true);
            assert_eq!(bits(&got), bits(&want), "{shape:?} {la:?}/{lb:?}");
        }
        if thin::applies(m, k, n) {
            let out = via_gemm_rowmajor(shape);
            assert_eq!(bits(&out), bits(&want), "gemm_rowmajor {shape:?}");
        }
    }
}

/// The predicate: an output side at most 16 and at least 2¹⁶ multiply-adds (a thin inner
/// dimension alone stays with gemm; the kernel itself is still tested on those shapes).
#[test]
fn applies_to_large_thin_products_only() {
    assert!(thin::applies(2048, 384, 8));
    assert!(thin::applies(8, 2048, 384));
    assert!(thin::applies(16, 2048, 2048));
    assert!(!thin::applies(2048, 8, 384));
    assert!(!thin::applies(2048, 16, 2048));
    assert!(!thin::applies(2048, 17, 2048));
    assert!(!thin::applies(128, 128, 32));
    assert!(!thin::applies(8, 8, 8));
    assert!(!thin::applies(0, 1 << 20, 8));
    assert!(thin::applies(1 << 13, 8, 1));
    assert!(!thin::applies(1 << 13, 7, 1));
}

/// A thin inner dimension (k ≤ 16) is defined by this module's chains too, at every size and
/// whatever the other sides (fused kernels compute such products in registers by the same
/// chain, `Inst::Dot`). `gemm` does not give these bits in general (k = 2, or a side of 16 or
/// less, differ), so the reference's `gemm_rowmajor` must route them here.
#[test]
fn thin_inner_products_follow_the_chain_definition() {
    for k in 1..=16 {
        for m in ODD.into_iter().chain([64, 2048]) {
            for n in ODD.into_iter().chain([384, 1536]) {
                assert!(thin::defines(m, k, n));
                let want = run(Path::Scalar, (m, k, n), Layout::Rows, Layout::Rows, false);
                let out = via_gemm_rowmajor((m, k, n));
                assert_eq!(bits(&out), bits(&want), "{m}x{k}x{n}");
            }
        }
    }
    assert!(!thin::defines(2048, 17, 2048));
    assert!(!thin::defines(128, 128, 32));
}
