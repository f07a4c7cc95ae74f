//! `loraC train` / `loraC eval`: the training session on the reference interpreter. One
//! compiled gradient program (forward, loss, backward), one compiled update program
//! (optimizers as IR), an evaluation program, and the loop around them: data order, schedules,
//! clipping, accumulation, guards, metrics, checkpoints and the adapter.

use crate::data::{self, Example, Label};
use crate::exec::{Backend, Program};
use crate::{init, schedule, tokenize, weights};
use lorac_compiler::build::{self, loss, optim, Geometry};
use lorac_compiler::check::train::{Duration, Task, TrainConfig};
use lorac_compiler::check::Spec;
use lorac_compiler::diag::{codes, Code, Diagnostic};
use lorac_compiler::ir::{Graph, InputKind, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

type Res<T> = Result<T, Box<Diagnostic>>;

/// A tokenized example: ids, token types, label.
type Row = (Vec<i64>, Vec<i64>, Label);

fn fail(code: Code, msg: impl Into<String>, help: &str) -> Box<Diagnostic> {
    Box::new(Diagnostic::error(code, msg).help(help))
}

/// Options of a training run.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Override the spec's length of training.
    pub steps: Option<u64>,
    /// Checkpoint every N steps (and always at the end).
    pub checkpoint_every: Option<u64>,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Draw a progress bar.
    pub progress: bool,
    /// Stop after this step as if the process had been killed there (tests of resuming).
    pub stop_after: Option<u64>,
    /// Which backend runs the programs.
    pub backend: Backend,
}

/// Evaluation metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// Mean loss.
    pub loss: f64,
    /// Accuracy (classification).
    pub accuracy: Option<f64>,
    /// F1 of class 1 for two classes, macro F1 otherwise.
    pub f1: Option<f64>,
    /// Examples evaluated.
    pub examples: usize,
}

/// Everything a run needs, built once.
pub struct Session<'a> {
    cfg: &'a TrainConfig,
    geo: Geometry,
    grad: Program,
    eval: Program,
    update: Program,
    params: Vec<build::lower::ParamInfo>,
    /// Names of per-expert tensors (what `experts` selects).
    experts: Vec<String>,
    frozen: HashMap<String, Tensor>,
    /// Trainable tensors and optimizer state, by input name.
    pub state: HashMap<String, Tensor>,
    tok: tokenizers::Tokenizer,
    pad_id: i64,
}

fn batch_inputs(s: &Session<'_>, rows: &[&Row]) -> HashMap<String, Tensor> {
    let (b, l) = (s.geo.batch, s.geo.seq);
    let mut ids = vec![s.pad_id; b * l];
    let mut types = vec![0i64; b * l];
    let mut mask = vec![0f32; b * l];
    let mut labels = vec![-100i64; b];
    let mut values = vec![0f32; b];
    for (r, (i, t, lab)) in rows.iter().enumerate().take(b) {
        let n = i.len().min(l);
        ids[r * l..r * l + n].copy_from_slice(&i[..n]);
        types[r * l..r * l + n].copy_from_slice(&t[..n]);
        mask[r * l..r * l + n].iter_mut().for_each(|m| *m = 1.0);
        match lab {
            Label::Class(c) => labels[r] = *c as i64,
            Label::Value(v) => values[r] = *v,
            Label::Completion(_) => {}
        }
    }
    // Rows beyond the data (a short last batch) keep one real token so attention is defined;
    // their label is ignored.
    for r in rows.len()..b {
        mask[r * l] = 1.0;
    }
    let mut m = HashMap::new();
    m.insert("input_ids".into(), Tensor::i64(vec![b, l], ids));
    m.insert("token_type_ids".into(), Tensor::i64(vec![b, l], types));
    m.insert("attention_mask".into(), Tensor::f32(vec![b, l], mask));
    match s.cfg.task {
        Task::Regression => m.insert("labels".into(), Tensor::f32(vec![b, 1], values)),
        _ => m.insert("labels".into(), Tensor::i64(vec![b], labels)),
    };
    m
}

impl<'a> Session<'a> {
    /// Compiles the programs for the default backend and loads weights, tokenizer and
    /// initial values.
    pub fn new(spec: &'a Spec) -> Res<Session<'a>> {
        Session::with_backend(spec, Backend::default())
    }

    /// [`Session::new`] on a chosen backend.
    pub fn with_backend(spec: &'a Spec, backend: Backend) -> Res<Session<'a>> {
        let cfg = spec.train.as_ref().ok_or_else(|| {
            fail(
                codes::MISSING_SETTING,
                "the spec has no train block",
                "add `train { … }`",
            )
        })?;
        let model = spec.model.as_ref().ok_or_else(|| {
            fail(
                codes::NO_MODEL,
                "the spec declares no model",
                "add `model …`",
            )
        })?;
        if matches!(cfg.task, Task::CausalLm { .. }) {
            return Err(fail(
                codes::BUILD_FAILED,
                "causal-LM training is not built yet",
                "train a classification or regression task",
            ));
        }
        let geo = Geometry {
            batch: cfg.batch as usize,
            seq: (cfg.max_len as usize).min(model.config.max_positions),
        };
        let bad = |e: lorac_compiler::ir::IrError| {
            fail(
                codes::BUILD_FAILED,
                e.0,
                "run `loraC check`; report the spec if it checks clean",
            )
        };
        let mut fwd = build::forward(spec, geo).map_err(bad)?;
        let params = fwd.params.clone();
        let mut eval = fwd.graph.clone();
        eval.outputs.retain(|(n, _)| n == "logits");
        loss::add_loss(&mut eval, &cfg.task).map_err(bad)?;
        lorac_compiler::passes::run_pipeline(&mut eval, |_, _| {}).map_err(bad)?;
        loss::gradient_graph(&mut fwd, &cfg.task).map_err(bad)?;
        let mut grad = fwd.graph;
        grad.outputs
            .retain(|(n, _)| n == "loss" || n.starts_with("grad."));
        lorac_compiler::passes::run_pipeline(&mut grad, |_, _| {}).map_err(bad)?;
        let experts: Vec<String> = params
            .iter()
            .filter(|p| p.experts.is_some())
            .map(|p| p.local.clone())
            .collect();
        let owner = optim::assign(&params, cfg, &experts).map_err(bad)?;
        let update = optim::update_graph(&params, &owner, cfg).map_err(bad)?;
        let wpath = model.weights.as_ref().ok_or_else(|| {
            fail(
                codes::WEIGHTS,
                "the model has no model.safetensors",
                "point `model` at a directory with weights",
            )
        })?;
        let names: Vec<String> = grad
            .inputs_of_kind(InputKind::Frozen)
            .into_iter()
            .chain(eval.inputs_of_kind(InputKind::Frozen))
            .map(|(n, _)| n)
            .collect();
        let mut frozen = weights::load(wpath, Some(&names))
            .map_err(|e| fail(codes::WEIGHTS, e, "re-download the weights"))?;
        let shapes: HashMap<String, Vec<usize>> = params
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect();
        let mut state = init::initialize(spec, &shapes, &mut frozen, cfg.seed)
            .map_err(|e| fail(codes::BUILD_FAILED, e, "report the spec"))?;
        for (i, p) in params.iter().enumerate() {
            for s in optim::state_names(&cfg.optimizers[owner[i]].kind, &p.name) {
                state.insert(
                    s,
                    Tensor::f32(p.shape.clone(), vec![0.0; p.shape.iter().product()]),
                );
            }
        }
        let tpath = model.tokenizer.as_ref().ok_or_else(|| {
            fail(
                codes::TOKENIZER,
                "the model directory has no tokenizer.json",
                "add the model's tokenizer.json",
            )
        })?;
        let tok = tokenize::load(tpath, geo.seq)
            .map_err(|e| fail(codes::TOKENIZER, e, "use the model's tokenizer.json"))?;
        let pad_id = tok.get_padding().map(|p| p.pad_id as i64).unwrap_or(0);
        let compile = |g: &Graph| {
            Program::new(g, backend).map_err(|e| {
                fail(
                    codes::BUILD_FAILED,
                    format!("{} backend: {e}", backend.name()),
                    "retry with `--backend reference`; report the spec",
                )
            })
        };
        let (grad, eval, update) = (compile(&grad)?, compile(&eval)?, compile(&update)?);
        Ok(Session {
            cfg,
            geo,
            grad,
            eval,
            update,
            params,
            experts,
            frozen,
            state,
            tok,
            pad_id,
        })
    }

    fn encode(&self, ex: &[Example]) -> Res<Vec<Row>> {
        let texts: Vec<String> = ex.iter().map(|e| e.text.clone()).collect();
        let enc = tokenize::encode_each(&self.tok, &texts)
            .map_err(|e| fail(codes::TOKENIZER, e, "check the data"))?;
        Ok(enc
            .into_iter()
            .zip(ex)
            .map(|((i, t), e)| (i, t, e.label.clone()))
            .collect())
    }

    /// Runs a program with the batch, the trainable state and the frozen weights as inputs.
    fn exec(&self, p: &Program, batch: &HashMap<String, Tensor>) -> Res<HashMap<String, Tensor>> {
        p.run(&[batch, &self.state, &self.frozen])
            .map_err(|e| fail(codes::BUILD_FAILED, e, "report the spec"))
    }

    /// Evaluates on examples: mean loss, accuracy, F1.
    pub fn evaluate(&self, examples: &[Example]) -> Res<Metrics> {
        let rows = self.encode(examples)?;
        let (b, classes) = (
            self.geo.batch,
            match self.cfg.task {
                Task::Classification { labels, .. } => labels,
                _ => 1,
            },
        );
        let (mut total, mut correct) = (0.0, 0usize);
        let mut conf = vec![vec![0usize; classes]; classes];
        for chunk in rows.chunks(b) {
            let refs: Vec<&Row> = chunk.iter().collect();
            let vals = self.exec(&self.eval, &batch_inputs(self, &refs))?;
            total += vals["loss"].f()[0] as f64 * chunk.len() as f64;
            let lg = vals["logits"].f();
            for (r, row) in chunk.iter().enumerate() {
                if let Label::Class(c) = row.2 {
                    let p = &lg[r * classes..(r + 1) * classes];
                    let pred =
                        (0..classes).fold(0, |best, k| if p[k] > p[best] { k } else { best });
                    correct += usize::from(pred == c);
                    conf[c][pred] += 1;
                }
            }
        }
        let n = rows.len();
        let classification = matches!(self.cfg.task, Task::Classification { .. });
        let f1_of = |k: usize| {
            let tp = conf[k][k] as f64;
            let fp: f64 = (0..classes)
                .filter(|&j| j != k)
                .map(|j| conf[j][k] as f64)
                .sum();
            let fneg: f64 = (0..classes)
                .filter(|&j| j != k)
                .map(|j| conf[k][j] as f64)
                .sum();
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fneg)
            }
        };
        let f1 = classification.then(|| {
            if classes == 2 {
                f1_of(1)
            } else {
                (0..classes).map(f1_of).sum::<f64>() / classes as f64
            }
        });
        Ok(Metrics {
            loss: total / n as f64,
            accuracy: classification.then(|| correct as f64 / n as f64),
            f1,
            examples: n,
        })
    }
}

/// Total optimizer steps of a run.
fn total_steps(cfg: &TrainConfig, n: usize, over: Option<u64>) -> u64 {
    over.unwrap_or(match cfg.duration {
        Duration::Steps(s) => s,
        Duration::Epochs(e) => (n as u64 * e).div_ceil(cfg.batch * cfg.accumulate).max(1),
    })
}

/// Clipping applies to every tensor (no selectors) or to the ones its selectors pick.
fn selected(p: &build::lower::ParamInfo, selectors: &[String], experts: &[String]) -> bool {
    selectors.is_empty() || selectors.iter().any(|s| optim::selects(p, s, experts))
}

fn metrics_line(f: &mut std::fs::File, v: serde_json::Value) -> Res<()> {
    writeln!(f, "{v}").map_err(|e| {
        fail(
            codes::IO,
            format!("cannot write metrics: {e}"),
            "check the --out directory",
        )
    })
}

/// Trains the spec; returns the final dev metrics (if the spec has a dev set).
pub fn train(spec: &Spec, opt: &TrainOptions) -> Res<Option<Metrics>> {
    let spec = &crate::alloc::resolved(spec)?;
    let mut s = Session::with_backend(spec, opt.backend)?;
    let cfg = s.cfg;
    let train_ex = data::load(&cfg.data.train, &cfg.data.text, &cfg.data.label, &cfg.task)?;
    let dev_ex = match &cfg.data.dev {
        Some(p) => Some(data::load(p, &cfg.data.text, &cfg.data.label, &cfg.task)?),
        None => None,
    };
    let rows = s.encode(&train_ex)?;
    let mut total = total_steps(cfg, rows.len(), opt.steps);
    let io = |e: String| fail(codes::IO, e, "check the --out directory");
    std::fs::create_dir_all(&opt.out).map_err(|e| io(format!("{}: {e}", opt.out.display())))?;
    let ckpt_dir = opt.out.join("checkpoint");
    let mut start = 0u64;
    if opt.resume {
        let st = weights::load(&ckpt_dir.join("state.safetensors"), None).map_err(|e| {
            fail(
                codes::CHECKPOINT,
                format!("cannot resume: {e}"),
                "resume from the --out directory of a run of this spec",
            )
        })?;
        let meta: serde_json::Value = std::fs::read_to_string(ckpt_dir.join("state.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| {
                fail(
                    codes::CHECKPOINT,
                    "checkpoint/state.json is missing or corrupt",
                    "resume from a complete run directory",
                )
            })?;
        for (k, v) in st {
            match s.state.get(&k) {
                Some(old) if old.shape == v.shape => {
                    s.state.insert(k, v);
                }
                _ => {
                    return Err(fail(
                        codes::CHECKPOINT,
                        format!("checkpoint tensor `{k}` does not fit this spec"),
                        "resume with the spec the run was started with",
                    ))
                }
            }
        }
        start = meta["step"].as_u64().unwrap_or(0);
        // The resumed run ends where the interrupted one would have (same schedule horizon).
        if opt.steps.is_none() {
            total = meta["total"].as_u64().unwrap_or(total);
        }
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(opt.out.join("metrics.jsonl"))
        .map_err(|e| io(e.to_string()))?;
    if !opt.resume {
        metrics.set_len(0).map_err(|e| io(e.to_string()))?;
    }
    let bar = if opt.progress {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    let per_step = (cfg.batch * cfg.accumulate) as usize;
    let grad_names: Vec<(usize, String)> = s
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| (i, format!("grad.{}", p.name)))
        .filter(|(_, n)| s.grad.has_output(n))
        .collect();
    let mut order: Vec<usize> = Vec::new();
    let mut order_epoch = u64::MAX;
    let mut history: Vec<(u64, f64)> = Vec::new();
    let mut eval_hist: Vec<(u64, f64)> = Vec::new();
    let mut last_eval = None;
    let log_every = cfg.log_every.max(1);
    let last = opt.stop_after.unwrap_or(total).min(total);
    for step in start..last {
        let t0 = std::time::Instant::now();
        let mut grads: Vec<Option<Tensor>> = vec![None; s.params.len()];
        let mut loss_sum = 0.0;
        let mut tokens = 0usize;
        for micro in 0..cfg.accumulate as usize {
            // Example k of the run, in the order of its epoch (a seeded shuffle per epoch), so the
            // data position follows from the step alone and a resumed run sees the same batches.
            let mut batch = Vec::with_capacity(cfg.batch as usize);
            for j in 0..cfg.batch as usize {
                let k = step as usize * per_step + micro * cfg.batch as usize + j;
                let epoch = (k / rows.len()) as u64;
                if epoch != order_epoch {
                    order = (0..rows.len()).collect();
                    order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                        cfg.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ));
                    order_epoch = epoch;
                }
                batch.push(&rows[order[k % rows.len()]]);
            }
            tokens += batch
                .iter()
                .map(|r| r.0.len().min(s.geo.seq))
                .sum::<usize>();
            let vals = s.exec(&s.grad, &batch_inputs(&s, &batch))?;
            let l = vals["loss"].f()[0] as f64;
            if !l.is_finite() {
                return Err(fail(codes::NON_FINITE, format!("step {}: the loss is {l}", step + 1), "lower the learning rate, add `clip 1.0` or warmup; the last good checkpoint is kept"));
            }
            loss_sum += l;
            for (i, gname) in &grad_names {
                let i = *i;
                let g = &vals[gname];
                if let Some(bad) = g.f().iter().find(|v| !v.is_finite()) {
                    return Err(fail(
                        codes::NON_FINITE,
                        format!("step {}: the gradient of `{}` holds {bad}", step + 1, s.params[i].name),
                        "lower the learning rate, add `clip 1.0` or warmup; the last good checkpoint is kept",
                    ));
                }
                grads[i] = Some(match grads[i].take() {
                    None => g.clone(),
                    Some(acc) => Tensor::f32(
                        acc.shape.clone(),
                        acc.f().iter().zip(g.f()).map(|(a, b)| a + b).collect(),
                    ),
                });
            }
        }
        let inv = 1.0 / cfg.accumulate as f32;
        let mut grads: Vec<Tensor> = grads
            .into_iter()
            .zip(&s.params)
            .map(|(g, p)| match g {
                Some(g) => Tensor::f32(g.shape.clone(), g.f().iter().map(|v| v * inv).collect()),
                None => Tensor::f32(p.shape.clone(), vec![0.0; p.shape.iter().product()]),
            })
            .collect();
        // Gradient-norm clipping on the selected tensors (global norm over the selection).
        for (max_norm, sel) in &cfg.clip {
            let pick: Vec<usize> = (0..s.params.len())
                .filter(|&i| selected(&s.params[i], sel, &s.experts))
                .collect();
            let norm = pick
                .iter()
                .map(|&i| {
                    grads[i]
                        .f()
                        .iter()
                        .map(|&v| (v as f64) * (v as f64))
                        .sum::<f64>()
                })
                .sum::<f64>()
                .sqrt();
            if norm > *max_norm {
                let c = (*max_norm / (norm + 1e-6)) as f32;
                for &i in &pick {
                    grads[i] = Tensor::f32(
                        grads[i].shape.clone(),
                        grads[i].f().iter().map(|v| v * c).collect(),
                    );
                }
            }
        }
        let mut up = HashMap::new();
        for (p, g) in s.params.iter().zip(grads) {
            up.insert(format!("grad.{}", p.name), g);
        }
        let mut lr0 = 0.0;
        for (i, o) in cfg.optimizers.iter().enumerate() {
            let sched = cfg
                .schedules
                .iter()
                .find(|sc| {
                    !sc.selectors.is_empty() && sc.selectors.iter().any(|x| o.selectors.contains(x))
                })
                .or_else(|| cfg.schedules.iter().find(|sc| sc.selectors.is_empty()));
            let lr = o.lr * schedule::factor(sched, step, total);
            if i == 0 {
                lr0 = lr;
            }
            let t = (step + 1) as i32;
            let (bc1, bc2) = match o.kind {
                lorac_compiler::check::train::OptimizerKind::AdamW {
                    betas,
                    bias_correction: true,
                    ..
                } => (1.0 / (1.0 - betas.0.powi(t)), 1.0 / (1.0 - betas.1.powi(t))),
                _ => (1.0, 1.0),
            };
            let [a, b, c] = optim::scalar_inputs(i);
            up.insert(a, Tensor::scalar(lr as f32));
            up.insert(b, Tensor::scalar(bc1 as f32));
            up.insert(c, Tensor::scalar(bc2 as f32));
        }
        let out = s.exec(&s.update, &up)?;
        for (name, t) in out {
            if let Some(n) = name.strip_prefix("new.") {
                s.state.insert(n.to_string(), t);
            }
        }
        let loss = loss_sum / cfg.accumulate as f64;
        history.push((step + 1, loss));
        let done = step + 1;
        let tps = tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {loss:.4} lr {lr0:.2e} {tps:.0} tok/s"));
        bar.inc(1);
        if done % log_every == 0 || done == total {
            metrics_line(
                &mut metrics,
                serde_json::json!({"step": done, "loss": loss, "lr": lr0, "tokens_per_s": tps}),
            )?;
            if !opt.progress {
                eprintln!("step {done}/{total} loss {loss:.4} lr {lr0:.2e} {tps:.0} tok/s");
            }
        }
        let eval_now = cfg.eval.as_ref().is_some_and(|e| done % e.every == 0) || done == total;
        if let (true, Some(dev)) = (eval_now, &dev_ex) {
            let m = s.evaluate(dev)?;
            eval_hist.push((done, m.loss));
            metrics_line(
                &mut metrics,
                serde_json::json!({"step": done, "eval_loss": m.loss, "accuracy": m.accuracy, "f1": m.f1}),
            )?;
            bar.println(format!(
                "eval @ {done}: loss {:.4} accuracy {:.4} f1 {:.4}",
                m.loss,
                m.accuracy.unwrap_or(f64::NAN),
                m.f1.unwrap_or(f64::NAN)
            ));
            if !opt.progress {
                eprintln!(
                    "eval @ {done}: loss {:.4} accuracy {:.4} f1 {:.4}",
                    m.loss,
                    m.accuracy.unwrap_or(f64::NAN),
                    m.f1.unwrap_or(f64::NAN)
                );
            }
            last_eval = Some(m);
        }
        if opt.checkpoint_every.is_some_and(|c| done % c.max(1) == 0) || done == total {
            weights::save_atomic(&ckpt_dir.join("state.safetensors"), &s.state).map_err(io)?;
            let meta = serde_json::json!({"step": done, "total": total, "seed": cfg.seed, "spec": spec.path.display().to_string()});
            weights::write_atomic(&ckpt_dir.join("state.json"), meta.to_string().as_bytes())
                .map_err(io)?;
        }
    }
    bar.finish_and_clear();
    let adapter: HashMap<String, Tensor> = s
        .params
        .iter()
        .filter_map(|p| s.state.get(&p.name).map(|t| (p.name.clone(), t.clone())))
        .collect();
    weights::save_atomic(
        &opt.out.join("adapter").join("adapter.safetensors"),
        &adapter,
    )
    .map_err(io)?;
    let manifest = adapter_manifest(spec, &s.params);
    weights::write_atomic(
        &opt.out.join("adapter").join("adapter.json"),
        manifest.to_string().as_bytes(),
    )
    .map_err(io)?;
    let _ = crate::plot::loss_svg(
        &opt.out.join("loss.svg"),
        &history,
        &eval_hist,
        &format!("{}", spec.path.display()),
    );
    Ok(last_eval)
}

/// The adapter's manifest (docs/adapter-format.md, version 1): what each tensor in
/// adapter.safetensors is and which module it adapts with which arguments.
pub fn adapter_manifest(spec: &Spec, params: &[build::lower::ParamInfo]) -> serde_json::Value {
    let show = |v: &lorac_compiler::check::value::Value| match v {
        lorac_compiler::check::value::Value::Int(i) => serde_json::json!(i),
        lorac_compiler::check::value::Value::Float(f) => serde_json::json!(f),
        lorac_compiler::check::value::Value::Str(s) => serde_json::json!(s),
        lorac_compiler::check::value::Value::Bool(b) => serde_json::json!(b),
        other => serde_json::json!(other.describe()),
    };
    let attachments: Vec<serde_json::Value> = spec
        .attachments
        .iter()
        .map(|a| {
            let args: serde_json::Map<String, serde_json::Value> = a.args.iter().map(|(k, v)| (k.clone(), show(v))).collect();
            serde_json::json!({"module": a.module, "layer": a.layer, "adapter": a.adapter, "args": args, "in_features": a.n, "out_features": a.m})
        })
        .collect();
    let tensors: Vec<serde_json::Value> = params
        .iter()
        .map(|p| serde_json::json!({"name": p.name, "module": p.module, "tensor": p.local, "shape": p.shape, "experts": p.experts}))
        .collect();
    let model = spec.model.as_ref().map(|m| {
        serde_json::json!({"family": format!("{:?}", m.family).to_lowercase(), "config": m.config_path.display().to_string()})
    });
    serde_json::json!({
        "format": "lorac-adapter",
        "version": 1,
        "spec": spec.path.display().to_string(),
        "model": model,
        "attachments": attachments,
        "tensors": tensors,
    })
}

/// Evaluates a trained adapter on the spec's dev set (or `data`).
pub fn eval(
    spec: &Spec,
    adapter: &Path,
    data_file: Option<&Path>,
    backend: Backend,
) -> Res<Metrics> {
    let spec = &crate::alloc::resolved(spec)?;
    let mut s = Session::with_backend(spec, backend)?;
    let loaded = weights::load(&adapter.join("adapter.safetensors"), None).map_err(|e| {
        fail(
            codes::BAD_ADAPTER_DIR,
            format!("cannot load the adapter: {e}"),
            "point --adapter at DIR/adapter of a run",
        )
    })?;
    for (k, v) in loaded {
        match s.state.get(&k) {
            Some(old) if old.shape == v.shape => {
                s.state.insert(k, v);
            }
            _ => {
                return Err(fail(
                    codes::BAD_ADAPTER_DIR,
                    format!("adapter tensor `{k}` does not fit this spec"),
                    "evaluate with the spec the adapter was trained with",
                ))
            }
        }
    }
    let cfg = s.cfg;
    let path = match data_file {
        Some(p) => p.to_path_buf(),
        None => cfg
            .data
            .dev
            .clone()
            .or(cfg.data.test.clone())
            .ok_or_else(|| {
                fail(
                    codes::MISSING_SETTING,
                    "no dev or test data",
                    "pass --data FILE",
                )
            })?,
    };
    let ex = data::load(&path, &cfg.data.text, &cfg.data.label, &cfg.task)?;
    s.evaluate(&ex)
}
