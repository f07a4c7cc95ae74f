//! Each redundancy pattern the optimisation pipeline removes (x·1, x/1, x+0 with the sign of
//! zero, -(-x), reshape and permute chains, constant folds, duplicates and dead nodes), one at
//! a time, with the expected result.

mod common;

use common::graphgen::*;

// ---------------------------------------------------------------------------------------------
// Each redundancy pattern, one at a time, with the expected result.
// ---------------------------------------------------------------------------------------------

fn data(g: &mut Graph, name: &str, shape: &[usize]) -> NodeId {
    g.add(
        Op::Input {
            name: name.into(),
            kind: InputKind::Data,
            shape: shape.to_vec(),
            dtype: DType::F32,
        },
        &[],
    )
    .unwrap()
}

/// Runs the pipeline on a graph with output `y` and returns the ops left (sorted names).
fn optimised(mut g: Graph, y: NodeId, inputs: &[(&str, Tensor)]) -> (Graph, Vec<String>) {
    g.set_output("y", y);
    let inputs: HashMap<String, Tensor> = inputs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let want = outputs(&g, &inputs);
    run_pipeline(&mut g, |_, _| {}).unwrap();
    verify(&g).unwrap();
    assert_bit_identical(&want, &outputs(&g, &inputs), "pattern");
    let mut ops: Vec<String> = g.g.node_indices().map(|i| g.node(i).op.name()).collect();
    ops.sort();
    (g, ops)
}

fn x23() -> (&'static str, Tensor) {
    (
        "x",
        Tensor::f32(vec![2, 3], vec![1.5, -0.0, 0.0, -2.0, 3.0, f32::NAN]),
    )
}

#[test]
fn pattern_mul_by_one_and_div_by_one() {
    for k in 0..3 {
        let mut g = Graph::new();
        let x = data(&mut g, "x", &[2, 3]);
        let one = g.scalar(1.0).unwrap();
        let y = match k {
            0 => g.times(x, one).unwrap(),
            1 => g.times(one, x).unwrap(),
            _ => g.over(x, one).unwrap(),
        };
        let y = g.un(UnaryOp::Exp, y).unwrap();
        let (_, ops) = optimised(g, y, &[x23()]);
        assert_eq!(ops, vec!["exp", "input.data(x)"], "case {k}");
    }
}

#[test]
fn pattern_add_zero_keeps_the_sign_of_zero() {
    // x + 0 and 0 + x turn -0 into +0, so they may only be removed when that cannot matter;
    // x - 0 and x + (-0) are exact. 1/y exposes the sign of a zero.
    for k in 0..4 {
        let mut g = Graph::new();
        let x = data(&mut g, "x", &[2, 3]);
        let y = match k {
            0 => {
                let z = g.scalar(0.0).unwrap();
                g.plus(x, z).unwrap()
            }
            1 => {
                let z = g.scalar(0.0).unwrap();
                g.plus(z, x).unwrap()
            }
            2 => {
                let z = g.scalar(0.0).unwrap();
                g.minus(x, z).unwrap()
            }
            _ => {
                let z = g.scalar(-0.0).unwrap();
                g.plus(x, z).unwrap()
            }
        };
        let y = g.un(UnaryOp::Recip, y).unwrap();
        let (_, ops) = optimised(g, y, &[x23()]);
        if k >= 2 {
            assert_eq!(ops, vec!["input.data(x)", "recip"], "case {k}");
        } else {
            assert_eq!(ops.len(), 4, "case {k}: x + (+0) must stay: {ops:?}");
        }
    }
}

#[test]
fn pattern_double_negation() {
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[2, 3]);
    let a = g.neg(x).unwrap();
    let b = g.neg(a).unwrap();
    let y = g.un(UnaryOp::Sin, b).unwrap();
    let (_, ops) = optimised(g, y, &[x23()]);
    assert_eq!(ops, vec!["input.data(x)", "sin"]);
}

#[test]
fn pattern_reshape_chains() {
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[2, 3]);
    let a = g.add(Op::Reshape { shape: vec![6] }, &[x]).unwrap();
    let b = g.add(Op::Reshape { shape: vec![3, 2] }, &[a]).unwrap();
    let c = g.add(Op::Reshape { shape: vec![1, 6] }, &[b]).unwrap();
    let (g2, ops) = optimised(g, c, &[x23()]);
    assert_eq!(ops, vec!["input.data(x)", "reshape"]);
    assert_eq!(g2.shape(g2.output("y").unwrap()), &[1, 6]);
    // Back to the original shape: nothing left but the input.
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[2, 3]);
    let a = g.add(Op::Reshape { shape: vec![6] }, &[x]).unwrap();
    let b = g.add(Op::Reshape { shape: vec![2, 3] }, &[a]).unwrap();
    let (g2, ops) = optimised(g, b, &[x23()]);
    assert_eq!(ops, vec!["input.data(x)"]);
    assert_eq!(g2.output("y"), g2.find_input("x"));
}

#[test]
fn pattern_permute_chains() {
    let x4 = (
        "x",
        Tensor::f32(vec![2, 3, 4], (0..24).map(|v| v as f32).collect()),
    );
    // Inverse pairs vanish; other pairs compose into one permute with the right result.
    for (p1, p2) in [
        ([1usize, 2, 0], [2usize, 0, 1]),
        ([1, 0, 2], [1, 0, 2]),
        ([2, 0, 1], [0, 2, 1]),
        ([1, 2, 0], [1, 2, 0]),
    ] {
        let mut g = Graph::new();
        let x = data(&mut g, "x", &[2, 3, 4]);
        let a = g.add(Op::Permute { perm: p1.to_vec() }, &[x]).unwrap();
        let b = g.add(Op::Permute { perm: p2.to_vec() }, &[a]).unwrap();
        let (_, ops) = optimised(g, b, std::slice::from_ref(&x4));
        let identity = (0..3).all(|i| p1[p2[i]] == i);
        if identity {
            assert_eq!(ops, vec!["input.data(x)"], "{p1:?} then {p2:?}");
        } else {
            assert_eq!(ops.len(), 2, "{p1:?} then {p2:?}: {ops:?}");
        }
    }
}

#[test]
fn pattern_constants_fold() {
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[2, 3]);
    let c = g.scalar(2.0).unwrap();
    let cb = g.add(Op::Broadcast { shape: vec![2, 3] }, &[c]).unwrap();
    let e = g.un(UnaryOp::Exp, cb).unwrap();
    let h = g.fill(&[2, 3], 0.5).unwrap();
    let p = g.times(e, h).unwrap();
    let s = g.stop_grad(p).unwrap();
    let r = g.add(Op::Reshape { shape: vec![3, 2] }, &[s]).unwrap();
    let t = g.t(r).unwrap();
    let y = g.times(x, t).unwrap();
    let (g2, ops) = optimised(g, y, &[x23()]);
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(ops.contains(&"mul".to_string()));
    let fills: Vec<f32> =
        g2.g.node_indices()
            .filter_map(|i| match g2.node(i).op {
                Op::Fill { value, .. } => Some(value),
                _ => None,
            })
            .collect();
    assert_eq!(fills, vec![2f32.exp() * 0.5]);
}

#[test]
fn pattern_duplicates_merge_and_dead_nodes_go() {
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[2, 3]);
    let w = data(&mut g, "w", &[3, 4]);
    let _unused = data(&mut g, "unused", &[5]);
    let a1 = g.matmul(x, w).unwrap();
    let a2 = g.matmul(x, w).unwrap();
    let t1 = g.un(UnaryOp::Tanh, a1).unwrap();
    let t2 = g.un(UnaryOp::Tanh, a2).unwrap();
    let y = g.plus(t1, t2).unwrap();
    let dead = g.un(UnaryOp::Exp, y).unwrap();
    let _ = g.sum(dead, 0).unwrap();
    // Different constants must not merge (0.0 vs -0.0 included).
    let z1 = g.fill(&[2, 4], 0.0).unwrap();
    let z2 = g.fill(&[2, 4], -0.0).unwrap();
    let q = g.add(Op::Binary(BinaryOp::Div), &[z1, z2]).unwrap();
    let y = g.plus(y, q).unwrap();
    let wv = Tensor::f32(vec![3, 4], (0..12).map(|v| v as f32 * 0.1 - 0.5).collect());
    let (_, ops) = optimised(
        g,
        y,
        &[
            x23(),
            ("w", wv),
            ("unused", Tensor::f32(vec![5], vec![0.0; 5])),
        ],
    );
    // matmul, tanh, add(t, t), the folded 0/-0 = NaN fill, add, x, w.
    assert_eq!(
        ops,
        vec![
            "add",
            "add",
            "fill(NaN)",
            "input.data(w)",
            "input.data(x)",
            "matmul",
            "tanh"
        ]
    );
}
