//! `top_k_row` (the top-k mask's definition, shared by the reference and the CPU host op)
//! against an independent oracle: a stable sort by descending value with NaNs last.

use lorac_compiler::ir::ops::index::top_k_row;

fn oracle(row: &[f32], k: usize) -> Vec<f32> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| match (row[a].is_nan(), row[b].is_nan()) {
        (false, false) => row[b].partial_cmp(&row[a]).unwrap(),
        (x, y) => x.cmp(&y),
    });
    let mut out = vec![0.0; row.len()];
    for &j in order.iter().take(k) {
        out[j] = 1.0;
    }
    out
}

#[test]
fn equals_a_stable_descending_sort_with_ties_and_nans() {
    // A small LCG keeps the test free of dependencies; values come from a tiny set so ties
    // are common, with NaNs and signed zeros mixed in.
    let mut s = 12345u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as usize
    };
    let vals = [1.0, -1.0, 0.0, -0.0, 2.5, f32::NAN, 2.5, f32::INFINITY];
    for _ in 0..5000 {
        let n = 1 + next() % 12;
        let row: Vec<f32> = (0..n).map(|_| vals[next() % vals.len()]).collect();
        for k in 0..=n + 1 {
            let mut got = vec![7.0; n];
            top_k_row(&row, k, &mut got);
            assert_eq!(got, oracle(&row, k), "row {row:?}, k {k}");
        }
    }
}
