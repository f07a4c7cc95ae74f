//! Helpers shared by the `ops_shapes` and `ops_robustness` tests (split from one file):
//! operand graphs and seeded values, and `ok`/`err`, which check an op's output type (and that
//! the interpreter produces exactly it) or that it is refused with an `Err`, never a panic.

// Re-exported for the test files (`use common::shapes::*`); not every file uses each.
#![allow(unused_imports)]

pub use lorac_compiler::ir::interp::run;
pub use lorac_compiler::ir::verify::verify;
pub use lorac_compiler::ir::{
    BinaryOp, DType, Data, Graph, InputKind, NodeId, Op, ReduceOp, Tensor, UnaryOp,
};
pub use std::collections::HashMap;
pub use std::panic::{catch_unwind, AssertUnwindSafe};
pub use std::sync::Arc;

pub use DType::{F32, I64};

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

pub fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// A graph with one input per operand type, named i0, i1, ...
pub fn operands(ins: &[(&[usize], DType)]) -> (Graph, Vec<NodeId>) {
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
pub fn values(ins: &[(&[usize], DType)], seed: u64) -> HashMap<String, Tensor> {
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
pub fn try_add(g: &mut Graph, op: &Op, ids: &[NodeId]) -> Result<NodeId, String> {
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
pub fn ok(op: Op, ins: &[(&[usize], DType)], want: &[usize], dt: DType) {
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
pub fn err(op: Op, ins: &[(&[usize], DType)]) {
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

pub use super::{BINARY, UNARY};
