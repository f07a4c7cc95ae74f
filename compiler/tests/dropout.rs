//! Seeded dropout (`ops/random.rs`): the kept fraction is 1 − p within sampling error, kept
//! values are scaled by exactly 1/(1 − p), masks are a function of (seed, salt, index) only,
//! and the gradient is the same mask applied to the incoming gradient.

use lorac_compiler::ir::interp::run_outputs;
use lorac_compiler::ir::{DType, Graph, InputKind, NodeId, Op, Tensor};
use lorac_compiler::passes::autodiff::grad;
use std::collections::HashMap;

fn input(g: &mut Graph, name: &str, shape: &[usize], dtype: DType) -> NodeId {
    g.add(
        Op::Input {
            name: name.into(),
            kind: InputKind::Param,
            shape: shape.to_vec(),
            dtype,
        },
        &[],
    )
    .unwrap()
}

fn masked(n: usize, p: f32, salt: u64, seed: i64) -> Vec<f32> {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[n], DType::F32);
    let s = input(&mut g, "seed", &[1], DType::I64);
    let y = g.add(Op::Dropout { p, salt }, &[x, s]).unwrap();
    g.set_output("y", y);
    let inputs = HashMap::from([
        (
            "x".to_string(),
            Tensor::f32(vec![n], (0..n).map(|i| 1.0 + i as f32 * 1e-3).collect()),
        ),
        ("seed".to_string(), Tensor::i64(vec![1], vec![seed])),
    ]);
    run_outputs(&g, &inputs).unwrap()[0].1.f().to_vec()
}

#[test]
fn kept_fraction_and_scale() {
    let n = 200_000;
    for p in [0.05f32, 0.1, 0.5] {
        let y = masked(n, p, 3, 42);
        let kept: Vec<usize> = (0..n).filter(|&i| y[i] != 0.0).collect();
        let frac = kept.len() as f64 / n as f64;
        let sigma = ((p * (1.0 - p)) as f64 / n as f64).sqrt();
        assert!(
            (frac - (1.0 - p as f64)).abs() < 5.0 * sigma,
            "p = {p}: kept {frac}, expected {} ± {sigma}",
            1.0 - p
        );
        for &i in kept.iter().take(1000) {
            let x = 1.0 + i as f32 * 1e-3;
            assert_eq!(y[i], x * (1.0 / (1.0 - p)));
        }
    }
}

#[test]
fn masks_depend_on_seed_and_salt_only() {
    let n = 50_000;
    let a = masked(n, 0.5, 1, 7);
    assert_eq!(a, masked(n, 0.5, 1, 7), "same seed and salt: same mask");
    for b in [masked(n, 0.5, 2, 7), masked(n, 0.5, 1, 8)] {
        let same = (0..n).filter(|&i| (a[i] == 0.0) == (b[i] == 0.0)).count() as f64 / n as f64;
        // Independent masks at p = 0.5 agree on about half the elements.
        assert!(
            (same - 0.5).abs() < 0.02,
            "masks agree on {same} of elements"
        );
    }
}

#[test]
fn gradient_is_the_same_mask() {
    let n = 1000;
    let p = 0.2;
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[n], DType::F32);
    let w = input(&mut g, "w", &[n], DType::F32);
    let s = input(&mut g, "seed", &[1], DType::I64);
    let y = g.add(Op::Dropout { p, salt: 9 }, &[x, s]).unwrap();
    let wy = g.times(w, y).unwrap();
    let l = g.sum_all(wy).unwrap();
    let dx = grad(&mut g, l, &[x]).unwrap()[0].unwrap();
    g.set_output("y", y);
    g.set_output("dx", dx);
    let wv: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
    let inputs = HashMap::from([
        ("x".to_string(), Tensor::f32(vec![n], vec![1.0; n])),
        ("w".to_string(), Tensor::f32(vec![n], wv.clone())),
        ("seed".to_string(), Tensor::i64(vec![1], vec![5])),
    ]);
    let out: HashMap<String, Tensor> = run_outputs(&g, &inputs).unwrap().into_iter().collect();
    // With x = 1, y is the mask factor itself: d/dx Σ w·y = w · factor.
    for (i, (&w, (&dx, &y))) in wv
        .iter()
        .zip(out["dx"].f().iter().zip(out["y"].f()))
        .enumerate()
    {
        assert_eq!(dx, w * y, "element {i}");
    }
}
