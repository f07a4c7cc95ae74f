//! A first end-to-end gradient check: softmax-weighted matmul against finite differences.

use lorac_compiler::ir::interp::run;
use lorac_compiler::ir::{DType, Graph, InputKind, Op, Tensor};
use lorac_compiler::passes::autodiff::grad;
use std::collections::HashMap;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
}

#[test]
fn softmax_matmul_gradient_matches_finite_differences() {
    let mut g = Graph::new();
    let x = g
        .add(
            Op::Input {
                name: "x".into(),
                kind: InputKind::Data,
                shape: vec![3, 5],
                dtype: DType::F32,
            },
            &[],
        )
        .unwrap();
    let w = g
        .add(
            Op::Input {
                name: "w".into(),
                kind: InputKind::Param,
                shape: vec![5, 4],
                dtype: DType::F32,
            },
            &[],
        )
        .unwrap();
    let y = g.matmul(x, w).unwrap();
    let p = g.softmax(y).unwrap();
    let t = g.un(lorac_compiler::ir::UnaryOp::Tanh, y).unwrap();
    let z = g.times(p, t).unwrap();
    let loss = g.sum_all(z).unwrap();
    let dw = grad(&mut g, loss, &[w]).unwrap()[0].unwrap();
    g.set_output("loss", loss);
    g.set_output("dw", dw);
    lorac_compiler::ir::verify::verify(&g).unwrap();
    let mut seed = 7;
    let xv: Vec<f32> = (0..15).map(|_| lcg(&mut seed)).collect();
    let wv: Vec<f32> = (0..20).map(|_| lcg(&mut seed)).collect();
    let eval = |wv: &[f32]| {
        let mut inp = HashMap::new();
        inp.insert("x".to_string(), Tensor::f32(vec![3, 5], xv.clone()));
        inp.insert("w".to_string(), Tensor::f32(vec![5, 4], wv.to_vec()));
        let vals = run(&g, &inp).unwrap();
        (vals[&loss].f()[0], vals[&dw].f().to_vec())
    };
    let (_, analytic) = eval(&wv);
    for k in 0..20 {
        let h = 1e-2;
        let mut a = wv.clone();
        a[k] += h;
        let mut b = wv.clone();
        b[k] -= h;
        let fd = (eval(&a).0 - eval(&b).0) / (2.0 * h);
        assert!(
            (fd - analytic[k]).abs() < 2e-3,
            "dw[{k}]: analytic {} vs fd {fd}",
            analytic[k]
        );
    }
}
