//! Shape and dtype rules of every op: correct output types for valid operands (and the
//! interpreter produces exactly that type), `Err` (never a panic) for invalid ones. Helpers:
//! `common/shapes.rs`.

mod common;

use common::shapes::*;

#[test]
fn leaves() {
    ok(
        Op::Fill {
            shape: vec![2, 3],
            value: 1.5,
        },
        &[],
        &[2, 3],
        F32,
    );
    ok(
        Op::Fill {
            shape: vec![],
            value: 0.0,
        },
        &[],
        &[],
        F32,
    );
    ok(
        Op::Literal {
            shape: vec![2],
            data: Arc::new(vec![1.0, 2.0]),
        },
        &[],
        &[2],
        F32,
    );
    err(
        Op::Literal {
            shape: vec![3],
            data: Arc::new(vec![1.0, 2.0]),
        },
        &[],
    );
    // Leaves take no operands.
    err(
        Op::Fill {
            shape: vec![2],
            value: 0.0,
        },
        &[(&[2], F32)],
    );
    err(
        Op::Input {
            name: "z".into(),
            kind: InputKind::Data,
            shape: vec![2],
            dtype: F32,
        },
        &[(&[2], F32)],
    );
    // Inputs keep their declared type.
    let (g, ids) = operands(&[(&[4, 1], I64), (&[], F32)]);
    assert_eq!(
        (g.shape(ids[0]), g.node(ids[0]).dtype),
        (&[4usize, 1][..], I64)
    );
    assert_eq!((g.shape(ids[1]), g.node(ids[1]).dtype), (&[][..], F32));
}

#[test]
fn elementwise() {
    for u in UNARY {
        ok(Op::Unary(u), &[(&[2, 3], F32)], &[2, 3], F32);
        ok(Op::Unary(u), &[(&[], F32)], &[], F32);
        ok(Op::Unary(u), &[(&[1, 50, 1], F32)], &[1, 50, 1], F32);
        err(Op::Unary(u), &[(&[2, 3], I64)]);
        err(Op::Unary(u), &[]);
        err(Op::Unary(u), &[(&[2], F32), (&[2], F32)]);
    }
    for b in BINARY {
        ok(
            Op::Binary(b),
            &[(&[2, 3], F32), (&[2, 3], F32)],
            &[2, 3],
            F32,
        );
        ok(Op::Binary(b), &[(&[], F32), (&[], F32)], &[], F32);
        err(Op::Binary(b), &[(&[2, 3], F32), (&[3, 2], F32)]);
        // No implicit broadcasting at the primitive level.
        err(Op::Binary(b), &[(&[2, 3], F32), (&[1, 3], F32)]);
        err(Op::Binary(b), &[(&[3], F32), (&[2, 3], F32)]);
        err(Op::Binary(b), &[(&[2], I64), (&[2], I64)]);
        err(Op::Binary(b), &[(&[2], F32), (&[2], I64)]);
        err(Op::Binary(b), &[(&[2], F32)]);
        err(Op::Binary(b), &[(&[2], F32), (&[2], F32), (&[2], F32)]);
    }
    ok(Op::StopGrad, &[(&[2, 3], F32)], &[2, 3], F32);
    ok(Op::StopGrad, &[(&[4], I64)], &[4], I64);
    err(Op::StopGrad, &[(&[2], F32), (&[2], F32)]);
    ok(Op::Cast { to: I64 }, &[(&[2, 3], F32)], &[2, 3], I64);
    ok(Op::Cast { to: F32 }, &[(&[5], I64)], &[5], F32);
    ok(Op::Cast { to: F32 }, &[(&[5], F32)], &[5], F32);
    err(Op::Cast { to: F32 }, &[]);
}

#[test]
fn reductions() {
    for r in [ReduceOp::Sum, ReduceOp::Max] {
        ok(
            Op::Reduce { op: r, axis: 0 },
            &[(&[2, 3, 4], F32)],
            &[1, 3, 4],
            F32,
        );
        ok(
            Op::Reduce { op: r, axis: 1 },
            &[(&[2, 3, 4], F32)],
            &[2, 1, 4],
            F32,
        );
        ok(
            Op::Reduce { op: r, axis: 2 },
            &[(&[2, 3, 4], F32)],
            &[2, 3, 1],
            F32,
        );
        ok(Op::Reduce { op: r, axis: 0 }, &[(&[1], F32)], &[1], F32);
        err(Op::Reduce { op: r, axis: 3 }, &[(&[2, 3, 4], F32)]);
        err(Op::Reduce { op: r, axis: 0 }, &[(&[], F32)]);
        err(Op::Reduce { op: r, axis: 0 }, &[(&[2], I64)]);
        err(Op::Reduce { op: r, axis: 0 }, &[(&[2], F32), (&[2], F32)]);
    }
}

#[test]
fn linalg() {
    ok(Op::MatMul, &[(&[2, 3], F32), (&[3, 4], F32)], &[2, 4], F32);
    ok(
        Op::MatMul,
        &[(&[1, 50], F32), (&[50, 1], F32)],
        &[1, 1],
        F32,
    );
    ok(
        Op::MatMul,
        &[(&[5, 2, 3], F32), (&[5, 3, 4], F32)],
        &[5, 2, 4],
        F32,
    );
    ok(
        Op::MatMul,
        &[(&[2, 1, 2, 3], F32), (&[2, 1, 3, 1], F32)],
        &[2, 1, 2, 1],
        F32,
    );
    err(Op::MatMul, &[(&[2, 3], F32), (&[4, 3], F32)]); // inner mismatch
    err(Op::MatMul, &[(&[5, 2, 3], F32), (&[4, 3, 4], F32)]); // batch mismatch
    err(Op::MatMul, &[(&[1, 2, 3], F32), (&[3, 4], F32)]); // no batch broadcasting
    err(Op::MatMul, &[(&[3], F32), (&[3], F32)]); // vectors
    err(Op::MatMul, &[(&[], F32), (&[], F32)]);
    err(Op::MatMul, &[(&[2, 3], I64), (&[3, 4], I64)]);
    err(Op::MatMul, &[(&[2, 3], F32), (&[3, 4], I64)]);
    err(Op::MatMul, &[(&[2, 3], F32)]);
    err(
        Op::MatMul,
        &[(&[2, 2], F32), (&[2, 2], F32), (&[2, 2], F32)],
    );

    let s = |d| Op::SpdSolve { damping: d };
    ok(s(0.0), &[(&[3, 3], F32), (&[3, 2], F32)], &[3, 2], F32);
    ok(
        s(0.1),
        &[(&[2, 3, 3], F32), (&[2, 3, 1], F32)],
        &[2, 3, 1],
        F32,
    );
    ok(s(0.0), &[(&[1, 1], F32), (&[1, 50], F32)], &[1, 50], F32);
    err(s(0.0), &[(&[3, 2], F32), (&[3, 2], F32)]); // A not square
    err(s(0.0), &[(&[3, 3], F32), (&[2, 2], F32)]); // B rows differ
    err(s(0.0), &[(&[2, 3, 3], F32), (&[1, 3, 2], F32)]); // batch differs
    err(s(0.0), &[(&[3, 3], F32), (&[3], F32)]);
    err(s(0.0), &[(&[3, 3], I64), (&[3, 2], F32)]);
    err(s(0.0), &[(&[3, 3], F32)]);
}

#[test]
fn views() {
    ok(
        Op::Reshape { shape: vec![3, 4] },
        &[(&[2, 6], F32)],
        &[3, 4],
        F32,
    );
    ok(Op::Reshape { shape: vec![] }, &[(&[1, 1], F32)], &[], F32);
    ok(
        Op::Reshape { shape: vec![50, 1] },
        &[(&[50], I64)],
        &[50, 1],
        I64,
    );
    err(Op::Reshape { shape: vec![3, 5] }, &[(&[2, 6], F32)]);
    err(Op::Reshape { shape: vec![] }, &[(&[2], F32)]);
    err(Op::Reshape { shape: vec![2] }, &[(&[2], F32), (&[2], F32)]);

    ok(
        Op::Permute {
            perm: vec![2, 0, 1],
        },
        &[(&[2, 3, 4], F32)],
        &[4, 2, 3],
        F32,
    );
    ok(
        Op::Permute { perm: vec![1, 0] },
        &[(&[1, 50], I64)],
        &[50, 1],
        I64,
    );
    ok(Op::Permute { perm: vec![] }, &[(&[], F32)], &[], F32);
    err(
        Op::Permute {
            perm: vec![0, 0, 1],
        },
        &[(&[2, 3, 4], F32)],
    );
    err(Op::Permute { perm: vec![0, 1] }, &[(&[2, 3, 4], F32)]);
    err(
        Op::Permute {
            perm: vec![0, 1, 3],
        },
        &[(&[2, 3, 4], F32)],
    );
    err(
        Op::Permute {
            perm: vec![0, 1, 2, 3],
        },
        &[(&[2, 3, 4], F32)],
    );
    err(Op::Permute { perm: vec![] }, &[(&[2], F32)]);

    ok(
        Op::Broadcast {
            shape: vec![2, 3, 4],
        },
        &[(&[3, 1], F32)],
        &[2, 3, 4],
        F32,
    );
    ok(Op::Broadcast { shape: vec![2] }, &[(&[], F32)], &[2], F32);
    ok(
        Op::Broadcast { shape: vec![50, 3] },
        &[(&[3], I64)],
        &[50, 3],
        I64,
    );
    ok(
        Op::Broadcast { shape: vec![2, 3] },
        &[(&[2, 3], F32)],
        &[2, 3],
        F32,
    );
    err(Op::Broadcast { shape: vec![3, 4] }, &[(&[3, 2], F32)]);
    err(Op::Broadcast { shape: vec![3] }, &[(&[2, 3], F32)]); // lower rank
    err(Op::Broadcast { shape: vec![3, 2] }, &[(&[3], F32)]); // aligned from the right
    err(Op::Broadcast { shape: vec![] }, &[(&[1], F32)]);

    ok(
        Op::Slice {
            axis: 1,
            start: 1,
            end: 3,
        },
        &[(&[3, 4], F32)],
        &[3, 2],
        F32,
    );
    ok(
        Op::Slice {
            axis: 0,
            start: 0,
            end: 3,
        },
        &[(&[3, 4], F32)],
        &[3, 4],
        F32,
    );
    ok(
        Op::Slice {
            axis: 0,
            start: 49,
            end: 50,
        },
        &[(&[50], I64)],
        &[1],
        I64,
    );
    err(
        Op::Slice {
            axis: 1,
            start: 2,
            end: 5,
        },
        &[(&[3, 4], F32)],
    ); // past the end
    err(
        Op::Slice {
            axis: 1,
            start: 2,
            end: 2,
        },
        &[(&[3, 4], F32)],
    ); // empty
    err(
        Op::Slice {
            axis: 1,
            start: 3,
            end: 2,
        },
        &[(&[3, 4], F32)],
    ); // reversed
    err(
        Op::Slice {
            axis: 2,
            start: 0,
            end: 1,
        },
        &[(&[3, 4], F32)],
    ); // no such axis
    err(
        Op::Slice {
            axis: 0,
            start: 0,
            end: 1,
        },
        &[(&[], F32)],
    );

    ok(
        Op::Concat { axis: 1 },
        &[(&[2, 3], F32), (&[2, 1], F32)],
        &[2, 4],
        F32,
    );
    ok(
        Op::Concat { axis: 0 },
        &[(&[1, 3], F32), (&[3, 3], F32), (&[50, 3], F32)],
        &[54, 3],
        F32,
    );
    ok(Op::Concat { axis: 0 }, &[(&[2], F32)], &[2], F32);
    ok(
        Op::Concat { axis: 0 },
        &[(&[2], I64), (&[1], I64)],
        &[3],
        I64,
    );
    err(Op::Concat { axis: 1 }, &[(&[2, 3], F32), (&[3, 1], F32)]); // other axis differs
    err(Op::Concat { axis: 2 }, &[(&[2, 3], F32), (&[2, 3], F32)]); // no such axis
    err(Op::Concat { axis: 0 }, &[(&[2, 3], F32), (&[2, 3, 1], F32)]); // rank differs
    err(Op::Concat { axis: 0 }, &[(&[2], F32), (&[2], I64)]); // dtype differs
    err(Op::Concat { axis: 0 }, &[(&[], F32), (&[], F32)]);
    err(Op::Concat { axis: 0 }, &[]);
}

#[test]
fn indexing() {
    ok(
        Op::Gather,
        &[(&[10, 4], F32), (&[2, 3], I64)],
        &[2, 3, 4],
        F32,
    );
    ok(Op::Gather, &[(&[10], F32), (&[3], I64)], &[3], F32);
    ok(Op::Gather, &[(&[10, 4], F32), (&[], I64)], &[4], F32);
    ok(Op::Gather, &[(&[10, 2], I64), (&[3], I64)], &[3, 2], I64); // integer tables keep their dtype
    err(Op::Gather, &[(&[10, 4], F32), (&[3], F32)]);
    err(Op::Gather, &[(&[], F32), (&[3], I64)]);
    err(Op::Gather, &[(&[10, 4], F32)]);
    err(Op::Gather, &[(&[10, 4], F32), (&[3], I64), (&[3], I64)]);

    ok(
        Op::ScatterAdd { rows: 7 },
        &[(&[2, 3, 4], F32), (&[2, 3], I64)],
        &[7, 4],
        F32,
    );
    ok(
        Op::ScatterAdd { rows: 1 },
        &[(&[5], F32), (&[5], I64)],
        &[1],
        F32,
    );
    err(
        Op::ScatterAdd { rows: 7 },
        &[(&[2, 3, 4], F32), (&[3, 2], I64)],
    ); // not a prefix
    err(Op::ScatterAdd { rows: 7 }, &[(&[2], F32), (&[2, 1], I64)]); // index rank too high
    err(Op::ScatterAdd { rows: 7 }, &[(&[2, 4], F32), (&[2], F32)]); // float indices
    err(Op::ScatterAdd { rows: 7 }, &[(&[2, 4], I64), (&[2], I64)]); // integer source
    err(Op::ScatterAdd { rows: 7 }, &[(&[2, 4], F32)]);

    ok(Op::OneHot { depth: 5 }, &[(&[2, 3], I64)], &[2, 3, 5], F32);
    ok(Op::OneHot { depth: 1 }, &[(&[], I64)], &[1], F32);
    err(Op::OneHot { depth: 5 }, &[(&[2, 3], F32)]);
    err(Op::OneHot { depth: 5 }, &[]);

    ok(Op::TopKMask { k: 2 }, &[(&[2, 5], F32)], &[2, 5], F32);
    ok(Op::TopKMask { k: 5 }, &[(&[5], F32)], &[5], F32);
    ok(Op::TopKMask { k: 1 }, &[(&[50, 1], F32)], &[50, 1], F32);
    err(Op::TopKMask { k: 6 }, &[(&[2, 5], F32)]); // k > last dim
    err(Op::TopKMask { k: 2 }, &[(&[5, 1], F32)]);
    err(Op::TopKMask { k: 0 }, &[(&[2, 5], F32)]);
    err(Op::TopKMask { k: 1 }, &[(&[], F32)]);
    err(Op::TopKMask { k: 1 }, &[(&[3], I64)]);
    err(Op::TopKMask { k: 1 }, &[(&[3], F32), (&[3], F32)]);
}

#[test]
fn i64_gather_table_evaluates() {
    let mut g = Graph::new();
    let t = g
        .add(
            Op::Input {
                name: "t".into(),
                kind: InputKind::Data,
                shape: vec![3, 2],
                dtype: I64,
            },
            &[],
        )
        .unwrap();
    let i = g
        .add(
            Op::Input {
                name: "i".into(),
                kind: InputKind::Data,
                shape: vec![2],
                dtype: I64,
            },
            &[],
        )
        .unwrap();
    let y = g.add(Op::Gather, &[t, i]).unwrap();
    let mut inp = HashMap::new();
    inp.insert(
        "t".to_string(),
        Tensor::i64(vec![3, 2], vec![10, 11, 20, 21, 30, 31]),
    );
    inp.insert("i".to_string(), Tensor::i64(vec![2], vec![2, 0]));
    assert_eq!(
        run(&g, &inp).unwrap()[&y],
        Tensor::i64(vec![2, 2], vec![30, 31, 10, 11])
    );
}
