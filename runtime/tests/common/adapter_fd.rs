//! Whole-graph gradient checks' fixtures, shared by `adapter_grads` and `adapter_gated_mix`:
//! a tiny random BERT written to a temp dir (hidden 8, 2 heads, FFN 16, one layer, vocabulary
//! 20), its data and parameter values, and `fd_check`, which compares `grad.<param>` outputs
//! with central finite differences of the loss (step h = 1e-2, tolerance 2e-3 + 3e-2·|g| per
//! coordinate), skipping coordinates whose ±h perturbation flips a top-k routing mask.

// Re-exported for the test files (`use common::adapter_fd::*`); not every file uses each.
#![allow(unused_imports)]

pub use super::{temp_dir, write_safetensors};
pub use lorac_compiler::build::loss::{add_loss, gradient_graph};
pub use lorac_compiler::build::lower::Lowerer;
pub use lorac_compiler::build::{forward, Geometry};
pub use lorac_compiler::check::{check_source, Spec};
pub use lorac_compiler::ir::interp::run;
pub use lorac_compiler::ir::{DType, Graph, InputKind, NodeId, Op, Tensor};
pub use lorac_compiler::model::{expected_tensors, parse_config, Family};
pub use lorac_compiler::passes::{autodiff, dce};
pub use rand::{Rng, SeedableRng};
pub use rand_chacha::ChaCha8Rng;
pub use std::collections::HashMap;
pub use std::path::{Path, PathBuf};

pub const H: f32 = 1e-2;
pub const ABS_TOL: f64 = 2e-3;
pub const REL_TOL: f64 = 3e-2;

pub const CONFIG: &str = r#"{
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

pub const EPS: f64 = 1e-12;

pub struct Normal(pub ChaCha8Rng);

impl Normal {
    pub fn new(seed: u64) -> Normal {
        Normal(ChaCha8Rng::seed_from_u64(seed))
    }
    pub fn sample(&mut self) -> f64 {
        // Box–Muller.
        let u1: f64 = self.0.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = self.0.random();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    pub fn tensor(&mut self, shape: &[usize], mean: f64, std: f64) -> Tensor {
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
pub fn tiny_bert(dir: &Path) -> HashMap<String, Tensor> {
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

pub fn check(dir: &Path, text: &str) -> Spec {
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

pub fn spec_text(import: &str, attach: &str) -> String {
    format!(
        "import {import}\n\
         model bert(\".\")\n\
         attach {attach} to encoder.layer.0.attention.self.{{query, value}}\n\
         train {{\n  data(train = \"train.jsonl\")\n  task classification(labels = 3)\n  \
         optimizer adamw(lr = 1e-3)\n  steps 1\n}}\n"
    )
}

/// Data inputs: random ids and token types, rows of `lens[b]` real tokens then padding, labels.
pub fn data(geo: Geometry, lens: &[usize], seed: u64) -> HashMap<String, Tensor> {
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
pub fn param_values(params: &[(String, Vec<usize>)], seed: u64) -> HashMap<String, Tensor> {
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
pub struct Objective {
    pub graph: Graph,
    pub out: NodeId,
    pub masks: Vec<NodeId>,
}

impl Objective {
    pub fn new(mut graph: Graph, target: &str) -> Objective {
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
    pub fn eval(&self, inputs: &HashMap<String, Tensor>) -> (f64, Vec<Tensor>) {
        let vals = run(&self.graph, inputs).unwrap();
        let v = vals[&self.out].f()[0] as f64;
        (v, self.masks.iter().map(|m| vals[m].clone()).collect())
    }
}

#[derive(Default, Debug)]
pub struct Report {
    pub checked: usize,
    pub skipped: usize,
    pub worst: f64,
}

/// Compares `grads[name]` with central differences of `obj` for every coordinate of every
/// tensor in `names`; `scale(name, i)` maps a finite difference to the expected gradient.
pub fn fd_check(
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
pub struct Case {
    pub spec: Spec,
    pub inputs: HashMap<String, Tensor>,
    pub params: Vec<(String, Vec<usize>)>,
    pub forward_graph: Graph,
    pub grads: HashMap<String, Tensor>,
    pub loss: f64,
}

pub fn case(dir: &Path, text: &str, geo: Geometry, lens: &[usize], seed: u64) -> Case {
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
    pub fn loss_objective(&self) -> Objective {
        let mut g = self.forward_graph.clone();
        add_loss(&mut g, &self.spec.train.as_ref().unwrap().task).unwrap();
        Objective::new(g, "loss")
    }

    pub fn names(&self, filter: impl Fn(&str) -> bool) -> Vec<String> {
        self.params
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| filter(n))
            .collect()
    }

    pub fn check_all(&self, what: &str) -> Report {
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

pub const QUERY: &str = "encoder.layer.0.attention.self.query";
pub const VALUE: &str = "encoder.layer.0.attention.self.value";

pub fn tiny_dir(tag: &str) -> PathBuf {
    let dir = temp_dir(&format!("grads-{tag}"));
    tiny_bert(&dir);
    dir
}

/// Router softmax probabilities `x Wgᵀ` per row, f64.
pub fn router_probs(x: &[Vec<f64>], wg: &Tensor) -> Vec<Vec<f64>> {
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
pub fn topk(p: &[f64], k: usize) -> (Vec<usize>, f64) {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap());
    let gap = if k < p.len() {
        (p[order[k - 1]] / p[order[k]]).ln()
    } else {
        f64::INFINITY
    };
    (order[..k].to_vec(), gap)
}
