//! Fixtures and f64 closed forms shared by the `optimizers_*` tests (split from one file by
//! optimizer): parameter and config builders, a runner for update graphs, and the reference
//! updates (AdamW with torch semantics, SGD, Riemannian preconditioning).

// Re-exported for the test files (`use common::optim::*`); not every file uses each.
#![allow(unused_imports)]

pub use lorac_compiler::build::lower::ParamInfo;
pub use lorac_compiler::build::optim::{assign, scalar_inputs, state_names, update_graph};
pub use lorac_compiler::check::train::{
    DataConfig, Duration, OptimizerConfig, OptimizerKind, Riemannian, Task, TrainConfig,
};
pub use lorac_compiler::diag::Span;
pub use lorac_compiler::ir::interp::run;
pub use lorac_compiler::ir::{Graph, Tensor};
pub use std::collections::HashMap;
pub use std::path::PathBuf;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Tensor inputs of an update graph by name: (shape, values).
pub type Feed = HashMap<String, (Vec<usize>, Vec<f64>)>;
/// A tensor and its two Adam moments.
pub type Moments = (Vec<f64>, Vec<f64>, Vec<f64>);

pub fn lcg(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
}

/// `n` values in `[lo, hi)`, rounded to f32 so the graph and the reference see the same inputs.
pub fn vals(seed: &mut u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let u = (lcg(seed) + 1.0) / 2.0;
            (lo + (hi - lo) * u) as f32 as f64
        })
        .collect()
}

pub fn param(module: &str, local: &str, shape: &[usize], experts: Option<usize>) -> ParamInfo {
    ParamInfo {
        name: format!("{module}.{local}"),
        module: module.to_string(),
        local: local.to_string(),
        shape: shape.to_vec(),
        experts,
    }
}

pub fn adamw(eps: f64, weight_decay: f64, bias_correction: bool) -> OptimizerKind {
    OptimizerKind::AdamW {
        betas: (0.9, 0.999),
        eps,
        weight_decay,
        bias_correction,
    }
}

pub fn sgd(momentum: f64, weight_decay: f64) -> OptimizerKind {
    OptimizerKind::Sgd {
        momentum,
        weight_decay,
    }
}

pub fn opt(
    kind: OptimizerKind,
    precondition: Option<(f64, &str, &str)>,
    selectors: &[&str],
) -> OptimizerConfig {
    OptimizerConfig {
        kind,
        lr: 1e-3,
        precondition: precondition.map(|(damping, a, b)| Riemannian {
            pairs: (a.to_string(), b.to_string()),
            damping,
        }),
        selectors: selectors.iter().map(|s| s.to_string()).collect(),
        span: Span::default(),
    }
}

pub fn train(optimizers: Vec<OptimizerConfig>) -> TrainConfig {
    TrainConfig {
        data: DataConfig {
            train: PathBuf::from("train.jsonl"),
            dev: None,
            test: None,
            text: "text".into(),
            label: "label".into(),
        },
        task: Task::Regression,
        optimizers,
        schedules: vec![],
        batch: 1,
        max_len: 8,
        duration: Duration::Steps(3),
        seed: 0,
        accumulate: 1,
        clip: vec![],
        eval: None,
        log_every: 1,
    }
}

pub fn tensor(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::f32(shape.to_vec(), v.iter().map(|&x| x as f32).collect())
}

/// Per-optimizer step scalars fed to the graph.
#[derive(Clone, Copy)]
pub struct Step {
    pub lr: f64,
    pub bc1: f64,
    pub bc2: f64,
}

/// Runs the update graph once. `values` holds every tensor input by name (params, `grad.*`,
/// state); `steps[i]` the scalars of optimizer `i`. Returns every output by name.
pub fn run_update(g: &Graph, values: &Feed, steps: &[Step]) -> HashMap<String, Vec<f64>> {
    let mut inputs: HashMap<String, Tensor> = values
        .iter()
        .map(|(n, (s, v))| (n.clone(), tensor(s, v)))
        .collect();
    for (i, s) in steps.iter().enumerate() {
        let [lr, b1, b2] = scalar_inputs(i);
        inputs.insert(lr, Tensor::scalar(s.lr as f32));
        inputs.insert(b1, Tensor::scalar(s.bc1 as f32));
        inputs.insert(b2, Tensor::scalar(s.bc2 as f32));
    }
    let vals = run(g, &inputs).expect("update graph runs");
    g.outputs
        .iter()
        .map(|(n, id)| (n.clone(), vals[id].to_f64()))
        .collect()
}

/// Asserts `got ≈ want` elementwise to `rtol` relative error. An element that is small next to
/// the rest of its tensor (the result of a cancellation like `p − lr·step`, whose f32 rounding
/// is set by the operands) is held to `rtol` of a tenth of the tensor's largest magnitude.
pub fn close(what: &str, got: &[f64], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let floor = 0.1 * want.iter().fold(0.0f64, |m, w| m.max(w.abs())).max(1e-6);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = rtol * w.abs().max(floor);
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (|diff| {:e} > {tol:e})\n got  {got:?}\n want {want:?}",
            (g - w).abs()
        );
    }
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

pub const RTOL: f64 = 1e-6;

// ---------------------------------------------------------------------------------------------
// Closed forms (f64)

/// torch.optim.AdamW on one tensor: returns (p, m, v) after the step.
#[allow(clippy::too_many_arguments)]
pub fn adamw_ref(
    p: &[f64],
    g: &[f64],
    m: &[f64],
    v: &[f64],
    (b1, b2): (f64, f64),
    eps: f64,
    wd: f64,
    lr: f64,
    bc1: f64,
    bc2: f64,
) -> Moments {
    let mut pn = Vec::new();
    let mut mn = Vec::new();
    let mut vn = Vec::new();
    for i in 0..p.len() {
        let mi = b1 * m[i] + (1.0 - b1) * g[i];
        let vi = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        let base = p[i] * (1.0 - lr * wd);
        pn.push(base - lr * (mi * bc1) / ((vi * bc2).sqrt() + eps));
        mn.push(mi);
        vn.push(vi);
    }
    (pn, mn, vn)
}

/// torch.optim.SGD on one tensor: returns (p, buf) after the step (`buf` empty without momentum).
pub fn sgd_ref(
    p: &[f64],
    g: &[f64],
    buf: &[f64],
    mu: f64,
    wd: f64,
    lr: f64,
) -> (Vec<f64>, Vec<f64>) {
    let d: Vec<f64> = p.iter().zip(g).map(|(p, g)| g + wd * p).collect();
    let d: Vec<f64> = if mu > 0.0 {
        buf.iter().zip(&d).map(|(b, d)| mu * b + d).collect()
    } else {
        d
    };
    let pn = p.iter().zip(&d).map(|(p, d)| p - lr * d).collect();
    (pn, if mu > 0.0 { d } else { vec![] })
}

/// Row-major `[r, k] × [k, c]`.
pub fn matmul(a: &[f64], b: &[f64], r: usize, k: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            out[i * c + j] = (0..k).map(|l| a[i * k + l] * b[l * c + j]).sum();
        }
    }
    out
}

pub fn transpose(a: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = a[i * c + j];
        }
    }
    out
}

/// Solves `(M + δI) X = B` for `M [d,d]`, `B [d,c]` by Gauss–Jordan elimination with partial
/// pivoting (deliberately not the Cholesky of the interpreter).
pub fn solve(m: &[f64], b: &[f64], d: usize, c: usize, delta: f64) -> Vec<f64> {
    let w = d + c;
    let mut aug = vec![0.0; d * w];
    for i in 0..d {
        for j in 0..d {
            aug[i * w + j] = m[i * d + j] + if i == j { delta } else { 0.0 };
        }
        for j in 0..c {
            aug[i * w + d + j] = b[i * c + j];
        }
    }
    for col in 0..d {
        let piv = (col..d)
            .max_by(|&x, &y| aug[x * w + col].abs().total_cmp(&aug[y * w + col].abs()))
            .unwrap();
        for j in 0..w {
            aug.swap(col * w + j, piv * w + j);
        }
        let pv = aug[col * w + col];
        assert!(pv.abs() > 1e-300, "singular system in the reference solver");
        for j in 0..w {
            aug[col * w + j] /= pv;
        }
        for i in 0..d {
            if i != col {
                let f = aug[i * w + col];
                for j in 0..w {
                    aug[i * w + j] -= f * aug[col * w + j];
                }
            }
        }
    }
    let mut x = vec![0.0; d * c];
    for i in 0..d {
        for j in 0..c {
            x[i * c + j] = aug[i * w + d + j];
        }
    }
    x
}

/// `Ĝ_A = (BᵀB + δI)⁻¹ G_A` for `A [d,n]`, `B [m,d]`.
pub fn precond_a(b: &[f64], ga: &[f64], m: usize, d: usize, n: usize, delta: f64) -> Vec<f64> {
    let btb = matmul(&transpose(b, m, d), b, d, m, d);
    solve(&btb, ga, d, n, delta)
}

/// `Ĝ_B = G_B (AAᵀ + δI)⁻¹ = ((AAᵀ + δI)⁻¹ G_Bᵀ)ᵀ` for `A [d,n]`, `G_B [m,d]`.
pub fn precond_b(a: &[f64], gb: &[f64], m: usize, d: usize, n: usize, delta: f64) -> Vec<f64> {
    let aat = matmul(a, &transpose(a, d, n), d, n, d);
    let x = solve(&aat, &transpose(gb, m, d), d, m, delta);
    transpose(&x, d, m)
}

/// Applies `f` to each expert's slice of stacked tensors (`e` experts, or one when `None`).
pub fn per_expert<F: FnMut(&[&[f64]]) -> Vec<Vec<f64>>>(
    e: usize,
    ts: &[&[f64]],
    mut f: F,
) -> Vec<Vec<f64>> {
    let mut outs: Vec<Vec<f64>> = Vec::new();
    for i in 0..e {
        let slices: Vec<&[f64]> = ts
            .iter()
            .map(|t| {
                let k = t.len() / e;
                &t[i * k..(i + 1) * k]
            })
            .collect();
        let r = f(&slices);
        if outs.is_empty() {
            outs = vec![Vec::new(); r.len()];
        }
        for (o, v) in outs.iter_mut().zip(r) {
            o.extend(v);
        }
    }
    outs
}

// ---------------------------------------------------------------------------------------------
