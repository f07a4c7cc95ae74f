//! Whole-graph gradient checks through adapted attention blocks of a tiny random BERT (written
//! to a temp dir: hidden 8, 2 heads, FFN 16, one layer, vocabulary 20).
//!
//! Every check compares the `grad.<param>` outputs of `gradient_graph` (forward + task loss +
//! aux + reverse-mode autodiff, run on the f32 reference interpreter) with central finite
//! differences of the graph's `loss`: step h = 1e-2, tolerance 2e-3 + 3e-2·|g| per coordinate,
//! every coordinate of every trainable tensor (they are all small). A coordinate whose ±h
//! perturbation changes any top-k routing mask of the graph is skipped (the loss is not
//! differentiable across a routing flip); the tests assert that few are skipped.
//!
//! Fixtures and the finite-difference check: `common/adapter_fd.rs`; the gate-mix identities:
//! `adapter_gated_mix.rs`.

mod common;

use common::adapter_fd::*;

#[test]
fn lora_gradients_match_finite_differences() {
    let dir = tiny_dir("lora");
    let text = spec_text("std.lora", "LoRA(r = 2, alpha = 4.0)");
    let geo = Geometry { batch: 3, seq: 5 };
    let c = case(&dir, &text, geo, &[5, 3, 4], 11);
    let names: Vec<&str> = c.params.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "encoder.layer.0.attention.self.query.A",
        "encoder.layer.0.attention.self.query.B",
        "encoder.layer.0.attention.self.value.A",
        "encoder.layer.0.attention.self.value.B",
        "head.weight",
        "head.bias",
    ] {
        assert!(names.contains(&want), "missing parameter {want}: {names:?}");
    }
    // B is non-zero, so A's gradient is too.
    for m in [QUERY, VALUE] {
        let ga = &c.grads[&format!("{m}.A")];
        assert!(
            ga.f().iter().any(|v| v.abs() > 1e-4),
            "{m}.A has a zero gradient"
        );
    }
    let rep = c.check_all("LoRA");
    assert_eq!(rep.skipped, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Embedding output of the tiny BERT on the host (f64): the input of layer 0's linears,
/// `[batch · seq, hidden]`.
fn embeddings(inputs: &HashMap<String, Tensor>, geo: Geometry) -> Vec<Vec<f64>> {
    let h = 8;
    let (we, pe, te) = (
        &inputs["embeddings.word_embeddings.weight"],
        &inputs["embeddings.position_embeddings.weight"],
        &inputs["embeddings.token_type_embeddings.weight"],
    );
    let (lw, lb) = (
        &inputs["embeddings.LayerNorm.weight"],
        &inputs["embeddings.LayerNorm.bias"],
    );
    let (ids, types) = (inputs["input_ids"].i(), inputs["token_type_ids"].i());
    let mut rows = Vec::new();
    for b in 0..geo.batch {
        for k in 0..geo.seq {
            let (id, ty) = (
                ids[b * geo.seq + k] as usize,
                types[b * geo.seq + k] as usize,
            );
            let e: Vec<f64> = (0..h)
                .map(|j| {
                    we.f()[id * h + j] as f64 + pe.f()[k * h + j] as f64 + te.f()[ty * h + j] as f64
                })
                .collect();
            let mu = e.iter().sum::<f64>() / h as f64;
            let var = e.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / h as f64;
            let sd = (var + EPS).sqrt();
            rows.push(
                (0..h)
                    .map(|j| (e[j] - mu) / sd * lw.f()[j] as f64 + lb.f()[j] as f64)
                    .collect(),
            );
        }
    }
    rows
}

/// Asserts that the routing of both adapted modules is not near a tie on these inputs: a ±h
/// step moves a router logit by at most h · max|x| (about 0.03 here).
fn assert_routing_margin(c: &Case, geo: Geometry, k: usize) {
    let x = embeddings(&c.inputs, geo);
    for m in [QUERY, VALUE] {
        let probs = router_probs(&x, &c.inputs[&format!("{m}.Wg")]);
        let gap = probs
            .iter()
            .map(|p| topk(p, k).1)
            .fold(f64::INFINITY, f64::min);
        assert!(
            gap > 0.05,
            "{m}: near tie in the top-{k} routing (logit gap {gap})"
        );
    }
}

#[test]
fn molora_top2_switch_balance_gradients_match_finite_differences() {
    let dir = tiny_dir("molora");
    let text = spec_text(
        "std.molora",
        "MoLoRA(E = 4, k = 2, r = 2, alpha = 4.0, aux_coef = 0.5)",
    );
    let geo = Geometry { batch: 3, seq: 5 };
    let c = case(&dir, &text, geo, &[5, 3, 4], 23);
    assert!(c.forward_graph.output("aux").is_some(), "no aux output");
    assert_routing_margin(&c, geo, 2);
    c.check_all("MoLoRA loss");

    // The balance term alone (it is small next to the task loss): gradient of `aux` by
    // autodiff against finite differences of `aux`.
    let mut g = c.forward_graph.clone();
    let aux = g.output("aux").unwrap();
    let wrt: Vec<(String, NodeId)> = g.inputs_of_kind(InputKind::Param);
    let ids: Vec<NodeId> = wrt.iter().map(|(_, i)| *i).collect();
    let grads = autodiff::grad(&mut g, aux, &ids).unwrap();
    let mut named = Vec::new();
    for ((n, _), gr) in wrt.iter().zip(grads) {
        if let Some(gr) = gr {
            g.set_output(&format!("grad.{n}"), gr);
            named.push(n.clone());
        }
    }
    // Only the routers reach the balance loss (through P; the counts are piecewise constant).
    named.sort();
    assert_eq!(named, vec![format!("{QUERY}.Wg"), format!("{VALUE}.Wg")]);
    let vals = run(&g, &c.inputs).unwrap();
    let aux_grads: HashMap<String, Tensor> = named
        .iter()
        .map(|n| {
            (
                n.clone(),
                vals[&g.output(&format!("grad.{n}")).unwrap()].clone(),
            )
        })
        .collect();
    let obj = Objective::new(c.forward_graph.clone(), "aux");
    fd_check(
        &obj,
        &c.inputs,
        &aux_grads,
        &named,
        &|_, _| 1.0,
        "MoLoRA aux",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The switch balance value, E · Σ_i (c_i / Σc) · P_i · coef summed over modules, against a
/// host computation (no padding, so every row is a token).
#[test]
fn molora_switch_balance_value_matches_host() {
    let dir = tiny_dir("balance");
    let text = spec_text(
        "std.molora",
        "MoLoRA(E = 4, k = 2, r = 2, alpha = 4.0, aux_coef = 0.5)",
    );
    let geo = Geometry { batch: 2, seq: 6 };
    let c = case(&dir, &text, geo, &[6, 6], 31);
    let obj = Objective::new(c.forward_graph.clone(), "aux");
    let (aux, _) = obj.eval(&c.inputs);
    let x = embeddings(&c.inputs, geo);
    let mut want = 0.0;
    for m in [QUERY, VALUE] {
        let probs = router_probs(&x, &c.inputs[&format!("{m}.Wg")]);
        let t = probs.len() as f64;
        let mut counts = [0.0f64; 4];
        let mut p = [0.0f64; 4];
        for row in &probs {
            for i in topk(row, 2).0 {
                counts[i] += 1.0;
            }
            for i in 0..4 {
                p[i] += row[i] / t;
            }
        }
        let total: f64 = counts.iter().sum();
        want += 0.5 * 4.0 * (0..4).map(|i| counts[i] / total * p[i]).sum::<f64>();
    }
    assert!((aux - want).abs() < 1e-5, "aux {aux}, host {want}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn riemannian_gradients_match_finite_differences() {
    let dir = tiny_dir("riemann");
    let geo = Geometry { batch: 3, seq: 5 };
    let lens = [5, 3, 4];
    // p = 1: plain top-k MoE-LoRA, every gradient is the loss's.
    let p1 = spec_text(
        "std.riemannian",
        "RiemannMoE(E = 4, k = 2, r = 2, alpha = 4.0, p = 1.0)",
    );
    let c1 = case(&dir, &p1, geo, &lens, 41);
    assert_routing_margin(&c1, geo, 2);
    c1.check_all("RiemannMoE p = 1");
    // p = 0.5: the gate's and the head's gradients are still the loss's; the experts' are not.
    let ph = spec_text(
        "std.riemannian",
        "RiemannMoE(E = 4, k = 2, r = 2, alpha = 4.0, p = 0.5)",
    );
    let ch = case(&dir, &ph, geo, &lens, 41);
    assert!(
        (ch.loss - c1.loss).abs() < 1e-6,
        "the gate exponent changed the forward pass: {} vs {}",
        ch.loss,
        c1.loss
    );
    let obj = ch.loss_objective();
    let exact = ch.names(|n| n.ends_with(".Wg") || n.starts_with("head."));
    fd_check(
        &obj,
        &ch.inputs,
        &ch.grads,
        &exact,
        &|_, _| 1.0,
        "RiemannMoE p = 0.5 gate, head",
    );
    for n in &exact {
        let d = ch.grads[n].max_abs_diff(&c1.grads[n]);
        assert!(d < 1e-5, "`{n}`: p = 0.5 and p = 1 gradients differ by {d}");
    }
    // The experts' gradients do change with p (some selected gates are below 1).
    let experts = ch.names(|n| n.ends_with(".A") || n.ends_with(".B"));
    let changed = experts
        .iter()
        .map(|n| ch.grads[n].max_abs_diff(&c1.grads[n]))
        .fold(0f32, f32::max);
    assert!(changed > 1e-4, "p = 0.5 expert gradients equal p = 1 ones");
    // Top-1 renormalised gates are identically 1 where selected: p is irrelevant and every
    // gradient (experts included) is the loss's.
    let t1 = spec_text(
        "std.riemannian",
        "RiemannMoE(E = 4, k = 1, r = 2, alpha = 4.0, p = 0.5)",
    );
    let c = case(&dir, &t1, geo, &lens, 46);
    assert_routing_margin(&c, geo, 1);
    c.check_all("RiemannMoE top-1 p = 0.5");
    let _ = std::fs::remove_dir_all(&dir);
}

/// In a one-layer BERT only the [CLS] query reaches the pooled head, so on a one-sequence batch
/// the query experts' gradients come from a single token t = 0, whose gate g_e is known:
/// dθ_e(p) = g_e^p · u_e while the loss's gradient is g_e · u_e, i.e.
/// dθ_e(p = 0.5) = g_e^(−1/2) · (finite difference), and both vanish for unselected experts.
#[test]
fn riemannian_sqrt_gate_scales_the_expert_gradient() {
    let dir = tiny_dir("riemann-cls");
    let geo = Geometry { batch: 1, seq: 4 };
    let text = spec_text(
        "std.riemannian",
        "RiemannMoE(E = 4, k = 2, r = 2, alpha = 4.0, p = 0.5)",
    );
    let c = case(&dir, &text, geo, &[4], 51);
    let x = embeddings(&c.inputs, geo);
    let probs = router_probs(&x[..1], &c.inputs[&format!("{QUERY}.Wg")]);
    let (sel, gap) = topk(&probs[0], 2);
    assert!(
        gap > 0.05,
        "near tie in the [CLS] routing (logit gap {gap})"
    );
    let total: f64 = sel.iter().map(|&i| probs[0][i]).sum();
    let gate: Vec<f64> = (0..4)
        .map(|i| {
            if sel.contains(&i) {
                probs[0][i] / total
            } else {
                0.0
            }
        })
        .collect();
    eprintln!("[CLS] query gates {gate:?}");
    assert!(
        gate.iter().any(|&g| g > 0.0 && g < 0.9),
        "gates too close to 1 to tell p apart"
    );
    let names = c.names(|n| n.starts_with(QUERY) && (n.ends_with(".A") || n.ends_with(".B")));
    assert_eq!(names.len(), 2);
    let shapes: HashMap<String, Vec<usize>> = c.params.iter().cloned().collect();
    let scale = |name: &str, i: usize| -> f64 {
        let per_expert: usize = shapes[name][1..].iter().product();
        let g = gate[i / per_expert];
        if g > 0.0 {
            g.powf(-0.5)
        } else {
            0.0
        }
    };
    let rep = fd_check(
        &c.loss_objective(),
        &c.inputs,
        &c.grads,
        &names,
        &scale,
        "RiemannMoE p = 0.5 [CLS] query experts",
    );
    assert_eq!(rep.skipped, 0);
    // Unselected experts get exactly no gradient.
    for n in &names {
        let per_expert: usize = shapes[n][1..].iter().product();
        for (i, v) in c.grads[n].f().iter().enumerate() {
            if gate[i / per_expert] == 0.0 {
                assert_eq!(*v, 0.0, "`{n}`[{i}] of an unselected expert");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
