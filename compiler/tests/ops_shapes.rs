//! Shape and dtype rules of every op: correct output types for valid operands (and the
//! interpreter produces exactly that type), `Err` (never a panic) for invalid ones, and the
//! verifier accepting valid graphs and rejecting corrupted ones.

use lorac_compiler::ir::interp::run;
use lorac_compiler::ir::verify::verify;
use lorac_compiler::ir::{
    BinaryOp, DType, Data, Graph, InputKind, NodeId, Op, ReduceOp, Tensor, UnaryOp,
};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use DType::{F32, I64};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// A graph with one input per operand type, named i0, i1, ...
fn operands(ins: &[(&[usize], DType)]) -> (Graph, Vec<NodeId>) {
    let mut g = Graph::new();
    let ids = ins
        .iter()
        .enumerate()
        .map(|(k, (s, d))| {
            g.add(
                Op::Input {
                    name: format!("i{k}"),
                    kind: InputKind::Data,
                    shape: s.to_vec(),
                    dtype: *d,
                },
                &[],
            )
            .unwrap()
        })
        .collect();
    (g, ids)
}

/// Values for the operand inputs: f32 random, i64 indices 0 (in range for every index op here).
fn values(ins: &[(&[usize], DType)], seed: u64) -> HashMap<String, Tensor> {
    let mut rng = Rng(seed | 1);
    ins.iter()
        .enumerate()
        .map(|(k, (s, d))| {
            let n = numel(s);
            let t = match d {
                F32 => Tensor::f32(s.to_vec(), (0..n).map(|_| rng.f()).collect()),
                I64 => Tensor::i64(s.to_vec(), vec![0; n]),
            };
            (format!("i{k}"), t)
        })
        .collect()
}

/// Adds `op` without letting a panic escape: a panic is reported as a test failure.
fn try_add(g: &mut Graph, op: &Op, ids: &[NodeId]) -> Result<NodeId, String> {
    match catch_unwind(AssertUnwindSafe(|| g.add(op.clone(), ids))) {
        Ok(r) => r.map_err(|e| e.0),
        Err(_) => panic!(
            "Graph::add panicked for {op:?} on {:?}",
            ids.iter().map(|&i| g.shape(i).to_vec()).collect::<Vec<_>>()
        ),
    }
}

/// `op` on operands of these types gives `want`; the interpreter agrees; the graph verifies.
#[track_caller]
fn ok(op: Op, ins: &[(&[usize], DType)], want: &[usize], dt: DType) {
    let (mut g, ids) = operands(ins);
    let y = try_add(&mut g, &op, &ids)
        .unwrap_or_else(|e| panic!("{op:?} on {ins:?}: unexpected error {e}"));
    assert_eq!(
        (g.shape(y), g.node(y).dtype),
        (want, dt),
        "{op:?} on {ins:?}"
    );
    g.set_output("y", y);
    verify(&g).unwrap_or_else(|e| panic!("{op:?}: verify: {e}"));
    let v = run(&g, &values(ins, 17)).unwrap_or_else(|e| panic!("{op:?} on {ins:?}: run: {e}"));
    let t = &v[&y];
    assert_eq!(t.shape, want, "{op:?}: interpreter shape");
    let (got_dt, len) = match &t.data {
        Data::F32(d) => (F32, d.len()),
        Data::I64(d) => (I64, d.len()),
    };
    assert_eq!(got_dt, dt, "{op:?}: interpreter dtype");
    assert_eq!(len, numel(want), "{op:?}: interpreter element count");
}

/// `op` on operands of these types is rejected with an error (not a panic).
#[track_caller]
fn err(op: Op, ins: &[(&[usize], DType)]) {
    let (mut g, ids) = operands(ins);
    let n = g.len();
    match try_add(&mut g, &op, &ids) {
        Ok(y) => panic!(
            "{op:?} on {ins:?} was accepted as {:?}{:?}",
            g.node(y).dtype,
            g.shape(y)
        ),
        Err(e) => assert!(!e.is_empty()),
    }
    assert_eq!(g.len(), n, "a rejected node must not be added");
}

const UNARY: [UnaryOp; 12] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Recip,
    UnaryOp::Tanh,
    UnaryOp::Erf,
    UnaryOp::Abs,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::Sin,
    UnaryOp::Cos,
];
const BINARY: [BinaryOp; 9] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Pow,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Gt,
    BinaryOp::Eq,
];

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
