//! Finite-difference checks of the composed builders (softmax, layer norm, GELU, …) and their
//! forward values, gradient blocking and frozen weights, top-k routing, partial needs, second
//! derivatives and the routed-experts projection.
//! The harness and its tolerances: `common/gradcheck.rs`.

mod common;

use common::gradcheck::*;

// ---------------------------------------------------------------------------------------------
// Composed builders
// ---------------------------------------------------------------------------------------------

#[test]
fn composed_builders() {
    for (si, &shape) in [&[1usize, 3][..], &[3, 50], &[50, 1], &[2, 3, 4]]
        .iter()
        .enumerate()
    {
        let seed = 14000 + si as u64 * 10;
        let n = numel(shape);
        let last = *shape.last().unwrap();
        let mut rng = Rng::new(seed);
        let x = rng.vec(n, -2.0, 2.0);
        check(
            &format!("softmax {shape:?}"),
            seed,
            FD,
            vec![p(shape, x.clone())],
            |g, ps, _| g.softmax(ps[0]).unwrap(),
        );
        check(
            &format!("gelu {shape:?}"),
            seed + 1,
            FD,
            vec![p(shape, x.clone())],
            |g, ps, _| g.gelu(ps[0]).unwrap(),
        );
        check(
            &format!("silu {shape:?}"),
            seed + 2,
            FD,
            vec![p(shape, x.clone())],
            |g, ps, _| g.silu(ps[0]).unwrap(),
        );
        let w = rng.vec(last, 0.5, 1.5);
        let b = rng.vec(last, -0.5, 0.5);
        if last > 1 {
            // Normalisation of a row is a strongly curved function of it: finer h.
            check(
                &format!("layer_norm {shape:?}"),
                seed + 3,
                FD_FINE,
                vec![p(shape, x.clone()), p(&[last], w.clone()), p(&[last], b)],
                |g, ps, _| g.layer_norm(ps[0], ps[1], ps[2], 1e-5).unwrap(),
            );
        }
        check(
            &format!("rms_norm {shape:?}"),
            seed + 4,
            FD_FINE,
            vec![p(shape, x.clone()), p(&[last], w)],
            |g, ps, _| g.rms_norm(ps[0], ps[1], 1e-5).unwrap(),
        );
        let m = 3;
        let wl = rng.vec(m * last, -1.0, 1.0);
        let bl = rng.vec(m, -1.0, 1.0);
        check(
            &format!("linear {shape:?}"),
            seed + 5,
            FD,
            vec![p(shape, x.clone()), p(&[m, last], wl.clone()), p(&[m], bl)],
            |g, ps, _| g.linear(ps[0], ps[1], Some(ps[2])).unwrap(),
        );
        check(
            &format!("linear (no bias) {shape:?}"),
            seed + 6,
            FD,
            vec![p(shape, x), p(&[m, last], wl)],
            |g, ps, _| g.linear(ps[0], ps[1], None).unwrap(),
        );
    }
    // layer_norm with a single feature: the output is exactly b, d/dx = d/dw = 0.
    check(
        "layer_norm [3,1]",
        14100,
        FD,
        vec![
            p(&[3, 1], vec![0.3, -1.0, 2.0]),
            p(&[1], vec![1.2]),
            p(&[1], vec![0.1]),
        ],
        |g, ps, _| g.layer_norm(ps[0], ps[1], ps[2], 1e-5).unwrap(),
    );
}

#[test]
fn composed_forward_values() {
    // Spot-check the composed builders' forward values against host formulas.
    let xs = [-2.0f32, -0.3, 0.0, 0.7, 1.9];
    let mut g = Graph::new();
    let x = data(&mut g, "x", &[1, 5]);
    let w = data(&mut g, "w", &[5]);
    let b = data(&mut g, "b", &[5]);
    let sm = g.softmax(x).unwrap();
    let ge = g.gelu(x).unwrap();
    let si = g.silu(x).unwrap();
    let ln = g.layer_norm(x, w, b, 1e-5).unwrap();
    let rn = g.rms_norm(x, w, 1e-5).unwrap();
    let mut inp = HashMap::new();
    inp.insert("x".to_string(), Tensor::f32(vec![1, 5], xs.to_vec()));
    inp.insert(
        "w".to_string(),
        Tensor::f32(vec![5], vec![1.0, 2.0, 0.5, 1.0, 1.0]),
    );
    inp.insert(
        "b".to_string(),
        Tensor::f32(vec![5], vec![0.0, 0.1, 0.0, -0.1, 0.0]),
    );
    let v = run(&g, &inp).unwrap();
    let xd: Vec<f64> = xs.iter().map(|&v| v as f64).collect();
    let z: f64 = xd.iter().map(|v| v.exp()).sum();
    let want_sm: Vec<f32> = xd.iter().map(|v| (v.exp() / z) as f32).collect();
    assert_close(v[&sm].f(), &want_sm, 1e-6, "softmax");
    // Exact GELU x·Φ(x): Φ(-2) = 0.0227501, Φ(0.7) = 0.7580363, Φ(1.9) = 0.9712834.
    assert_close(
        &[v[&ge].f()[0], v[&ge].f()[3], v[&ge].f()[4]],
        &[-0.0455003, 0.5306252, 1.8454385],
        1e-5,
        "gelu",
    );
    let want_si: Vec<f32> = xd.iter().map(|v| (v / (1.0 + (-v).exp())) as f32).collect();
    assert_close(v[&si].f(), &want_si, 1e-6, "silu");
    let mu = xd.iter().sum::<f64>() / 5.0;
    let var = xd.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / 5.0;
    let (wv, bv) = ([1.0, 2.0, 0.5, 1.0, 1.0], [0.0, 0.1, 0.0, -0.1, 0.0]);
    let want_ln: Vec<f32> = (0..5)
        .map(|i| ((xd[i] - mu) / (var + 1e-5).sqrt() * wv[i] + bv[i]) as f32)
        .collect();
    assert_close(v[&ln].f(), &want_ln, 1e-5, "layer_norm");
    let ms = xd.iter().map(|v| v * v).sum::<f64>() / 5.0;
    let want_rn: Vec<f32> = (0..5)
        .map(|i| (xd[i] / (ms + 1e-5).sqrt() * wv[i]) as f32)
        .collect();
    assert_close(v[&rn].f(), &want_rn, 1e-5, "rms_norm");
}

// ---------------------------------------------------------------------------------------------
// Gradient blocking, frozen weights, top-k routing
// ---------------------------------------------------------------------------------------------

fn loss_of(g: &mut Graph, y: NodeId) -> NodeId {
    let s = g.shape(y).to_vec();
    let r = data(g, "r", &s);
    let pr = g.times(y, r).unwrap();
    g.sum_all(pr).unwrap()
}

#[test]
fn blocking_ops_give_no_gradient() {
    // stop_grad
    let mut g = Graph::new();
    let x = param(&mut g, "x", &[3, 4]);
    let y = g.stop_grad(x).unwrap();
    let l = loss_of(&mut g, y);
    assert_eq!(grad(&mut g, l, &[x]).unwrap(), vec![None]);

    // TopKMask
    let mut g = Graph::new();
    let x = param(&mut g, "x", &[3, 4]);
    let y = g.add(Op::TopKMask { k: 2 }, &[x]).unwrap();
    let l = loss_of(&mut g, y);
    assert_eq!(grad(&mut g, l, &[x]).unwrap(), vec![None]);

    // OneHot of an i64 "parameter", and of a cast float.
    let mut g = Graph::new();
    let i = input(&mut g, "i", InputKind::Param, &[3], DType::I64);
    let x = param(&mut g, "x", &[3]);
    let y = g.add(Op::OneHot { depth: 4 }, &[i]).unwrap();
    let c = g.add(Op::Cast { to: DType::I64 }, &[x]).unwrap();
    let y2 = g.add(Op::OneHot { depth: 4 }, &[c]).unwrap();
    let s = g.plus(y, y2).unwrap();
    let l = loss_of(&mut g, s);
    assert_eq!(grad(&mut g, l, &[i, x]).unwrap(), vec![None, None]);

    // Gt and Eq
    for b in [BinaryOp::Gt, BinaryOp::Eq] {
        let mut g = Graph::new();
        let x = param(&mut g, "x", &[2, 3]);
        let z = param(&mut g, "z", &[2, 3]);
        let y = g.add(Op::Binary(b), &[x, z]).unwrap();
        let l = loss_of(&mut g, y);
        assert_eq!(grad(&mut g, l, &[x, z]).unwrap(), vec![None, None], "{b:?}");
    }

    // A loss that does not depend on a parameter at all.
    let mut g = Graph::new();
    let x = param(&mut g, "x", &[2]);
    let u = param(&mut g, "u", &[2]);
    let l = loss_of(&mut g, x);
    let gr = grad(&mut g, l, &[x, u]).unwrap();
    assert!(gr[0].is_some());
    assert_eq!(gr[1], None);
}

#[test]
fn stop_grad_blocks_only_its_own_path() {
    // loss = Σ (x + stop_grad(x)·x) · r  →  d/dx = r·(1 + x)  (not r·(1 + 2x)).
    let mut g = Graph::new();
    let x = param(&mut g, "x", &[4]);
    let s = g.stop_grad(x).unwrap();
    let sx = g.times(s, x).unwrap();
    let y = g.plus(x, sx).unwrap();
    let l = loss_of(&mut g, y);
    let dx = grad(&mut g, l, &[x]).unwrap()[0].unwrap();
    let mut inp = HashMap::new();
    inp.insert(
        "x".to_string(),
        Tensor::f32(vec![4], vec![1., 2., -3., 0.5]),
    );
    inp.insert("r".to_string(), Tensor::f32(vec![4], vec![1., -1., 2., 4.]));
    let v = run(&g, &inp).unwrap();
    assert_eq!(v[&dx].f(), &[2., -3., -4., 6.]);
}

#[test]
fn frozen_weights_get_no_gradient_but_pass_it_through() {
    // h = ((x @ B) @ W) @ A with B, A trainable and W frozen; W's shape [5, 6] is unique.
    let build = |g: &mut Graph| {
        let x = data(g, "x", &[4, 3]);
        let b = param(g, "B", &[3, 5]);
        let w = input(g, "W", InputKind::Frozen, &[5, 6], DType::F32);
        let a = param(g, "A", &[6, 2]);
        let xb = g.matmul(x, b).unwrap();
        let xbw = g.matmul(xb, w).unwrap();
        let y = g.matmul(xbw, a).unwrap();
        (xb, b, a, y)
    };
    let mut g = Graph::new();
    let (xb, b, a, y) = build(&mut g);
    let l = loss_of(&mut g, y);
    let before: std::collections::HashSet<NodeId> = g.g.node_indices().collect();
    let gr = grad(&mut g, l, &[b, a]).unwrap();
    assert!(gr.iter().all(|o| o.is_some()));
    for id in g.g.node_indices().filter(|i| !before.contains(i)) {
        assert_ne!(
            g.shape(id),
            &[5, 6],
            "a W-shaped gradient node was built: {}",
            g.node(id).op.name()
        );
        // dW = (x B)ᵀ d(x B W) is the only gradient that would read x B.
        assert!(
            !g.inputs(id).contains(&xb),
            "x B is only needed for dW: {}",
            g.node(id).op.name()
        );
    }
    // And the values are right (FD through the frozen W).
    let mut rng = Rng::new(15000);
    let (xv, wv) = (rng.vec(12, -1.0, 1.0), rng.vec(30, -1.0, 1.0));
    check(
        "x@B@W@A",
        15000,
        FD,
        vec![
            p(&[3, 5], rng.vec(15, -1.0, 1.0)),
            p(&[6, 2], rng.vec(12, -1.0, 1.0)),
        ],
        |g, ps, extra| {
            let x = data(g, "x", &[4, 3]);
            let w = input(g, "W", InputKind::Frozen, &[5, 6], DType::F32);
            extra.insert("x".into(), Tensor::f32(vec![4, 3], xv));
            extra.insert("W".into(), Tensor::f32(vec![5, 6], wv));
            let xb = g.matmul(x, ps[0]).unwrap();
            let xbw = g.matmul(xb, w).unwrap();
            g.matmul(xbw, ps[1]).unwrap()
        },
    );
}

#[test]
fn topk_renormalised_routing_gradient() {
    // p = softmax(z); m = TopKMask(p); w = (p·m) / Σ(p·m). Logits are distinct (spacing ≥ 0.5)
    // so the selection does not change under the FD perturbation.
    for (ci, &(rows, e, k)) in [(3usize, 8usize, 2usize), (1, 3, 1), (4, 50, 3), (2, 4, 4)]
        .iter()
        .enumerate()
    {
        let seed = 16000 + ci as u64;
        let mut rng = Rng::new(seed);
        let mut z = Vec::new();
        for _ in 0..rows {
            z.extend(rng.distinct(e, 0.5));
        }
        check(
            &format!("top-{k} routing [{rows},{e}]"),
            seed,
            FD,
            vec![p(&[rows, e], z)],
            |g, ps, _| {
                let pr = g.softmax(ps[0]).unwrap();
                let m = g.add(Op::TopKMask { k }, &[pr]).unwrap();
                let pm = g.times(pr, m).unwrap();
                let s = g.sum(pm, 1).unwrap();
                g.over(pm, s).unwrap()
            },
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Partial needs and second derivatives
// ---------------------------------------------------------------------------------------------

#[test]
fn only_one_operand_trainable() {
    // The other operand is a Data input: exercises the `needs[i] == false` branches.
    use BinaryOp::*;
    for (bi, &b) in [Add, Sub, Mul, Div, Pow, Max, Min].iter().enumerate() {
        for which in 0..2 {
            let seed = 17000 + (bi * 2 + which) as u64;
            let mut rng = Rng::new(seed);
            let (x, y) = match b {
                Div => (rng.vec(12, -2.0, 2.0), rng.signed(12, 0.5, 2.0)),
                Pow => (rng.vec(12, 0.5, 2.0), rng.vec(12, -1.5, 1.5)),
                Max | Min => {
                    let x = rng.vec(12, -1.0, 1.0);
                    let y = x
                        .iter()
                        .zip(rng.signed(12, 0.05, 1.0))
                        .map(|(a, d)| a + d)
                        .collect();
                    (x, y)
                }
                _ => (rng.vec(12, -2.0, 2.0), rng.vec(12, -2.0, 2.0)),
            };
            let (pv, dv) = if which == 0 { (x, y) } else { (y, x) };
            check(
                &format!("{b:?} with only operand {which} trainable"),
                seed,
                FD_FINE,
                vec![p(&[3, 4], pv)],
                |g, ps, extra| {
                    let d = data(g, "d", &[3, 4]);
                    extra.insert("d".into(), Tensor::f32(vec![3, 4], dv));
                    let ins = if which == 0 { [ps[0], d] } else { [d, ps[0]] };
                    g.add(Op::Binary(b), &ins).unwrap()
                },
            );
        }
    }
    // matmul, solve and concat with one trainable operand.
    for which in 0..2 {
        let mut rng = Rng::new(17100 + which);
        let (a, b) = (rng.vec(6, -1.0, 1.0), rng.vec(8, -1.0, 1.0));
        let (pv, ps_, dv, ds) = if which == 0 {
            (a, vec![3, 2], b, vec![2, 4])
        } else {
            (b, vec![2, 4], a, vec![3, 2])
        };
        check(
            &format!("matmul with only operand {which} trainable"),
            17100 + which,
            FD,
            vec![p(&ps_, pv)],
            |g, ps, extra| {
                let d = data(g, "d", &ds);
                extra.insert("d".into(), Tensor::f32(ds.clone(), dv));
                if which == 0 {
                    g.matmul(ps[0], d).unwrap()
                } else {
                    g.matmul(d, ps[0]).unwrap()
                }
            },
        );
        let a = spd(&mut rng, 1, 3);
        let b = rng.vec(6, -1.0, 1.0);
        let (pv, ps_, dv, ds, sym) = if which == 0 {
            (a, vec![3, 3], b, vec![3, 2], true)
        } else {
            (b, vec![3, 2], a, vec![3, 3], false)
        };
        let q = if sym { p_sym(&ps_, pv) } else { p(&ps_, pv) };
        check(
            &format!("spd_solve with only operand {which} trainable"),
            17110 + which,
            FD_FINE,
            vec![q],
            |g, ps, extra| {
                let d = data(g, "d", &ds);
                extra.insert("d".into(), Tensor::f32(ds.clone(), dv));
                let ins = if which == 0 { [ps[0], d] } else { [d, ps[0]] };
                g.add(Op::SpdSolve { damping: 0.0 }, &ins).unwrap()
            },
        );
    }
    let mut rng = Rng::new(17200);
    let (a, c) = (rng.vec(6, -1.0, 1.0), rng.vec(3, -1.0, 1.0));
    let dv = rng.vec(3, -1.0, 1.0);
    check(
        "concat [param, data, param]",
        17200,
        FD,
        vec![p(&[2, 3], a), p(&[1, 3], c)],
        |g, ps, extra| {
            let d = data(g, "d", &[1, 3]);
            extra.insert("d".into(), Tensor::f32(vec![1, 3], dv));
            g.add(Op::Concat { axis: 0 }, &[ps[0], d, ps[1]]).unwrap()
        },
    );
}

#[test]
fn second_derivatives() {
    // out = d/dx Σ f(x)·R1: checks the VJPs of the nodes that VJP rules emit.
    type F = fn(&mut Graph, NodeId) -> NodeId;
    let cases: &[(&str, F, f32, f32)] = &[
        ("tanh", |g, x| g.un(UnaryOp::Tanh, x).unwrap(), -2.0, 2.0),
        (
            "sigmoid",
            |g, x| g.un(UnaryOp::Sigmoid, x).unwrap(),
            -2.0,
            2.0,
        ),
        ("exp", |g, x| g.un(UnaryOp::Exp, x).unwrap(), -1.0, 1.0),
        ("log", |g, x| g.un(UnaryOp::Log, x).unwrap(), 0.5, 2.0),
        ("sqrt", |g, x| g.un(UnaryOp::Sqrt, x).unwrap(), 0.5, 2.0),
        ("recip", |g, x| g.un(UnaryOp::Recip, x).unwrap(), 0.5, 2.0),
        ("erf", |g, x| g.un(UnaryOp::Erf, x).unwrap(), -2.0, 2.0),
        ("sin", |g, x| g.un(UnaryOp::Sin, x).unwrap(), -2.0, 2.0),
        ("cos", |g, x| g.un(UnaryOp::Cos, x).unwrap(), -2.0, 2.0),
        (
            "x/(1+x²)",
            |g, x| {
                let s = g.times(x, x).unwrap();
                let one = g.scalar(1.0).unwrap();
                let d = g.plus(s, one).unwrap();
                g.over(x, d).unwrap()
            },
            -2.0,
            2.0,
        ),
        (
            "pow(x, 2.5)",
            |g, x| {
                let e = g.scalar(2.5).unwrap();
                g.bin(BinaryOp::Pow, x, e).unwrap()
            },
            0.5,
            2.0,
        ),
        ("softmax", |g, x| g.softmax(x).unwrap(), -2.0, 2.0),
        ("gelu", |g, x| g.gelu(x).unwrap(), -2.0, 2.0),
        (
            "x xᵀ",
            |g, x| {
                let xt = g.t(x).unwrap();
                g.matmul(x, xt).unwrap()
            },
            -1.0,
            1.0,
        ),
        (
            "rms_norm",
            |g, x| {
                let w = g.fill(&[4], 1.0).unwrap();
                g.rms_norm(x, w, 1e-5).unwrap()
            },
            -2.0,
            2.0,
        ),
        (
            "sum of slices and concat",
            |g, x| {
                let a = g.slice(x, 1, 0, 2).unwrap();
                let b = g.slice(x, 1, 1, 4).unwrap();
                let c = g.concat(&[a, b], 1).unwrap();
                let e = g.un(UnaryOp::Tanh, c).unwrap();
                let m = g.sum(e, 0).unwrap();
                g.times(m, m).unwrap()
            },
            -2.0,
            2.0,
        ),
    ];
    for (ci, &(name, f, lo, hi)) in cases.iter().enumerate() {
        let seed = 18000 + ci as u64;
        let mut rng = Rng::new(seed);
        let x = rng.vec(12, lo, hi);
        let r1 = rng.vec(12, -1.0, 1.0);
        check(
            &format!("second derivative of {name}"),
            seed,
            FD_FINE,
            vec![p(&[3, 4], x)],
            |g, ps, _| {
                let y = f(g, ps[0]);
                let s = g.shape(y).to_vec();
                let n = numel(&s);
                let r = g
                    .add(
                        Op::Literal {
                            shape: s,
                            data: std::sync::Arc::new(
                                r1[..n.min(12)].iter().cycle().take(n).copied().collect(),
                            ),
                        },
                        &[],
                    )
                    .unwrap();
                let pr = g.times(y, r).unwrap();
                let l = g.sum_all(pr).unwrap();
                grad(g, l, &[ps[0]]).unwrap()[0].unwrap()
            },
        );
    }
}

#[test]
fn grad_rejects_a_non_scalar_loss() {
    let mut g = Graph::new();
    let x = param(&mut g, "x", &[2, 3]);
    let y = g.un(UnaryOp::Tanh, x).unwrap();
    assert!(grad(&mut g, y, &[x]).is_err());
    // [1, 1] counts as a scalar.
    let s = g.sum(y, 0).unwrap();
    let s = g.sum(s, 1).unwrap();
    assert!(grad(&mut g, s, &[x]).unwrap()[0].is_some());
}

/// The routed projection's gradients (`RoutedExpand` for `x`, `RoutedOuter` for `a`) against
/// central differences, and its values against plain `Dropout` with each selected expert's
/// salt followed by an f64 dot product (blocks of unselected experts are exactly 0).
#[test]
fn routed_project_gradients_and_masks() {
    use lorac_compiler::ir::ops::eval;
    let (t, n, e, d, k) = (5, 19, 4, 2, 2);
    let salts: Vec<u64> = vec![11, 22, 33, 44];
    let op = Op::RoutedProject { p: 0.4, k };
    let keep_op = Op::RoutedKeep {
        p: 0.4,
        salts: salts.clone(),
        k,
        n,
    };
    // Rows select experts {0, 2}, {1, 3}, {2, 3}, {0, 1}, {1, 2} (logits decide the top 2).
    let sel = [[0, 2], [1, 3], [2, 3], [0, 1], [1, 2]];
    let mut logits = vec![0f32; t * e];
    for (r, s) in sel.iter().enumerate() {
        for &x in s {
            logits[r * e + x] = 1.0 + x as f32;
        }
    }
    let mut rng = Rng::new(31);
    let (xv, av) = (rng.vec(t * n, -1.0, 1.0), rng.vec(e * d * n, -1.0, 1.0));
    let (build_op, build_keep) = (op.clone(), keep_op.clone());
    let lv = logits.clone();
    check(
        "routed_project",
        7,
        FD,
        vec![p(&[t, n], xv.clone()), p(&[e * d, n], av.clone())],
        move |g, ps, extra| {
            let l = data(g, "logits", &[t, e]);
            let s = data_i64(g, "seed", &[1]);
            extra.insert("logits".into(), Tensor::f32(vec![t, e], lv));
            extra.insert("seed".into(), Tensor::i64(vec![1], vec![123]));
            let m = g.add(Op::TopKMask { k }, &[l]).unwrap();
            let keep = g.add(build_keep, &[m, s]).unwrap();
            g.add(build_op, &[ps[0], ps[1], m, keep]).unwrap()
        },
    );
    // Values: block e of row r is (dropout_e(x) row r) · a[e·d + q], other blocks 0.
    let mask = eval(&Op::TopKMask { k }, &[&Tensor::f32(vec![t, e], logits)]).unwrap();
    let (xt, at, st) = (
        Tensor::f32(vec![t, n], xv),
        Tensor::f32(vec![e * d, n], av.clone()),
        Tensor::i64(vec![1], vec![123]),
    );
    let keep = eval(&keep_op, &[&mask, &st]).unwrap();
    let out = eval(&op, &[&xt, &at, &mask, &keep]).unwrap();
    assert_eq!(out.shape, vec![t, e * d]);
    for (r, s) in sel.iter().enumerate() {
        for (ex, &salt) in salts.iter().enumerate() {
            let dropped = eval(&Op::Dropout { p: 0.4, salt }, &[&xt, &st]).unwrap();
            for q in 0..d {
                let c = ex * d + q;
                let got = out.f()[r * e * d + c];
                if !s.contains(&ex) {
                    assert_eq!(got, 0.0, "row {r} unselected expert {ex}");
                    continue;
                }
                let want: f64 = (0..n)
                    .map(|j| dropped.f()[r * n + j] as f64 * av[c * n + j] as f64)
                    .sum();
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "row {r} expert {ex}: {got} vs {want}"
                );
            }
        }
    }
}
