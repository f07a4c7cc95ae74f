//! Optimizer update graphs (`build::optim`) run through the reference interpreter and compared
//! with closed forms computed here in f64: AdamW (torch semantics, with and without bias
//! correction and weight decay), SGD (plain, momentum, weight decay), Riemannian
//! preconditioning (methods.md §4.1: Jacobi order for SGD, Gauss–Seidel for AdamW, §7.10's
//! B = 0 first step), and the `for` selector assignment.

use lorac_compiler::build::lower::ParamInfo;
use lorac_compiler::build::optim::{assign, scalar_inputs, state_names, update_graph};
use lorac_compiler::check::train::{
    DataConfig, Duration, OptimizerConfig, OptimizerKind, Riemannian, Task, TrainConfig,
};
use lorac_compiler::diag::Span;
use lorac_compiler::ir::interp::run;
use lorac_compiler::ir::{Graph, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Tensor inputs of an update graph by name: (shape, values).
type Feed = HashMap<String, (Vec<usize>, Vec<f64>)>;
/// A tensor and its two Adam moments.
type Moments = (Vec<f64>, Vec<f64>, Vec<f64>);

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
}

/// `n` values in `[lo, hi)`, rounded to f32 so the graph and the reference see the same inputs.
fn vals(seed: &mut u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let u = (lcg(seed) + 1.0) / 2.0;
            (lo + (hi - lo) * u) as f32 as f64
        })
        .collect()
}

fn param(module: &str, local: &str, shape: &[usize], experts: Option<usize>) -> ParamInfo {
    ParamInfo {
        name: format!("{module}.{local}"),
        module: module.to_string(),
        local: local.to_string(),
        shape: shape.to_vec(),
        experts,
    }
}

fn adamw(eps: f64, weight_decay: f64, bias_correction: bool) -> OptimizerKind {
    OptimizerKind::AdamW {
        betas: (0.9, 0.999),
        eps,
        weight_decay,
        bias_correction,
    }
}

fn sgd(momentum: f64, weight_decay: f64) -> OptimizerKind {
    OptimizerKind::Sgd {
        momentum,
        weight_decay,
    }
}

fn opt(
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

fn train(optimizers: Vec<OptimizerConfig>) -> TrainConfig {
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

fn tensor(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::f32(shape.to_vec(), v.iter().map(|&x| x as f32).collect())
}

/// Per-optimizer step scalars fed to the graph.
#[derive(Clone, Copy)]
struct Step {
    lr: f64,
    bc1: f64,
    bc2: f64,
}

/// Runs the update graph once. `values` holds every tensor input by name (params, `grad.*`,
/// state); `steps[i]` the scalars of optimizer `i`. Returns every output by name.
fn run_update(g: &Graph, values: &Feed, steps: &[Step]) -> HashMap<String, Vec<f64>> {
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
fn close(what: &str, got: &[f64], want: &[f64], rtol: f64) {
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

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

const RTOL: f64 = 1e-6;

// ---------------------------------------------------------------------------------------------
// Closed forms (f64)

/// torch.optim.AdamW on one tensor: returns (p, m, v) after the step.
#[allow(clippy::too_many_arguments)]
fn adamw_ref(
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
fn sgd_ref(p: &[f64], g: &[f64], buf: &[f64], mu: f64, wd: f64, lr: f64) -> (Vec<f64>, Vec<f64>) {
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
fn matmul(a: &[f64], b: &[f64], r: usize, k: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            out[i * c + j] = (0..k).map(|l| a[i * k + l] * b[l * c + j]).sum();
        }
    }
    out
}

fn transpose(a: &[f64], r: usize, c: usize) -> Vec<f64> {
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
fn solve(m: &[f64], b: &[f64], d: usize, c: usize, delta: f64) -> Vec<f64> {
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
fn precond_a(b: &[f64], ga: &[f64], m: usize, d: usize, n: usize, delta: f64) -> Vec<f64> {
    let btb = matmul(&transpose(b, m, d), b, d, m, d);
    solve(&btb, ga, d, n, delta)
}

/// `Ĝ_B = G_B (AAᵀ + δI)⁻¹ = ((AAᵀ + δI)⁻¹ G_Bᵀ)ᵀ` for `A [d,n]`, `G_B [m,d]`.
fn precond_b(a: &[f64], gb: &[f64], m: usize, d: usize, n: usize, delta: f64) -> Vec<f64> {
    let aat = matmul(a, &transpose(a, d, n), d, n, d);
    let x = solve(&aat, &transpose(gb, m, d), d, m, delta);
    transpose(&x, d, m)
}

/// Applies `f` to each expert's slice of stacked tensors (`e` experts, or one when `None`).
fn per_expert<F: FnMut(&[&[f64]]) -> Vec<Vec<f64>>>(
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
// State names and scalar inputs

#[test]
fn state_names_follow_the_optimizer_kind() {
    assert_eq!(
        state_names(&adamw(1e-8, 0.0, true), "m.A"),
        vec!["m.m.A", "v.m.A"]
    );
    assert_eq!(state_names(&sgd(0.9, 0.0), "q.B"), vec!["mom.q.B"]);
    assert!(state_names(&sgd(0.0, 0.1), "q.B").is_empty());
    assert_eq!(
        scalar_inputs(2),
        ["lr.2".to_string(), "bc1.2".into(), "bc2.2".into()]
    );
}

#[test]
fn update_graph_declares_params_grads_state_and_scalars() {
    let params = vec![
        param("q", "A", &[2, 3], None),
        param("head", "w", &[2, 2], None),
    ];
    let t = train(vec![
        opt(adamw(1e-8, 0.0, true), None, &["head"]),
        opt(sgd(0.9, 0.0), None, &[]),
    ]);
    let owner = assign(&params, &t, &[]).unwrap();
    assert_eq!(owner, vec![1, 0]);
    let g = update_graph(&params, &owner, &t).unwrap();
    for name in [
        "q.A",
        "grad.q.A",
        "mom.q.A",
        "head.w",
        "grad.head.w",
        "m.head.w",
        "v.head.w",
    ] {
        assert!(g.find_input(name).is_some(), "missing input {name}");
    }
    for i in 0..2 {
        for s in scalar_inputs(i) {
            assert!(g.find_input(&s).is_some(), "missing scalar {s}");
        }
    }
    let mut outs: Vec<&str> = g.outputs.iter().map(|(n, _)| n.as_str()).collect();
    outs.sort();
    assert_eq!(
        outs,
        vec![
            "new.head.w",
            "new.m.head.w",
            "new.mom.q.A",
            "new.q.A",
            "new.v.head.w"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// AdamW

/// Three AdamW steps on two tensors, outputs fed back as the next step's inputs, against an
/// independent f64 trajectory.
fn adamw_three_steps(wd: f64, bias_correction: bool) {
    let (b1, b2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
    let params = vec![
        param("q", "A", &[2, 3], None),
        param("head", "w", &[3], None),
    ];
    let t = train(vec![opt(adamw(eps, wd, bias_correction), None, &[])]);
    let owner = assign(&params, &t, &[]).unwrap();
    let g = update_graph(&params, &owner, &t).unwrap();

    let mut seed = 7u64;
    // Graph-side values (fed back from the outputs) and the f64 reference trajectory.
    let mut feed: Feed = HashMap::new();
    let mut refp: HashMap<String, Moments> = HashMap::new();
    for p in &params {
        let n = p.shape.iter().product();
        let v = vals(&mut seed, n, -1.0, 1.0);
        feed.insert(p.name.clone(), (p.shape.clone(), v.clone()));
        feed.insert(format!("m.{}", p.name), (p.shape.clone(), vec![0.0; n]));
        feed.insert(format!("v.{}", p.name), (p.shape.clone(), vec![0.0; n]));
        refp.insert(p.name.clone(), (v, vec![0.0; n], vec![0.0; n]));
    }
    for step in 1..=3i32 {
        let lr = 0.01 * step as f64; // a schedule: the lr input changes per step
        let (bc1, bc2) = if bias_correction {
            (1.0 / (1.0 - b1.powi(step)), 1.0 / (1.0 - b2.powi(step)))
        } else {
            (1.0, 1.0)
        };
        for p in &params {
            let n = p.shape.iter().product();
            let grad = vals(&mut seed, n, -2.0, 2.0);
            feed.insert(format!("grad.{}", p.name), (p.shape.clone(), grad.clone()));
            let (rp, rm, rv) = &refp[&p.name];
            let next = adamw_ref(rp, &grad, rm, rv, (b1, b2), eps, wd, lr, bc1, bc2);
            refp.insert(p.name.clone(), next);
        }
        let out = run_update(&g, &feed, &[Step { lr, bc1, bc2 }]);
        for p in &params {
            let (rp, rm, rv) = &refp[&p.name];
            let tag = format!("step {step} wd {wd} bc {bias_correction}");
            close(
                &format!("{tag} new.{}", p.name),
                &out[&format!("new.{}", p.name)],
                rp,
                RTOL,
            );
            close(
                &format!("{tag} new.m.{}", p.name),
                &out[&format!("new.m.{}", p.name)],
                rm,
                RTOL,
            );
            close(
                &format!("{tag} new.v.{}", p.name),
                &out[&format!("new.v.{}", p.name)],
                rv,
                RTOL,
            );
            for (k, o) in [("", "new."), ("m.", "new.m."), ("v.", "new.v.")] {
                let key = format!("{k}{}", p.name);
                let s = feed[&key].0.clone();
                feed.insert(key, (s, out[&format!("{o}{}", p.name)].clone()));
            }
        }
    }
}

#[test]
fn adamw_with_bias_correction_three_steps() {
    adamw_three_steps(0.0, true);
}

#[test]
fn adamw_with_bias_correction_and_weight_decay_three_steps() {
    adamw_three_steps(0.1, true);
}

#[test]
fn adamw_without_bias_correction_three_steps() {
    adamw_three_steps(0.0, false);
    adamw_three_steps(0.05, false);
}

#[test]
fn adamw_weight_decay_is_decoupled() {
    // Zero gradient and zero moments: the Adam step is 0/(0 + eps) = 0, so only the decoupled
    // decay acts: p ← p(1 − lr·wd). (L2-in-the-gradient would give a step of ≈ lr·sign(p).)
    let params = vec![param("q", "A", &[4], None)];
    let t = train(vec![opt(adamw(1e-8, 0.5, true), None, &[])]);
    let g = update_graph(&params, &[0], &t).unwrap();
    let p = vec![1.0, -2.0, 0.5, 4.0];
    let feed: Feed = [
        ("q.A", p.clone()),
        ("grad.q.A", vec![0.0; 4]),
        ("m.q.A", vec![0.0; 4]),
        ("v.q.A", vec![0.0; 4]),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), (vec![4], v)))
    .collect();
    let out = run_update(
        &g,
        &feed,
        &[Step {
            lr: 0.1,
            bc1: 10.0,
            bc2: 1000.0,
        }],
    );
    let want: Vec<f64> = p.iter().map(|x| x * (1.0 - 0.1 * 0.5)).collect();
    close("decayed", &out["new.q.A"], &want, RTOL);
}

// ---------------------------------------------------------------------------------------------
// SGD

fn sgd_three_steps(mu: f64, wd: f64) {
    let params = vec![param("q", "A", &[2, 2], None), param("q", "B", &[3], None)];
    let t = train(vec![opt(sgd(mu, wd), None, &[])]);
    let owner = assign(&params, &t, &[]).unwrap();
    let g = update_graph(&params, &owner, &t).unwrap();
    let mut seed = 11u64;
    let mut feed: Feed = HashMap::new();
    let mut refp: HashMap<String, (Vec<f64>, Vec<f64>)> = HashMap::new();
    for p in &params {
        let n = p.shape.iter().product();
        let v = vals(&mut seed, n, -1.0, 1.0);
        feed.insert(p.name.clone(), (p.shape.clone(), v.clone()));
        if mu > 0.0 {
            // torch's buffer is created from the first gradient; a zero buffer gives the same.
            feed.insert(format!("mom.{}", p.name), (p.shape.clone(), vec![0.0; n]));
        }
        refp.insert(p.name.clone(), (v, vec![0.0; n]));
    }
    for step in 1..=3 {
        let lr = 0.05 / step as f64;
        for p in &params {
            let n = p.shape.iter().product();
            let grad = vals(&mut seed, n, -2.0, 2.0);
            feed.insert(format!("grad.{}", p.name), (p.shape.clone(), grad.clone()));
            let (rp, rb) = &refp[&p.name];
            let (np, nb) = sgd_ref(rp, &grad, rb, mu, wd, lr);
            if step == 1 && mu > 0.0 {
                // First step: buf = g (+ wd·p), as torch.
                let d: Vec<f64> = grad.iter().zip(rp).map(|(g, p)| g + wd * p).collect();
                close("first buffer", &nb, &d, 1e-12);
            }
            refp.insert(
                p.name.clone(),
                (np, if mu > 0.0 { nb } else { vec![0.0; n] }),
            );
        }
        // Unused scalars (bc1/bc2) are fed anyway: the graph declares them for every optimizer.
        let out = run_update(
            &g,
            &feed,
            &[Step {
                lr,
                bc1: 1.0,
                bc2: 1.0,
            }],
        );
        for p in &params {
            let (rp, rb) = &refp[&p.name];
            let tag = format!("sgd step {step} mu {mu} wd {wd}");
            close(
                &format!("{tag} new.{}", p.name),
                &out[&format!("new.{}", p.name)],
                rp,
                RTOL,
            );
            let s = p.shape.clone();
            feed.insert(
                p.name.clone(),
                (s.clone(), out[&format!("new.{}", p.name)].clone()),
            );
            if mu > 0.0 {
                close(
                    &format!("{tag} new.mom.{}", p.name),
                    &out[&format!("new.mom.{}", p.name)],
                    rb,
                    RTOL,
                );
                feed.insert(
                    format!("mom.{}", p.name),
                    (s, out[&format!("new.mom.{}", p.name)].clone()),
                );
            } else {
                assert!(!out.contains_key(&format!("new.mom.{}", p.name)));
            }
        }
    }
}

#[test]
fn sgd_plain() {
    sgd_three_steps(0.0, 0.0);
}

#[test]
fn sgd_momentum() {
    sgd_three_steps(0.9, 0.0);
}

#[test]
fn sgd_weight_decay() {
    sgd_three_steps(0.0, 0.01);
    sgd_three_steps(0.9, 0.01);
}

// ---------------------------------------------------------------------------------------------
// Riemannian preconditioning

const D: usize = 2; // rank
const N: usize = 4; // A: [D, N]
const M: usize = 3; // B: [M, D]

struct Pair {
    e: Option<usize>,
    a: Vec<f64>,
    b: Vec<f64>,
    ga: Vec<f64>,
    gb: Vec<f64>,
    /// AdamW moments (m.A, v.A, m.B, v.B).
    ma: Vec<f64>,
    va: Vec<f64>,
    mb: Vec<f64>,
    vb: Vec<f64>,
}

impl Pair {
    fn experts(&self) -> usize {
        self.e.unwrap_or(1)
    }
    fn shape_a(&self) -> Vec<usize> {
        match self.e {
            Some(e) => vec![e, D, N],
            None => vec![D, N],
        }
    }
    fn shape_b(&self) -> Vec<usize> {
        match self.e {
            Some(e) => vec![e, M, D],
            None => vec![M, D],
        }
    }
    fn random(e: Option<usize>, seed: u64) -> Pair {
        let k = e.unwrap_or(1);
        let mut s = seed;
        let (na, nb) = (k * D * N, k * M * D);
        Pair {
            e,
            a: vals(&mut s, na, -1.0, 1.0),
            b: vals(&mut s, nb, -1.0, 1.0),
            ga: vals(&mut s, na, -1.0, 1.0),
            gb: vals(&mut s, nb, -1.0, 1.0),
            // Zero first moments and small second moments for A make the Adam step linear in Ĝ
            // and large for A, so A moves a lot and pre- vs post-update A differ clearly for B.
            ma: vec![0.0; na],
            va: vals(&mut s, na, 0.005, 0.01),
            mb: vec![0.0; nb],
            vb: vals(&mut s, nb, 0.5, 1.0),
        }
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            param("enc.q", "A", &self.shape_a(), self.e),
            param("enc.q", "B", &self.shape_b(), self.e),
        ]
    }
    fn feed(&self) -> Feed {
        let (sa, sb) = (self.shape_a(), self.shape_b());
        [
            ("enc.q.A", &sa, &self.a),
            ("grad.enc.q.A", &sa, &self.ga),
            ("m.enc.q.A", &sa, &self.ma),
            ("v.enc.q.A", &sa, &self.va),
            ("enc.q.B", &sb, &self.b),
            ("grad.enc.q.B", &sb, &self.gb),
            ("m.enc.q.B", &sb, &self.mb),
            ("v.enc.q.B", &sb, &self.vb),
        ]
        .into_iter()
        .map(|(n, s, v)| (n.to_string(), (s.clone(), v.clone())))
        .collect()
    }
}

/// Riemannian SGD reference: (A', B') with B's preconditioner from `b_uses_updated_a`.
fn sgdr_ref(p: &Pair, lr: f64, delta: f64, b_uses_updated_a: bool) -> (Vec<f64>, Vec<f64>) {
    let o = per_expert(p.experts(), &[&p.a, &p.b, &p.ga, &p.gb], |t| {
        let (a, b, ga, gb) = (t[0], t[1], t[2], t[3]);
        let ga_hat = precond_a(b, ga, M, D, N, delta);
        let a_new: Vec<f64> = a.iter().zip(&ga_hat).map(|(x, g)| x - lr * g).collect();
        let a_for_b = if b_uses_updated_a { &a_new[..] } else { a };
        let gb_hat = precond_b(a_for_b, gb, M, D, N, delta);
        let b_new: Vec<f64> = b.iter().zip(&gb_hat).map(|(x, g)| x - lr * g).collect();
        vec![a_new, b_new]
    });
    (o[0].clone(), o[1].clone())
}

/// Riemannian AdamW reference (no bias correction): [A', m.A', v.A', B', m.B', v.B'].
fn adamwr_ref(p: &Pair, lr: f64, eps: f64, delta: f64, b_uses_updated_a: bool) -> Vec<Vec<f64>> {
    let betas = (0.9, 0.999);
    per_expert(
        p.experts(),
        &[&p.a, &p.b, &p.ga, &p.gb, &p.ma, &p.va, &p.mb, &p.vb],
        |t| {
            let (a, b, ga, gb, ma, va, mb, vb) = (t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
            let ga_hat = precond_a(b, ga, M, D, N, delta);
            let (a_new, ma_new, va_new) =
                adamw_ref(a, &ga_hat, ma, va, betas, eps, 0.0, lr, 1.0, 1.0);
            let a_for_b = if b_uses_updated_a { &a_new[..] } else { a };
            let gb_hat = precond_b(a_for_b, gb, M, D, N, delta);
            let (b_new, mb_new, vb_new) =
                adamw_ref(b, &gb_hat, mb, vb, betas, eps, 0.0, lr, 1.0, 1.0);
            vec![a_new, ma_new, va_new, b_new, mb_new, vb_new]
        },
    )
}

fn riemannian_graph(p: &Pair, kind: OptimizerKind, delta: f64) -> Graph {
    let params = p.params();
    let t = train(vec![opt(kind, Some((delta, "A", "B")), &[])]);
    let owner = assign(&params, &t, &["A".into(), "B".into()]).unwrap();
    update_graph(&params, &owner, &t).unwrap()
}

fn check_sgdr(e: Option<usize>) {
    let (lr, delta) = (0.3, 0.1);
    let p = Pair::random(e, 21);
    let g = riemannian_graph(&p, sgd(0.0, 0.0), delta);
    let out = run_update(
        &g,
        &p.feed(),
        &[Step {
            lr,
            bc1: 1.0,
            bc2: 1.0,
        }],
    );
    let (a_want, b_want) = sgdr_ref(&p, lr, delta, false);
    let (_, b_wrong) = sgdr_ref(&p, lr, delta, true);
    assert!(
        max_abs_diff(&b_want, &b_wrong) > 1e-2,
        "test values do not separate Jacobi from Gauss–Seidel"
    );
    close("SGDr new A", &out["new.enc.q.A"], &a_want, RTOL);
    close(
        "SGDr new B (pre-update A)",
        &out["new.enc.q.B"],
        &b_want,
        RTOL,
    );
    // And the preconditioner actually did something: plain SGD would differ.
    let plain_a: Vec<f64> = p.a.iter().zip(&p.ga).map(|(x, g)| x - lr * g).collect();
    assert!(max_abs_diff(&plain_a, &a_want) > 1e-2);
}

fn check_adamwr(e: Option<usize>) {
    let (lr, eps, delta) = (0.5, 1e-6, 0.1);
    let p = Pair::random(e, 33);
    let g = riemannian_graph(&p, adamw(eps, 0.0, false), delta);
    let out = run_update(
        &g,
        &p.feed(),
        &[Step {
            lr,
            bc1: 1.0,
            bc2: 1.0,
        }],
    );
    let want = adamwr_ref(&p, lr, eps, delta, true);
    let wrong = adamwr_ref(&p, lr, eps, delta, false);
    assert!(
        max_abs_diff(&want[3], &wrong[3]) > 1e-2,
        "test values do not separate Gauss–Seidel from Jacobi: {}",
        max_abs_diff(&want[3], &wrong[3])
    );
    let names = [
        "new.enc.q.A",
        "new.m.enc.q.A",
        "new.v.enc.q.A",
        "new.enc.q.B",
        "new.m.enc.q.B",
        "new.v.enc.q.B",
    ];
    for (n, w) in names.iter().zip(&want) {
        close(&format!("AdamWr {n}"), &out[*n], w, RTOL);
    }
}

/// The Riemannian update-order test (methods.md §4.1, §7.10): SGD builds B's preconditioner from
/// the pre-update A (Jacobi), AdamW from the already-updated A (Gauss–Seidel).
#[test]
fn riemannian_update_order_sgd_uses_pre_update_a() {
    check_sgdr(None);
}

#[test]
fn riemannian_update_order_adamw_uses_updated_a() {
    check_adamwr(None);
}

#[test]
fn riemannian_update_order_per_expert_stacked() {
    check_sgdr(Some(3));
    check_adamwr(Some(3));
}

/// methods.md §7.10: at step 1 with B = 0 the gradient of A (= Bᵀ·G_W) is 0, so only B moves.
#[test]
fn riemannian_first_step_with_zero_b_moves_only_b() {
    let delta = 1e-6;
    for e in [None, Some(2)] {
        let k = e.unwrap_or(1);
        let mut s = 5u64;
        let a = vals(&mut s, k * D * N, -1.0, 1.0);
        let b = vec![0.0; k * M * D];
        // W = B·A, so G_A = Bᵀ G_W (= 0) and G_B = G_W Aᵀ, per expert.
        let gw = vals(&mut s, k * M * N, -1.0, 1.0);
        let grads = per_expert(k, &[&a, &b, &gw], |t| {
            vec![
                matmul(&transpose(t[1], M, D), t[2], D, M, N),
                matmul(t[2], &transpose(t[0], D, N), M, N, D),
            ]
        });
        assert!(grads[0].iter().all(|&x| x == 0.0));
        let na = k * D * N;
        let nb = k * M * D;
        let p = Pair {
            e,
            a: a.clone(),
            b,
            ga: grads[0].clone(),
            gb: grads[1].iter().map(|&x| x as f32 as f64).collect(),
            ma: vec![0.0; na],
            va: vec![0.0; na],
            mb: vec![0.0; nb],
            vb: vec![0.0; nb],
        };

        // AdamW (as in the method: no bias correction, eps 1e-6).
        let (lr, eps) = (1e-2, 1e-6);
        let g = riemannian_graph(&p, adamw(eps, 0.0, false), delta);
        let out = run_update(
            &g,
            &p.feed(),
            &[Step {
                lr,
                bc1: 1.0,
                bc2: 1.0,
            }],
        );
        assert_eq!(
            out["new.enc.q.A"], a,
            "A must not move at step 1 with B = 0"
        );
        assert!(out["new.m.enc.q.A"].iter().all(|&x| x == 0.0));
        let want = adamwr_ref(&p, lr, eps, delta, true);
        close("B=0 AdamWr new B", &out["new.enc.q.B"], &want[3], RTOL);
        assert!(
            out["new.enc.q.B"].iter().any(|&x| x.abs() > 1e-4),
            "B must move"
        );

        // SGD.
        let g = riemannian_graph(&p, sgd(0.0, 0.0), delta);
        let out = run_update(
            &g,
            &p.feed(),
            &[Step {
                lr,
                bc1: 1.0,
                bc2: 1.0,
            }],
        );
        assert_eq!(
            out["new.enc.q.A"], a,
            "A must not move at step 1 with B = 0"
        );
        let (_, b_want) = sgdr_ref(&p, lr, delta, false);
        close("B=0 SGDr new B", &out["new.enc.q.B"], &b_want, RTOL);
        assert!(
            out["new.enc.q.B"].iter().any(|&x| x.abs() > 1e-4),
            "B must move"
        );
    }
}

/// Only the named pair is preconditioned: another tensor of the same optimizer gets the plain
/// update, and a pair in another module is preconditioned with its own factors.
#[test]
fn riemannian_leaves_other_tensors_alone_and_pairs_per_module() {
    let (lr, delta) = (0.3, 0.1);
    let p1 = Pair::random(None, 41);
    let p2 = Pair::random(None, 43);
    let mut params = p1.params();
    for q in p2.params() {
        params.push(param("enc.k", &q.local, &q.shape, None));
    }
    params.push(param("enc.q", "Wg", &[2, 2], None));
    let t = train(vec![opt(sgd(0.0, 0.0), Some((delta, "A", "B")), &[])]);
    let owner = assign(&params, &t, &[]).unwrap();
    let g = update_graph(&params, &owner, &t).unwrap();
    let mut feed = p1.feed();
    for (n, v) in p2.feed() {
        feed.insert(n.replace("enc.q", "enc.k"), v);
    }
    let wg = vec![0.5, -0.25, 1.0, 2.0];
    let gwg = vec![1.0, 2.0, -3.0, 0.5];
    feed.insert("enc.q.Wg".into(), (vec![2, 2], wg.clone()));
    feed.insert("grad.enc.q.Wg".into(), (vec![2, 2], gwg.clone()));
    let out = run_update(
        &g,
        &feed,
        &[Step {
            lr,
            bc1: 1.0,
            bc2: 1.0,
        }],
    );
    for (p, m) in [(&p1, "enc.q"), (&p2, "enc.k")] {
        let (a, b) = sgdr_ref(p, lr, delta, false);
        close(&format!("{m}.A"), &out[&format!("new.{m}.A")], &a, RTOL);
        close(&format!("{m}.B"), &out[&format!("new.{m}.B")], &b, RTOL);
    }
    let want: Vec<f64> = wg.iter().zip(&gwg).map(|(x, g)| x - lr * g).collect();
    close("Wg", &out["new.enc.q.Wg"], &want, RTOL);
}

// ---------------------------------------------------------------------------------------------
// Mixed optimizers and `assign`

#[test]
fn each_tensor_gets_its_own_optimizers_update_and_scalars() {
    let params = vec![
        param("enc.q", "A", &[2, 2, 3], Some(2)),
        param("enc.q", "Wg", &[2, 2], None),
        param("head", "weight", &[3], None),
    ];
    let t = train(vec![
        opt(adamw(1e-8, 0.0, true), None, &["experts"]),
        opt(sgd(0.0, 0.0), None, &[]),
    ]);
    let owner = assign(&params, &t, &["A".into()]).unwrap();
    assert_eq!(owner, vec![0, 1, 1]);
    let g = update_graph(&params, &owner, &t).unwrap();
    let mut seed = 3u64;
    let mut feed = HashMap::new();
    for p in &params {
        let n: usize = p.shape.iter().product();
        feed.insert(
            p.name.clone(),
            (p.shape.clone(), vals(&mut seed, n, -1.0, 1.0)),
        );
        feed.insert(
            format!("grad.{}", p.name),
            (p.shape.clone(), vals(&mut seed, n, -1.0, 1.0)),
        );
    }
    let n = 12;
    feed.insert(
        "m.enc.q.A".into(),
        (vec![2, 2, 3], vals(&mut seed, n, -0.1, 0.1)),
    );
    feed.insert(
        "v.enc.q.A".into(),
        (vec![2, 2, 3], vals(&mut seed, n, 0.01, 0.02)),
    );
    let steps = [
        Step {
            lr: 1e-2,
            bc1: 1.0 / (1.0 - 0.9f64.powi(4)),
            bc2: 1.0 / (1.0 - 0.999f64.powi(4)),
        },
        Step {
            lr: 0.2,
            bc1: 1.0,
            bc2: 1.0,
        },
    ];
    let out = run_update(&g, &feed, &steps);
    let f = |k: &str| feed[k].1.clone();
    let (pa, ma, va) = adamw_ref(
        &f("enc.q.A"),
        &f("grad.enc.q.A"),
        &f("m.enc.q.A"),
        &f("v.enc.q.A"),
        (0.9, 0.999),
        1e-8,
        0.0,
        steps[0].lr,
        steps[0].bc1,
        steps[0].bc2,
    );
    close("A", &out["new.enc.q.A"], &pa, RTOL);
    close("m.A", &out["new.m.enc.q.A"], &ma, RTOL);
    close("v.A", &out["new.v.enc.q.A"], &va, RTOL);
    for n in ["enc.q.Wg", "head.weight"] {
        let (pn, _) = sgd_ref(&f(n), &f(&format!("grad.{n}")), &[], 0.0, 0.0, steps[1].lr);
        close(n, &out[&format!("new.{n}")], &pn, RTOL);
    }
}

fn selectors_params() -> Vec<ParamInfo> {
    vec![
        param("l0.q", "A", &[2, 4, 3], Some(2)),
        param("l0.q", "B", &[2, 5, 4], Some(2)),
        param("l0.q", "Wg", &[2, 3], None),
        param("l0.q", "scale", &[1], None),
        param("head", "weight", &[2, 3], None),
        param("head", "bias", &[2], None),
    ]
}

#[test]
fn assign_routes_tensors_by_selector_else_default() {
    let params = selectors_params();
    let experts = vec!["A".to_string(), "B".to_string()];
    let t = train(vec![
        opt(adamw(1e-8, 0.0, true), None, &["experts"]),
        opt(sgd(0.0, 0.0), None, &["head"]),
        opt(adamw(1e-8, 0.0, true), None, &["Wg"]),
        opt(adamw(1e-8, 0.1, true), None, &[]),
    ]);
    assert_eq!(
        assign(&params, &t, &experts).unwrap(),
        vec![0, 0, 2, 3, 1, 1]
    );

    // The default may come first: a `for` optimizer still claims its tensors.
    let t = train(vec![
        opt(adamw(1e-8, 0.1, true), None, &[]),
        opt(sgd(0.0, 0.0), None, &["head", "scale"]),
    ]);
    assert_eq!(
        assign(&params, &t, &experts).unwrap(),
        vec![0, 0, 0, 1, 1, 1]
    );

    // `adapters` claims every adapter tensor and not the head.
    let t = train(vec![
        opt(sgd(0.0, 0.0), None, &["adapters"]),
        opt(adamw(1e-8, 0.0, true), None, &[]),
    ]);
    assert_eq!(
        assign(&params, &t, &experts).unwrap(),
        vec![0, 0, 0, 0, 1, 1]
    );

    // `experts` needs the tensor to be declared in an experts block.
    let t = train(vec![
        opt(sgd(0.0, 0.0), None, &["experts"]),
        opt(adamw(1e-8, 0.0, true), None, &[]),
    ]);
    assert_eq!(
        assign(&params, &t, &["A".to_string()]).unwrap(),
        vec![0, 1, 1, 1, 1, 1]
    );

    // A tensor-name selector claims that tensor in every module (and every expert's copy).
    let mut more = params.clone();
    more.push(param("l1.v", "A", &[2, 4, 3], Some(2)));
    let t = train(vec![
        opt(sgd(0.0, 0.0), None, &["A"]),
        opt(adamw(1e-8, 0.0, true), None, &[]),
    ]);
    assert_eq!(
        assign(&more, &t, &experts).unwrap(),
        vec![0, 1, 1, 1, 1, 1, 0]
    );
}

#[test]
fn assign_without_default_rejects_an_unclaimed_tensor() {
    let params = selectors_params();
    let experts = vec!["A".to_string(), "B".to_string()];
    let t = train(vec![
        opt(adamw(1e-8, 0.0, true), None, &["experts"]),
        opt(sgd(0.0, 0.0), None, &["head"]),
    ]);
    let err = assign(&params, &t, &experts).unwrap_err();
    assert!(
        err.0.contains("l0.q.Wg"),
        "error names the tensor: {}",
        err.0
    );

    // Every tensor claimed: no default needed.
    let t = train(vec![
        opt(adamw(1e-8, 0.0, true), None, &["adapters"]),
        opt(sgd(0.0, 0.0), None, &["head"]),
    ]);
    assert_eq!(
        assign(&params, &t, &experts).unwrap(),
        vec![0, 0, 0, 0, 1, 1]
    );

    // No optimizers at all.
    assert!(assign(&params, &train(vec![]), &experts).is_err());
}
