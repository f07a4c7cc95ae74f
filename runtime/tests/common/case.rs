//! The conformance harness: a graph with seeded inputs, run on the reference interpreter
//! and on each backend, outputs compared within a stated tolerance.

use lorac_compiler::ir::{DType, Data, Graph, InputKind, NodeId, Op, Tensor};
use lorac_runtime::exec::{Backend, Program};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// Row lengths every op is checked at (783 and 50 leave a scalar tail after the 4-lane loop).
pub const SIZES: [usize; 4] = [1, 3, 50, 783];
/// Relative tolerance of elementwise results.
pub const EW: f32 = 2e-6;
/// Relative tolerance of reductions and matrix products.
pub const RED: f32 = 2e-5;

/// Backends checked against the reference; the CUDA backend joins with `LORAC_TEST_CUDA=1`
/// on a GPU machine.
pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Cpu];
    if super::cuda_requested() {
        v.push(Backend::Cuda);
    }
    v
}

/// A graph under test and its seeded inputs.
pub struct Case {
    /// The graph.
    pub g: Graph,
    /// Input values by name.
    pub inputs: HashMap<String, Tensor>,
    /// The seeded generator inputs draw from.
    pub rng: ChaCha8Rng,
}

impl Case {
    /// An empty graph whose inputs draw from `seed`.
    pub fn new(seed: u64) -> Case {
        Case {
            g: Graph::new(),
            inputs: HashMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
    /// An f32 input with values uniform in `lo..hi`.
    pub fn input(&mut self, name: &str, shape: &[usize], lo: f32, hi: f32) -> NodeId {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rng.random_range(lo..hi)).collect();
        self.declare(name, Tensor::f32(shape.to_vec(), v))
    }
    /// An i64 input with values in `0..below`.
    pub fn ids(&mut self, name: &str, shape: &[usize], below: i64) -> NodeId {
        let n: usize = shape.iter().product();
        let v: Vec<i64> = (0..n).map(|_| self.rng.random_range(0..below)).collect();
        self.declare(name, Tensor::i64(shape.to_vec(), v))
    }
    /// A data input node of `t`'s shape and type, fed `t`.
    fn declare(&mut self, name: &str, t: Tensor) -> NodeId {
        let op = Op::Input {
            name: name.into(),
            kind: InputKind::Data,
            shape: t.shape.clone(),
            dtype: match t.data {
                Data::F32(_) => DType::F32,
                Data::I64(_) => DType::I64,
            },
        };
        self.inputs.insert(name.into(), t);
        self.g.add(op, &[]).unwrap()
    }
    /// The outputs on one backend.
    pub fn run_on(&self, be: Backend) -> HashMap<String, Tensor> {
        Program::new(&self.g, be)
            .unwrap()
            .run(&[&self.inputs])
            .unwrap()
    }
    /// The outputs on the reference interpreter and on the CPU backend.
    pub fn reference_and_cpu(&self) -> (HashMap<String, Tensor>, HashMap<String, Tensor>) {
        (self.run_on(Backend::Reference), self.run_on(Backend::Cpu))
    }
    /// Runs on every backend and compares each output with the reference.
    pub fn check(&self, what: &str, tol: f32) {
        let reference = Program::new(&self.g, Backend::Reference)
            .unwrap()
            .run(&[&self.inputs])
            .unwrap();
        for be in backends() {
            let p = Program::new(&self.g, be).unwrap_or_else(|e| panic!("{what}: {e}"));
            let got = p
                .run(&[&self.inputs])
                .unwrap_or_else(|e| panic!("{what} on {}: {e}", be.name()));
            for (name, want) in &reference {
                let t = &got[name];
                assert_eq!(t.shape, want.shape, "{what}/{name} shape on {}", be.name());
                match (&t.data, &want.data) {
                    (lorac_compiler::ir::Data::I64(a), lorac_compiler::ir::Data::I64(b)) => {
                        assert_eq!(a, b, "{what}/{name} on {}", be.name())
                    }
                    _ => {
                        for (i, (a, b)) in t.f().iter().zip(want.f()).enumerate() {
                            let ok = (a - b).abs() <= tol * b.abs().max(1.0)
                                || (a.is_nan() && b.is_nan());
                            assert!(
                                ok,
                                "{what}/{name}[{i}] on {}: {a} vs reference {b}",
                                be.name()
                            );
                        }
                    }
                }
            }
        }
    }
}
