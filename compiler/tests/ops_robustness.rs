//! Robustness of graph building: builders return errors instead of panicking, random ops on
//! random operands never panic, and the verifier accepts valid graphs and rejects corrupted
//! ones. Helpers: `common/shapes.rs`.

mod common;

use common::shapes::*;

#[test]
fn builders_return_errors_not_panics() {
    // The composed builders on top of `Graph::add` report bad operands as errors too.
    type Build = fn(&mut Graph, NodeId, NodeId) -> Result<NodeId, lorac_compiler::ir::IrError>;
    let cases: &[(&str, &[usize], &[usize], Build)] = &[
        ("bin mismatch", &[2, 3], &[4], |g, a, b| g.plus(a, b)),
        ("matmul inner", &[2, 3], &[2, 3], |g, a, b| g.matmul(a, b)),
        ("t of a vector", &[3], &[3], |g, a, _| g.t(a)),
        ("permute", &[2, 3], &[3], |g, a, _| g.permute(a, &[0, 0])),
        ("reshape", &[2, 3], &[3], |g, a, _| g.reshape(a, &[7])),
        ("bc", &[2, 3], &[3], |g, a, _| g.bc(a, &[3, 3])),
        ("slice end", &[2, 3], &[3], |g, a, _| g.slice(a, 1, 1, 4)),
        ("slice axis", &[2, 3], &[3], |g, a, _| g.slice(a, 2, 0, 1)),
        ("sum axis", &[2, 3], &[3], |g, a, _| g.sum(a, 2)),
        ("mean axis", &[2, 3], &[3], |g, a, _| g.mean(a, 2)),
        ("max_along axis", &[2, 3], &[3], |g, a, _| g.max_along(a, 5)),
        ("concat", &[2, 3], &[3], |g, a, b| g.concat(&[a, b], 0)),
        ("softmax of a scalar", &[], &[3], |g, a, _| g.softmax(a)),
        ("layer_norm of a scalar", &[], &[], |g, a, b| {
            g.layer_norm(a, b, b, 1e-5)
        }),
        ("layer_norm weight", &[2, 3], &[4], |g, a, b| {
            g.layer_norm(a, b, b, 1e-5)
        }),
        ("rms_norm of a scalar", &[], &[], |g, a, b| {
            g.rms_norm(a, b, 1e-5)
        }),
        ("rms_norm weight", &[2, 3], &[2], |g, a, b| {
            g.rms_norm(a, b, 1e-5)
        }),
        ("linear of a scalar", &[], &[4, 1], |g, a, b| {
            g.linear(a, b, None)
        }),
        ("linear scalar weight", &[2, 3], &[], |g, a, b| {
            g.linear(a, b, None)
        }),
        ("linear inner", &[2, 3], &[4, 2], |g, a, b| {
            g.linear(a, b, None)
        }),
        ("sum_to longer", &[2, 3], &[1], |g, a, _| {
            g.sum_to(a, &[1, 2, 3])
        }),
        ("sum_to incompatible", &[2, 3], &[1], |g, a, _| {
            g.sum_to(a, &[4])
        }),
    ];
    let mut panics = Vec::new();
    for (name, sa, sb, f) in cases {
        let (mut g, ids) = operands(&[(sa, F32), (sb, F32)]);
        match catch_unwind(AssertUnwindSafe(|| f(&mut g, ids[0], ids[1]))) {
            Ok(Ok(y)) => panic!("{name}: accepted as {:?}", g.shape(y)),
            Ok(Err(_)) => {}
            Err(_) => panics.push(*name),
        }
    }
    assert!(
        panics.is_empty(),
        "builders that panicked instead of returning Err: {panics:?}"
    );
}

/// Random ops on random operand types: `add` never panics; when it accepts, the interpreter
/// either errors cleanly or produces exactly the inferred type, and the graph verifies.
#[test]
fn random_ops_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut accepted = 0;
    for case in 0..12000 {
        let nops = 1 + rng.below(3);
        let mut ins: Vec<(Vec<usize>, DType)> = Vec::new();
        for _ in 0..nops {
            let rank = rng.below(4);
            let shape: Vec<usize> = (0..rank)
                .map(|_| [0, 1, 1, 2, 3, 3, 4][rng.below(7)])
                .collect();
            let dt = if rng.below(5) == 0 { I64 } else { F32 };
            ins.push((shape, dt));
        }
        let small = |rng: &mut Rng| rng.below(5);
        let shape = |rng: &mut Rng| {
            (0..rng.below(4))
                .map(|_| rng.below(4))
                .collect::<Vec<usize>>()
        };
        let op = match rng.below(18) {
            0 => Op::Unary(UNARY[rng.below(12)]),
            1 => Op::Binary(BINARY[rng.below(9)]),
            2 => Op::Reduce {
                op: if rng.below(2) == 0 {
                    ReduceOp::Sum
                } else {
                    ReduceOp::Max
                },
                axis: small(&mut rng),
            },
            3 => Op::MatMul,
            4 => Op::Reshape {
                shape: shape(&mut rng),
            },
            5 => {
                let n = rng.below(4);
                Op::Permute {
                    perm: (0..n).map(|_| rng.below(4)).collect(),
                }
            }
            6 => Op::Broadcast {
                shape: shape(&mut rng),
            },
            7 => Op::Slice {
                axis: small(&mut rng),
                start: small(&mut rng),
                end: small(&mut rng),
            },
            8 => Op::Concat {
                axis: small(&mut rng),
            },
            9 => Op::Gather,
            10 => Op::ScatterAdd {
                rows: small(&mut rng),
            },
            11 => Op::OneHot {
                depth: small(&mut rng),
            },
            12 => Op::TopKMask { k: small(&mut rng) },
            13 => Op::StopGrad,
            14 => Op::Cast {
                to: if rng.below(2) == 0 { F32 } else { I64 },
            },
            15 => Op::SpdSolve { damping: 0.0 },
            16 => Op::Fill {
                shape: shape(&mut rng),
                value: 1.0,
            },
            _ => Op::Literal {
                shape: shape(&mut rng),
                data: Arc::new(vec![0.0; rng.below(4)]),
            },
        };
        let typed: Vec<(&[usize], DType)> = ins.iter().map(|(s, d)| (s.as_slice(), *d)).collect();
        let (mut g, ids) = operands(&typed);
        let Ok(y) = try_add(&mut g, &op, &ids) else {
            continue;
        };
        accepted += 1;
        g.set_output("y", y);
        verify(&g).unwrap_or_else(|e| panic!("case {case}: {op:?} on {ins:?}: verify: {e}"));
        let vals = values(&typed, case);
        let res = catch_unwind(AssertUnwindSafe(|| run(&g, &vals)));
        match res {
            Err(_) => panic!("case {case}: interpreter panicked on {op:?} with operands {ins:?}"),
            Ok(Err(_)) => {}
            Ok(Ok(v)) => {
                let t = &v[&y];
                assert_eq!(t.shape, g.shape(y), "case {case}: {op:?} on {ins:?}");
                let ok_dt = matches!(
                    (&t.data, g.node(y).dtype),
                    (Data::F32(_), F32) | (Data::I64(_), I64)
                );
                assert!(
                    ok_dt,
                    "case {case}: {op:?} on {ins:?}: interpreter dtype differs from {:?}",
                    g.node(y).dtype
                );
                let len = match &t.data {
                    Data::F32(d) => d.len(),
                    Data::I64(d) => d.len(),
                };
                assert_eq!(len, numel(&t.shape), "case {case}: {op:?} on {ins:?}");
            }
        }
    }
    assert!(
        accepted > 600,
        "only {accepted} random ops were valid: the generator is too weak"
    );
}

#[test]
fn verify_accepts_valid_graphs() {
    let mut g = Graph::new();
    let x = g
        .add(
            Op::Input {
                name: "x".into(),
                kind: InputKind::Data,
                shape: vec![2, 3, 8],
                dtype: F32,
            },
            &[],
        )
        .unwrap();
    let ids = g
        .add(
            Op::Input {
                name: "ids".into(),
                kind: InputKind::Data,
                shape: vec![2, 3],
                dtype: I64,
            },
            &[],
        )
        .unwrap();
    let emb = g
        .add(
            Op::Input {
                name: "emb".into(),
                kind: InputKind::Frozen,
                shape: vec![10, 8],
                dtype: F32,
            },
            &[],
        )
        .unwrap();
    let w = g
        .add(
            Op::Input {
                name: "w".into(),
                kind: InputKind::Frozen,
                shape: vec![4, 8],
                dtype: F32,
            },
            &[],
        )
        .unwrap();
    let a = g
        .add(
            Op::Input {
                name: "a".into(),
                kind: InputKind::Param,
                shape: vec![8, 2],
                dtype: F32,
            },
            &[],
        )
        .unwrap();
    let lnw = g
        .add(
            Op::Input {
                name: "lnw".into(),
                kind: InputKind::Param,
                shape: vec![8],
                dtype: F32,
            },
            &[],
        )
        .unwrap();
    let e = g.add(Op::Gather, &[emb, ids]).unwrap();
    let h = g.plus(x, e).unwrap();
    let h = g.layer_norm(h, lnw, lnw, 1e-5).unwrap();
    let h = g.rms_norm(h, lnw, 1e-6).unwrap();
    let y = g.linear(h, w, None).unwrap();
    let y = g.gelu(y).unwrap();
    let p = g.softmax(y).unwrap();
    let m = g.add(Op::TopKMask { k: 2 }, &[p]).unwrap();
    let pm = g.times(p, m).unwrap();
    let hp = g.permute(h, &[1, 0, 2]).unwrap();
    let hr = g.reshape(hp, &[6, 8]).unwrap();
    let lo = g.matmul(hr, a).unwrap();
    let lo = g.silu(lo).unwrap();
    let s = g.slice(lo, 0, 1, 4).unwrap();
    let c = g.concat(&[s, s, lo], 0).unwrap();
    let oh = g.add(Op::OneHot { depth: 10 }, &[ids]).unwrap();
    let oh = g.reshape(oh, &[6, 10]).unwrap();
    let idf = g.reshape(ids, &[6]).unwrap();
    let sc = g.add(Op::ScatterAdd { rows: 10 }, &[hr, idf]).unwrap();
    let ata = {
        let at = g.t(a).unwrap();
        g.matmul(at, a).unwrap()
    };
    let sol = g.add(Op::SpdSolve { damping: 1e-3 }, &[ata, ata]).unwrap();
    let l1 = g.sum_all(pm).unwrap();
    let l2 = g.sum_all(c).unwrap();
    let l3 = g.sum_all(oh).unwrap();
    let l4 = g.sum_all(sc).unwrap();
    let l5 = g.sum_all(sol).unwrap();
    let l = g.plus(l1, l2).unwrap();
    let l = g.plus(l, l3).unwrap();
    let l = g.plus(l, l4).unwrap();
    let loss = g.plus(l, l5).unwrap();
    g.set_output("loss", loss);
    verify(&g).unwrap();
    let grads = lorac_compiler::passes::autodiff::grad(&mut g, loss, &[a, lnw]).unwrap();
    for (n, gr) in ["da", "dlnw"].iter().zip(grads) {
        g.set_output(n, gr.unwrap());
    }
    verify(&g).unwrap();
    lorac_compiler::passes::run_pipeline(&mut g, |p, g| {
        verify(g).unwrap_or_else(|e| panic!("after {p}: {e}"))
    })
    .unwrap();
    verify(&g).unwrap();
}

#[test]
fn verify_rejects_corrupted_graphs() {
    let build = || {
        let mut g = Graph::new();
        let x = g
            .add(
                Op::Input {
                    name: "x".into(),
                    kind: InputKind::Data,
                    shape: vec![2, 3],
                    dtype: F32,
                },
                &[],
            )
            .unwrap();
        let y = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
        let z = g.add(Op::Binary(BinaryOp::Sub), &[y, x]).unwrap();
        g.set_output("z", z);
        (g, x, y, z)
    };
    let (g, ..) = build();
    verify(&g).unwrap();

    // A stored shape that the operands do not give.
    let (mut g, _, y, _) = build();
    g.g[y].shape = vec![3, 2];
    assert!(verify(&g).is_err());
    // A stored dtype that the operands do not give.
    let (mut g, _, y, _) = build();
    g.g[y].dtype = I64;
    assert!(verify(&g).is_err());
    // Two inputs with one name.
    let (mut g, ..) = build();
    g.add(
        Op::Input {
            name: "x".into(),
            kind: InputKind::Param,
            shape: vec![1],
            dtype: F32,
        },
        &[],
    )
    .unwrap();
    assert!(verify(&g).is_err());
    // An output pointing at a removed node.
    let (mut g, _, _, z) = build();
    g.g.remove_node(z);
    assert!(verify(&g).is_err());
    // An operand-index gap (operand 1 missing, a stray operand 2).
    let (mut g, x, _, z) = build();
    let e = g.g.find_edge(x, z).unwrap();
    g.g.remove_edge(e);
    g.g.add_edge(x, z, 2);
    assert!(verify(&g).is_err());
    // A missing operand.
    let (mut g, x, _, z) = build();
    let e = g.g.find_edge(x, z).unwrap();
    g.g.remove_edge(e);
    assert!(verify(&g).is_err());
    // A cycle.
    let (mut g, _, y, z) = build();
    g.g.add_edge(z, y, 1);
    assert!(verify(&g).is_err());
}

/// A routed op's keep bits must come from a `RoutedKeep` of its own dropout rate, slot count
/// and row width. Shapes alone cannot tell: rows of 380 and 384 both take 6 words, and
/// k = 2 slots of 6 words (rows of 384) are as many words as k = 3 of 4 (rows of 256).
#[test]
fn routed_ops_take_keep_bits_drawn_for_them() {
    let (t, e, q) = (5, 4, 8);
    let (mut g, ids) = operands(&[
        (&[t, e], F32),
        (&[1], I64),
        (&[t, 384], F32),
        (&[q, 384], F32),
        (&[t, 380], F32),
        (&[q, 380], F32),
        (&[t, 12], I64),
    ]);
    let (mask, seed, x, a, x380, a380, raw) =
        (ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], ids[6]);
    let salts: Vec<u64> = (0..e as u64).collect();
    let keep = |g: &mut Graph, p: f32, k: usize, n: usize| {
        let op = Op::RoutedKeep {
            p,
            salts: salts.clone(),
            k,
            n,
        };
        try_add(g, &op, &[mask, seed]).unwrap()
    };
    let k384 = keep(&mut g, 0.1, 2, 384);
    let other_p = keep(&mut g, 0.2, 2, 384);
    let k380 = keep(&mut g, 0.1, 2, 380);
    let k3 = keep(&mut g, 0.1, 3, 256);
    let project = Op::RoutedProject { p: 0.1, k: 2 };
    try_add(&mut g, &project, &[x, a, mask, k384]).unwrap();
    for (why, ins) in [
        ("another rate", [x, a, mask, other_p]),
        ("another width, same words", [x, a, mask, k380]),
        ("another k, same words", [x, a, mask, k3]),
        ("not drawn by routed_keep", [x, a, mask, raw]),
    ] {
        let e = try_add(&mut g, &project, &ins).expect_err(why);
        // The shape rule accepts every one of these; only the producer check refuses.
        let drawn = e.contains("keep bits drawn for") || e.contains("must come from");
        assert!(drawn, "{why}: {e}");
    }
    // The gradients' bits cover the rows of the factors (input gradient) and of x (the
    // factors' gradient).
    let gr = try_add(&mut g, &project, &[x380, a380, mask, k380]).unwrap();
    for op in [
        Op::RoutedExpand { p: 0.1, k: 2 },
        Op::RoutedOuter { p: 0.1, k: 2 },
    ] {
        let y = if matches!(op, Op::RoutedExpand { .. }) {
            a380
        } else {
            x380
        };
        try_add(&mut g, &op, &[gr, y, mask, k380]).unwrap();
        let e = try_add(&mut g, &op, &[gr, y, mask, k384]).expect_err("another width");
        assert!(e.contains("rows of 384"), "{e}");
    }
    verify(&g).unwrap();
}
