//! The √g gate-mix identities of `gated_mix` at the adapter level, through the real lowering
//! (`Lowerer`), on a handcrafted objective. Fixtures: `common/adapter_fd.rs`.

mod common;

use common::adapter_fd::*;

// ---------------------------------------------------------------------------------------------
// gated_mix at the adapter level, through the real lowering (`Lowerer`), on a handcrafted
// objective L = Σ out ⊙ R with y_e = x A_eᵀ.

const MIX_SPEC: &str = r#"
model bert(".")

# Dense softmax gate over E experts, each expert a full [m, n] map.
adapter Mix(E: int = 3, p: float = 0.5) on W0[m, n] {
  param Wg[E, n] = zeros
  experts e in 0..E {
    param A[e][m, n] = zeros
  }
  let g = softmax(x @ Wg^T)
  out = sum(e, gated_mix(g[e], x @ A[e]^T, p = p))
}

# Top-1 renormalised gate: 1 on the selected expert, 0 elsewhere.
adapter MixTop1(E: int = 3, p: float = 0.5) on W0[m, n] {
  param Wg[E, n] = zeros
  experts e in 0..E {
    param A[e][m, n] = zeros
  }
  let g = topk(softmax(x @ Wg^T), 1, renorm)
  out = sum(e, gated_mix(g[e], x @ A[e]^T, p = p))
}

attach Mix(p = 0.5) to encoder.layer.0.attention.self.query
attach Mix(p = 1.0) to encoder.layer.0.attention.self.key
attach Mix(p = 0.0) to encoder.layer.0.attention.self.value
attach MixTop1(p = 0.5) to encoder.layer.0.attention.output.dense
attach MixTop1(p = 1.0) to pooler.dense
attach MixTop1(p = 0.0) to encoder.layer.0.intermediate.dense
"#;

struct Mixed {
    out: Tensor,
    loss: f64,
    da: Tensor,
    dwg: Tensor,
    g: Graph,
    inputs: HashMap<String, Tensor>,
}

/// Lowers `module`'s attachment on x[T, n], adds L = Σ out ⊙ R and its gradients w.r.t. the
/// module's A and Wg, and runs it with the given values (fed under the module's names).
fn lower_mix(spec: &Spec, module: &str, x: &Tensor, r: &Tensor, a: &Tensor, wg: &Tensor) -> Mixed {
    let at = spec
        .attachments
        .iter()
        .find(|a| a.module == module)
        .unwrap_or_else(|| panic!("no attachment at {module}"));
    let def = &spec.adapters[&at.adapter];
    let (t, n, m) = (x.shape[0], at.n, at.m);
    let mut g = Graph::new();
    let input = |g: &mut Graph, name: &str, kind, shape: Vec<usize>| {
        g.add(
            Op::Input {
                name: name.into(),
                kind,
                shape,
                dtype: DType::F32,
            },
            &[],
        )
        .unwrap()
    };
    let xn = input(&mut g, "x", InputKind::Data, vec![t, n]);
    let rn = input(&mut g, "R", InputKind::Data, vec![t, m]);
    let w0_name = format!("{module}.weight");
    let w0 = input(&mut g, &w0_name, InputKind::Frozen, vec![m, n]);
    let mut lw = Lowerer::new(def, at);
    let out = lw.lower(&mut g, xn, w0).unwrap();
    let prod = g.times(out, rn).unwrap();
    let loss = g.sum_all(prod).unwrap();
    g.set_output("out", out);
    g.set_output("loss", loss);
    let (an, wn) = (format!("{module}.A"), format!("{module}.Wg"));
    let ids = [g.find_input(&an).unwrap(), g.find_input(&wn).unwrap()];
    let grads = autodiff::grad(&mut g, loss, &ids).unwrap();
    let inputs: HashMap<String, Tensor> = HashMap::from([
        ("x".to_string(), x.clone()),
        ("R".to_string(), r.clone()),
        (w0_name, Tensor::f32(vec![m, n], vec![0.0; m * n])),
        (an, a.clone()),
        (wn, wg.clone()),
    ]);
    let vals = run(&g, &inputs).unwrap();
    let zero = |s: &[usize]| Tensor::f32(s.to_vec(), vec![0.0; s.iter().product()]);
    Mixed {
        out: vals[&out].clone(),
        loss: vals[&loss].f()[0] as f64,
        da: grads[0].map(|i| vals[&i].clone()).unwrap_or(zero(&a.shape)),
        dwg: grads[1]
            .map(|i| vals[&i].clone())
            .unwrap_or(zero(&wg.shape)),
        g,
        inputs,
    }
}

fn mix_spec(dir: &Path) -> Spec {
    check(dir, MIX_SPEC)
}

fn host_tensor(v: &[Vec<f64>]) -> Tensor {
    Tensor::f32(
        vec![v.len(), v[0].len()],
        v.iter().flatten().map(|&x| x as f32).collect(),
    )
}

#[test]
fn gated_mix_sqrt_gate_identities() {
    let dir = tiny_dir("mix");
    let spec = mix_spec(&dir);
    let (t, n, m, e) = (6, 8, 8, 3);
    let mut rng = Normal::new(61);
    let x = rng.tensor(&[t, n], 0.0, 1.0);
    let r = rng.tensor(&[t, m], 0.0, 1.0);
    let a = rng.tensor(&[e, m, n], 0.0, 0.5);
    let wg = rng.tensor(&[e, n], 0.0, 0.7);

    let half = lower_mix(
        &spec,
        "encoder.layer.0.attention.self.query",
        &x,
        &r,
        &a,
        &wg,
    );
    let one = lower_mix(&spec, "encoder.layer.0.attention.self.key", &x, &r, &a, &wg);
    let zero = lower_mix(
        &spec,
        "encoder.layer.0.attention.self.value",
        &x,
        &r,
        &a,
        &wg,
    );

    // Host closed forms (f64): g = softmax(x Wgᵀ), out_t = Σ_e g_te x_t A_eᵀ,
    // dA_e = Σ_t g_te^p R_tᵀ x_t.
    let xs: Vec<Vec<f64>> = x
        .f()
        .chunks(n)
        .map(|c| c.iter().map(|&v| v as f64).collect())
        .collect();
    let gate = router_probs(&xs, &wg);
    let mut out = vec![vec![0f64; m]; t];
    for (tt, row) in out.iter_mut().enumerate() {
        for (i, o) in row.iter_mut().enumerate() {
            for (ee, ge) in gate[tt].iter().enumerate() {
                let y: f64 = (0..n)
                    .map(|j| a.f()[(ee * m + i) * n + j] as f64 * xs[tt][j])
                    .sum();
                *o += ge * y;
            }
        }
    }
    let host_out = host_tensor(&out);
    let closed = |p: f64| -> Tensor {
        let mut d = vec![0f32; e * m * n];
        for ee in 0..e {
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..t)
                        .map(|tt| gate[tt][ee].powf(p) * r.f()[tt * m + i] as f64 * xs[tt][j])
                        .sum();
                    d[(ee * m + i) * n + j] = s as f32;
                }
            }
        }
        Tensor::f32(vec![e, m, n], d)
    };

    // Forward: g · y for every p.
    for (name, mx) in [("p = 0.5", &half), ("p = 0", &zero)] {
        let d = mx.out.max_abs_diff(&one.out);
        assert!(d < 1e-6, "{name}: forward differs from p = 1 by {d}");
    }
    let d = one.out.max_abs_diff(&host_out);
    assert!(d < 1e-5, "forward differs from the host g·y by {d}");

    // Expert gradients: the closed form Σ_t g^p Rᵀ x.
    for (p, mx) in [(0.5, &half), (1.0, &one), (0.0, &zero)] {
        let want = closed(p);
        let d = mx.da.max_abs_diff(&want);
        assert!(d < 1e-5, "p = {p}: dA differs from Σ_t g^p R_tᵀ x_t by {d}");
    }
    assert!(
        half.da.max_abs_diff(&one.da) > 1e-3,
        "p had no effect on dA"
    );

    // The gate's gradient does not depend on p.
    for (p, mx) in [(0.5, &half), (0.0, &zero)] {
        let d = mx.dwg.max_abs_diff(&one.dwg);
        assert!(d < 1e-6, "p = {p}: dWg differs from p = 1 by {d}");
    }
    assert!(one.dwg.f().iter().any(|v| v.abs() > 1e-3), "dWg vanished");

    // And p = 1 is the loss's true gradient, for A and Wg alike.
    let mut obj_graph = one.g.clone();
    obj_graph.outputs.retain(|(k, _)| k == "loss");
    let obj = Objective::new(obj_graph, "loss");
    let key = "encoder.layer.0.attention.self.key";
    let grads = HashMap::from([
        (format!("{key}.A"), one.da.clone()),
        (format!("{key}.Wg"), one.dwg.clone()),
    ]);
    let names = vec![format!("{key}.A"), format!("{key}.Wg")];
    assert!((obj.eval(&one.inputs).0 - one.loss).abs() < 1e-9);
    fd_check(
        &obj,
        &one.inputs,
        &grads,
        &names,
        &|_, _| 1.0,
        "gated_mix p = 1",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gated_mix_top1_gradients_do_not_depend_on_p() {
    let dir = tiny_dir("mix-top1");
    let spec = mix_spec(&dir);
    let (t, n, m, e) = (7, 8, 8, 3);
    let mut rng = Normal::new(71);
    let x = rng.tensor(&[t, n], 0.0, 1.0);
    let r = rng.tensor(&[t, m], 0.0, 1.0);
    let a = rng.tensor(&[e, m, n], 0.0, 0.5);
    let wg = rng.tensor(&[e, n], 0.0, 0.7);
    let half = lower_mix(
        &spec,
        "encoder.layer.0.attention.output.dense",
        &x,
        &r,
        &a,
        &wg,
    );
    let one = lower_mix(&spec, "pooler.dense", &x, &r, &a, &wg);
    assert_eq!(half.out, one.out, "forward");
    assert_eq!(
        half.da, one.da,
        "dA differs between p = 0.5 and p = 1 with top-1 gates"
    );
    assert_eq!(
        half.dwg, one.dwg,
        "dWg differs between p = 0.5 and p = 1 with top-1 gates"
    );
    // Every token uses exactly one expert, at weight 1: dA_e = Σ_{t routed to e} R_tᵀ x_t.
    let xs: Vec<Vec<f64>> = x
        .f()
        .chunks(n)
        .map(|c| c.iter().map(|&v| v as f64).collect())
        .collect();
    let gate = router_probs(&xs, &wg);
    let routed: Vec<usize> = gate.iter().map(|p| topk(p, 1).0[0]).collect();
    let mut want = vec![0f32; e * m * n];
    for tt in 0..t {
        for i in 0..m {
            for j in 0..n {
                want[(routed[tt] * m + i) * n + j] += r.f()[tt * m + i] * x.f()[tt * n + j];
            }
        }
    }
    let d = half.da.max_abs_diff(&Tensor::f32(vec![e, m, n], want));
    assert!(d < 1e-5, "dA differs from Σ_(t→e) R_tᵀ x_t by {d}");
    // A renormalised top-1 gate is constant: the router gets (numerically) no gradient.
    let w = half.dwg.f().iter().fold(0f32, |a, v| a.max(v.abs()));
    assert!(w < 1e-5, "dWg of a top-1 renormalised gate is {w}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With p = 0 the gate value no longer scales a selected expert's gradient, and an expert that
/// is not selected (g = 0) still gets no gradient (docs/language.md §7.2, `gated_mix`).
#[test]
fn gated_mix_p0_gives_unselected_experts_no_gradient() {
    let dir = tiny_dir("mix-p0");
    let spec = mix_spec(&dir);
    let (t, n, m, e) = (7, 8, 16, 3);
    let mut rng = Normal::new(81);
    let x = rng.tensor(&[t, n], 0.0, 1.0);
    let r = rng.tensor(&[t, m], 0.0, 1.0);
    let a = rng.tensor(&[e, m, n], 0.0, 0.5);
    let wg = rng.tensor(&[e, n], 0.0, 0.7);
    let zero = lower_mix(&spec, "encoder.layer.0.intermediate.dense", &x, &r, &a, &wg);
    let xs: Vec<Vec<f64>> = x
        .f()
        .chunks(n)
        .map(|c| c.iter().map(|&v| v as f64).collect())
        .collect();
    let gate = router_probs(&xs, &wg);
    let routed: Vec<usize> = gate.iter().map(|p| topk(p, 1).0[0]).collect();
    let mut want = vec![0f32; e * m * n];
    for tt in 0..t {
        for i in 0..m {
            for j in 0..n {
                want[(routed[tt] * m + i) * n + j] += r.f()[tt * m + i] * x.f()[tt * n + j];
            }
        }
    }
    let d = zero.da.max_abs_diff(&Tensor::f32(vec![e, m, n], want));
    assert!(
        d < 1e-5,
        "p = 0, top-1: dA differs from Σ_(t→e) R_tᵀ x_t by {d} (unselected experts got a gradient?)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
