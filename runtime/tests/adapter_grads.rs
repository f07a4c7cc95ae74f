//! Whole-graph gradient checks through adapted attention blocks of a tiny random BERT (written
//! to a temp dir: hidden 8, 2 heads, FFN 16, one layer, vocabulary 20), and the √g gate-mix
//! identities of `gated_mix` through the real lowering.
//!
//! Every check compares the `grad.<param>` outputs of `gradient_graph` (forward + task loss +
//! aux + reverse-mode autodiff, run on the f32 reference interpreter) with central finite
//! differences of the graph's `loss`: step h = 1e-2, tolerance 2e-3 + 3e-2·|g| per coordinate,
//! every coordinate of every trainable tensor (they are all small). A coordinate whose ±h
//! perturbation changes any top-k routing mask of the graph is skipped (the loss is not
//! differentiable across a routing flip); the tests assert that few are skipped.

mod common;

use common::{temp_dir, write_safetensors};
use lorac_compiler::build::loss::{add_loss, gradient_graph};
use lorac_compiler::build::lower::Lowerer;
use lorac_compiler::build::{forward, Geometry};
use lorac_compiler::check::{check_source, Spec};
use lorac_compiler::ir::interp::run;
use lorac_compiler::ir::{DType, Graph, InputKind, NodeId, Op, Tensor};
use lorac_compiler::model::{expected_tensors, parse_config, Family};
use lorac_compiler::passes::{autodiff, dce};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const H: f32 = 1e-2;
const ABS_TOL: f64 = 2e-3;
const REL_TOL: f64 = 3e-2;

const CONFIG: &str = r#"{
  "architectures": ["BertModel"],
  "model_type": "bert",
  "hidden_size": 8,
  "num_attention_heads": 2,
  "intermediate_size": 16,
  "num_hidden_layers": 1,
  "vocab_size": 20,
  "max_position_embeddings": 16,
  "type_vocab_size": 2,
  "layer_norm_eps": 1e-12,
  "hidden_act": "gelu"
}"#;

const EPS: f64 = 1e-12;

struct Normal(ChaCha8Rng);

impl Normal {
    fn new(seed: u64) -> Normal {
        Normal(ChaCha8Rng::seed_from_u64(seed))
    }
    fn sample(&mut self) -> f64 {
        // Box–Muller.
        let u1: f64 = self.0.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = self.0.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    fn tensor(&mut self, shape: &[usize], mean: f64, std: f64) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::f32(
            shape.to_vec(),
            (0..n)
                .map(|_| (mean + std * self.sample()) as f32)
                .collect(),
        )
    }
}

/// Writes the tiny random BERT (config.json, model.safetensors) and a small jsonl data file into
/// `dir`; returns the weights.
fn tiny_bert(dir: &Path) -> HashMap<String, Tensor> {
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    std::fs::write(
        dir.join("train.jsonl"),
        "{\"text\": \"a b c\", \"label\": 0}\n{\"text\": \"d e\", \"label\": 1}\n{\"text\": \"f\", \"label\": 2}\n",
    )
    .unwrap();
    let cfg = parse_config(Family::Bert, CONFIG).unwrap();
    let mut rng = Normal::new(7);
    let mut out = Vec::new();
    for t in expected_tensors(&cfg) {
        let v = if t.name.ends_with("LayerNorm.weight") {
            rng.tensor(&t.shape, 1.0, 0.1)
        } else if t.name.ends_with("LayerNorm.bias") {
            rng.tensor(&t.shape, 0.0, 0.1)
        } else {
            rng.tensor(&t.shape, 0.0, 0.5)
        };
        out.push((t.name.clone(), v));
    }
    write_safetensors(&dir.join("model.safetensors"), &out);
    out.into_iter().collect()
}

fn check(dir: &Path, text: &str) -> Spec {
    let checked = check_source("grads.lora", &dir.join("grads.lora"), text.to_string());
    let msgs: Vec<String> = checked
        .diagnostics
        .iter()
        .map(|d| format!("{}: {}", d.code, d.message))
        .collect();
    checked
        .spec
        .unwrap_or_else(|| panic!("the test spec does not check: {msgs:?}\n{text}"))
}

fn spec_text(import: &str, attach: &str) -> String {
    format!(
        "import {import}\n\
         model bert(\".\")\n\
         attach {attach} to encoder.layer.0.attention.self.{{query, value}}\n\
         train {{\n  data(train = \"train.jsonl\")\n  task classification(labels = 3)\n  \
         optimizer adamw(lr = 1e-3)\n  steps 1\n}}\n"
    )
}

/// Data inputs: random ids and token types, rows of `lens[b]` real tokens then padding, labels.
fn data(geo: Geometry, lens: &[usize], seed: u64) -> HashMap<String, Tensor> {
    let (b, l) = (geo.batch, geo.seq);
    assert_eq!(lens.len(), b);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ids = vec![0i64; b * l];
    let mut types = vec![0i64; b * l];
    let mut mask = vec![0f32; b * l];
    for r in 0..b {
        for k in 0..l {
            if k < lens[r] {
                ids[r * l + k] = rng.random_range(1..20);
                types[r * l + k] = rng.random_range(0..2);
                mask[r * l + k] = 1.0;
            }
        }
    }
    let labels: Vec<i64> = (0..b).map(|r| (r % 3) as i64).collect();
    HashMap::from([
        ("input_ids".to_string(), Tensor::i64(vec![b, l], ids)),
        ("token_type_ids".to_string(), Tensor::i64(vec![b, l], types)),
        ("attention_mask".to_string(), Tensor::f32(vec![b, l], mask)),
        ("labels".to_string(), Tensor::i64(vec![b], labels)),
    ])
}

/// Parameter values: every trainable tensor random and non-zero (B included), scale by role.
fn param_values(params: &[(String, Vec<usize>)], seed: u64) -> HashMap<String, Tensor> {
    let mut rng = Normal::new(seed);
    params
        .iter()
        .map(|(name, shape)| {
            let std = if name.ends_with(".Wg") {
                0.5
            } else if name == "head.bias" {
                0.1
            } else {
                0.5
            };
            (name.clone(), rng.tensor(shape, 0.0, std))
        })
        .collect()
}

/// A graph whose only output is `target`, pruned, with the ids of its top-k masks.
struct Objective {
    graph: Graph,
    out: NodeId,
    masks: Vec<NodeId>,
}

impl Objective {
    fn new(mut graph: Graph, target: &str) -> Objective {
        let out = graph.output(target).expect("objective output");
        graph.outputs.retain(|(n, _)| n == target);
        dce::run(&mut graph).unwrap();
        let masks = graph
            .g
            .node_indices()
            .filter(|&i| matches!(graph.node(i).op, Op::TopKMask { .. }))
            .collect();
        Objective { graph, out, masks }
    }

    /// The objective's value and its routing masks.
    fn eval(&self, inputs: &HashMap<String, Tensor>) -> (f64, Vec<Tensor>) {
        let vals = run(&self.graph, inputs).unwrap();
        let v = vals[&self.out].f()[0] as f64;
        (v, self.masks.iter().map(|m| vals[m].clone()).collect())
    }
}

#[derive(Default, Debug)]
struct Report {
    checked: usize,
    skipped: usize,
    worst: f64,
}

/// Compares `grads[name]` with central differences of `obj` for every coordinate of every
/// tensor in `names`; `scale(name, i)` maps a finite difference to the expected gradient.
fn fd_check(
    obj: &Objective,
    inputs: &HashMap<String, Tensor>,
    grads: &HashMap<String, Tensor>,
    names: &[String],
    scale: &dyn Fn(&str, usize) -> f64,
    what: &str,
) -> Report {
    let (base, base_masks) = obj.eval(inputs);
    assert!(base.is_finite(), "{what}: objective {base}");
    let mut work = inputs.clone();
    let mut rep = Report::default();
    let mut failures = Vec::new();
    for name in names {
        let g = grads
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no gradient for `{name}`"));
        let orig = inputs[name].clone();
        assert_eq!(g.shape, orig.shape, "{what}: gradient shape of `{name}`");
        for i in 0..orig.len() {
            let x = orig.f()[i];
            let mut at = |v: f32| {
                let mut t = orig.clone();
                if let lorac_compiler::ir::Data::F32(d) = &mut t.data {
                    d[i] = v;
                }
                work.insert(name.clone(), t);
                obj.eval(&work)
            };
            let (xp, xm) = (x + H, x - H);
            let (lp, mp) = at(xp);
            let (lm, mm) = at(xm);
            if mp != base_masks || mm != base_masks {
                rep.skipped += 1;
                continue;
            }
            let fd = (lp - lm) / (xp as f64 - xm as f64) * scale(name, i);
            let ad = g.f()[i] as f64;
            let err = (ad - fd).abs();
            let tol = ABS_TOL + REL_TOL * ad.abs();
            rep.worst = rep.worst.max(err / tol);
            rep.checked += 1;
            if err > tol {
                failures.push(format!(
                    "{name}[{i}]: autodiff {ad:.6}, finite difference {fd:.6}"
                ));
            }
        }
        work.insert(name.clone(), orig);
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} coordinates differ:\n{}",
        failures.len(),
        rep.checked,
        failures.join("\n")
    );
    assert!(
        rep.skipped * 10 <= rep.checked,
        "{what}: too many routing flips ({} skipped, {} checked); choose other inputs",
        rep.skipped,
        rep.checked
    );
    eprintln!("{what}: {rep:?}");
    rep
}

/// One whole-graph case: the spec, its gradient graph's outputs, the loss objective, inputs.
struct Case {
    spec: Spec,
    inputs: HashMap<String, Tensor>,
    params: Vec<(String, Vec<usize>)>,
    forward_graph: Graph,
    grads: HashMap<String, Tensor>,
    loss: f64,
}

fn case(dir: &Path, text: &str, geo: Geometry, lens: &[usize], seed: u64) -> Case {
    let spec = check(dir, text);
    let task = spec.train.as_ref().expect("train block").task.clone();
    let fwd = forward(&spec, geo).unwrap();
    let forward_graph = fwd.graph.clone();
    let params: Vec<(String, Vec<usize>)> = fwd
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let mut fwd = fwd;
    gradient_graph(&mut fwd, &task).unwrap();
    lorac_compiler::ir::verify::verify(&fwd.graph).unwrap();
    // Every trainable input of the graph is a listed parameter.
    for (n, _) in fwd.graph.inputs_of_kind(InputKind::Param) {
        assert!(
            params.iter().any(|(p, _)| *p == n),
            "unlisted parameter `{n}`"
        );
    }
    let weights = lorac_runtime::weights::load(&dir.join("model.safetensors"), None).unwrap();
    let mut inputs = weights;
    inputs.extend(data(geo, lens, seed));
    inputs.extend(param_values(&params, seed + 1));
    let vals = run(&fwd.graph, &inputs).unwrap();
    let mut grads = HashMap::new();
    for (name, id) in &fwd.graph.outputs {
        if let Some(p) = name.strip_prefix("grad.") {
            grads.insert(p.to_string(), vals[id].clone());
        }
    }
    let loss = vals[&fwd.graph.output("loss").unwrap()].f()[0] as f64;
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    // Parameters the loss does not reach have no `grad.` output: their gradient is zero.
    for (n, s) in &params {
        grads
            .entry(n.clone())
            .or_insert_with(|| Tensor::f32(s.clone(), vec![0.0; s.iter().product()]));
    }
    Case {
        spec,
        inputs,
        params,
        forward_graph,
        grads,
        loss,
    }
}

impl Case {
    fn loss_objective(&self) -> Objective {
        let mut g = self.forward_graph.clone();
        add_loss(&mut g, &self.spec.train.as_ref().unwrap().task).unwrap();
        Objective::new(g, "loss")
    }

    fn names(&self, filter: impl Fn(&str) -> bool) -> Vec<String> {
        self.params
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| filter(n))
            .collect()
    }

    fn check_all(&self, what: &str) -> Report {
        let obj = self.loss_objective();
        let (l, _) = obj.eval(&self.inputs);
        assert!(
            (l - self.loss).abs() < 1e-6,
            "loss graph {l} vs gradient graph {}",
            self.loss
        );
        fd_check(
            &obj,
            &self.inputs,
            &self.grads,
            &self.names(|_| true),
            &|_, _| 1.0,
            what,
        )
    }
}

const QUERY: &str = "encoder.layer.0.attention.self.query";
const VALUE: &str = "encoder.layer.0.attention.self.value";

fn tiny_dir(tag: &str) -> PathBuf {
    let dir = temp_dir(&format!("grads-{tag}"));
    tiny_bert(&dir);
    dir
}

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

/// Router softmax probabilities `x Wgᵀ` per row, f64.
fn router_probs(x: &[Vec<f64>], wg: &Tensor) -> Vec<Vec<f64>> {
    let (e, n) = (wg.shape[0], wg.shape[1]);
    x.iter()
        .map(|row| {
            let z: Vec<f64> = (0..e)
                .map(|i| (0..n).map(|j| wg.f()[i * n + j] as f64 * row[j]).sum())
                .collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let ex: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = ex.iter().sum();
            ex.iter().map(|v| v / s).collect()
        })
        .collect()
}

/// Indices of the k largest probabilities (ties: lower index), and the router-logit gap
/// between the k-th and the (k+1)-th (ln of their ratio).
fn topk(p: &[f64], k: usize) -> (Vec<usize>, f64) {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap());
    let gap = if k < p.len() {
        (p[order[k - 1]] / p[order[k]]).ln()
    } else {
        f64::INFINITY
    };
    (order[..k].to_vec(), gap)
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
