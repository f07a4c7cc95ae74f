//! The training session: the compiled gradient program (forward, loss, backward), the update
//! program (optimizers as IR) and the evaluation program, with the weights, trainable state and
//! tokenizer they run on. One optimizer step is `gradients` (per micro-batch) then `apply`.

use crate::data::{Example, Label};
use crate::exec::{Backend, Program};
use crate::{init, schedule, tokenize, weights};
use lorac_compiler::build::{self, optim, programs, Geometry};
use lorac_compiler::check::train::{Task, TrainConfig};
use lorac_compiler::check::Spec;
use lorac_compiler::diag::{codes, Code, Diagnostic};
use lorac_compiler::ir::{Graph, InputKind, Tensor};
use std::collections::HashMap;

pub(crate) type Res<T> = Result<T, Box<Diagnostic>>;

/// A tokenized example: ids, token types, label.
pub(crate) type Row = (Vec<i64>, Vec<i64>, Label);

pub(crate) fn fail(code: Code, msg: impl Into<String>, help: &str) -> Box<Diagnostic> {
    Box::new(Diagnostic::error(code, msg).help(help))
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
    /// `exp(loss)`, the loss being the mean over predicted tokens (causal LM).
    pub perplexity: Option<f64>,
    /// Tokens the loss averages over (causal LM).
    pub tokens: Option<usize>,
}

impl Metrics {
    /// One line: the loss, then accuracy and F1 or perplexity, whichever the task has.
    pub fn summary(&self) -> String {
        let mut s = format!("loss {:.4}", self.loss);
        for (name, v) in [
            ("accuracy", self.accuracy),
            ("f1", self.f1),
            ("perplexity", self.perplexity),
        ] {
            if let Some(v) = v {
                s += &format!(" {name} {v:.4}");
            }
        }
        s
    }
}

/// Everything a run needs, built once.
pub struct Session<'a> {
    pub(crate) cfg: &'a TrainConfig,
    pub(crate) geo: Geometry,
    grad: Program,
    eval: Program,
    update: Program,
    pub(crate) params: Vec<build::lower::ParamInfo>,
    /// Names of per-expert tensors (what `experts` selects).
    pub(crate) experts: Vec<String>,
    frozen: HashMap<String, Tensor>,
    /// Trainable tensors and optimizer state, by input name.
    pub state: HashMap<String, Tensor>,
    /// The tokenizer; `None` for a model that reads number lists.
    tok: Option<tokenizers::Tokenizer>,
    /// Input and output widths of a model that reads number lists (`data_numeric.rs`).
    numeric: Option<crate::data_numeric::Widths>,
    pad_id: i64,
    /// End-of-sequence id appended to causal-LM completions (config.json `eos_token_id`).
    eos_id: Option<i64>,
    /// Rows of the embedding table; token ids must stay below it.
    vocab: usize,
    /// Seconds spent building, optimising and compiling the three programs.
    pub compile_s: f64,
}

pub(crate) fn batch_inputs(s: &Session<'_>, rows: &[&Row]) -> HashMap<String, Tensor> {
    if let Some(w) = s.numeric {
        return crate::data_numeric::batch_inputs(rows, s.geo.batch, w);
    }
    let (b, l) = (s.geo.batch, s.geo.seq);
    let mut ids = vec![s.pad_id; b * l];
    let mut types = vec![0i64; b * l];
    let mut mask = vec![0f32; b * l];
    let mut labels = vec![-100i64; b];
    let mut values = vec![0f32; b];
    let ignore = match s.cfg.task {
        Task::CausalLm { ignore_index, .. } => ignore_index,
        _ => -100,
    };
    let mut tokens = vec![ignore; b * l];
    for (r, (i, t, lab)) in rows.iter().enumerate().take(b) {
        let n = i.len().min(l);
        ids[r * l..r * l + n].copy_from_slice(&i[..n]);
        types[r * l..r * l + n].copy_from_slice(&t[..n]);
        mask[r * l..r * l + n].iter_mut().for_each(|m| *m = 1.0);
        match lab {
            Label::Class(c) => labels[r] = *c as i64,
            Label::Value(v) => values[r] = *v,
            Label::Tokens(t) => tokens[r * l..r * l + n].copy_from_slice(&t[..n]),
            Label::Completion(_) | Label::Numeric { .. } => {}
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
        Task::Regression => {
            let real = (0..b).map(|r| f32::from(r < rows.len())).collect();
            m.insert("label_mask".into(), Tensor::f32(vec![b, 1], real));
            m.insert("labels".into(), Tensor::f32(vec![b, 1], values))
        }
        Task::CausalLm { .. } => m.insert("labels".into(), Tensor::i64(vec![b * l], tokens)),
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
        backend.available()?;
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
        let t_build = std::time::Instant::now();
        let programs::TrainGraphs {
            params,
            experts,
            owner,
            eval,
            grad,
            update,
        } = programs::train_graphs(spec, cfg, geo).map_err(bad)?;
        let build_s = t_build.elapsed().as_secs_f64();
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
        let numeric = crate::data_numeric::Widths::of(model);
        let tok = match numeric {
            Some(_) => None,
            None => {
                let tpath = model.tokenizer.as_ref().ok_or_else(|| {
                    fail(
                        codes::TOKENIZER,
                        "the model directory has no tokenizer.json",
                        "add the model's tokenizer.json",
                    )
                })?;
                Some(
                    tokenize::load(tpath, geo.seq)
                        .map_err(|e| fail(codes::TOKENIZER, e, "use the model's tokenizer.json"))?,
                )
            }
        };
        let pad_id = tok
            .as_ref()
            .and_then(|t| t.get_padding())
            .map(|p| p.pad_id as i64)
            .unwrap_or(0);
        let eos_id = match model.config.raw.get("eos_token_id") {
            Some(serde_json::Value::Array(v)) => v.first().and_then(|x| x.as_i64()),
            Some(v) => v.as_i64(),
            None => None,
        };
        let compile = |g: &Graph| {
            Program::new(g, backend).map_err(|e| {
                fail(
                    codes::BUILD_FAILED,
                    format!("{} backend: {e}", backend.name()),
                    "retry with `--backend reference`; report the spec",
                )
            })
        };
        let t_jit = std::time::Instant::now();
        let (mut grad, mut eval, update) = (compile(&grad)?, compile(&eval)?, compile(&update)?);
        // The frozen weights are final now (`init` rewrote them) and never change after.
        let mut shared = Default::default();
        grad.bind_frozen(&frozen, &mut shared);
        eval.bind_frozen(&frozen, &mut shared);
        let compile_s = build_s + t_jit.elapsed().as_secs_f64();
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
            numeric,
            pad_id,
            eos_id,
            vocab: model.config.vocab,
            compile_s,
        })
    }

    pub(crate) fn encode(&self, ex: &[Example]) -> Res<Vec<Row>> {
        if let Some(rows) = crate::data_numeric::rows(ex, self.numeric) {
            return rows;
        }
        let tok = self.tok.as_ref().ok_or_else(|| {
            fail(
                codes::TOKENIZER,
                "the model has no tokenizer",
                "add the model's tokenizer.json",
            )
        })?;
        let texts: Vec<String> = ex.iter().map(|e| e.text.clone()).collect();
        let enc = tokenize::encode_each(tok, &texts)
            .map_err(|e| fail(codes::TOKENIZER, e, "check the data"))?;
        self.check_vocab(enc.iter().flat_map(|(i, _)| i))?;
        if let Task::CausalLm {
            train_on_inputs,
            ignore_index,
            ..
        } = self.cfg.task
        {
            let completions: Vec<String> = ex
                .iter()
                .map(|e| match &e.label {
                    Label::Completion(c) => c.clone(),
                    _ => String::new(),
                })
                .collect();
            let comp = tokenize::encode_plain(tok, &completions)
                .map_err(|e| fail(codes::TOKENIZER, e, "check the data"))?;
            self.check_vocab(comp.iter().flatten().chain(&self.eos_id))?;
            return Ok(enc
                .into_iter()
                .zip(comp)
                .map(|((p, _), c)| {
                    let (ids, labels) = crate::lm::lm_row(
                        &p,
                        &c,
                        self.eos_id,
                        self.geo.seq,
                        train_on_inputs,
                        ignore_index,
                    );
                    let types = vec![0; ids.len()];
                    (ids, types, Label::Tokens(labels))
                })
                .collect());
        }
        Ok(enc
            .into_iter()
            .zip(ex)
            .map(|((i, t), e)| (i, t, e.label.clone()))
            .collect())
    }

    /// The embedding lookup has no row for an id past the vocabulary: a mismatched tokenizer.
    fn check_vocab<'i>(&self, mut ids: impl Iterator<Item = &'i i64>) -> Res<()> {
        match ids.find(|&&i| i < 0 || i as usize >= self.vocab) {
            Some(id) => Err(fail(
                codes::TOKENIZER,
                format!(
                    "the tokenizer produced token id {id}, but the model's vocabulary has {} tokens",
                    self.vocab
                ),
                "use the tokenizer.json that belongs to the model",
            )),
            None => Ok(()),
        }
    }

    /// Runs a program with the batch, the trainable state and the frozen weights as inputs.
    fn exec(&self, p: &Program, batch: &HashMap<String, Tensor>) -> Res<HashMap<String, Tensor>> {
        p.run(&[batch, &self.state, &self.frozen])
            .map_err(|e| fail(codes::BUILD_FAILED, e, "report the spec"))
    }

    /// Runs the gradient program on one micro-batch of inputs: the loss and the gradient of
    /// every parameter the program differentiates, by parameter index. A non-finite loss or
    /// gradient is an error naming `step` and the first offending tensor.
    pub fn gradients(
        &self,
        inputs: &HashMap<String, Tensor>,
        step: u64,
        micro: u64,
    ) -> Res<(f64, Vec<(usize, Tensor)>)> {
        // The dropout seed follows from (run seed, step, micro-batch) alone, so a resumed run
        // draws the masks the uninterrupted one drew.
        let seed =
            (self.cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (step << 20) ^ micro) as i64;
        let extra = HashMap::from([(
            build::lower::DROPOUT_SEED.to_string(),
            Tensor::i64(vec![1], vec![seed]),
        )]);
        let mut vals = self
            .grad
            .run(&[inputs, &extra, &self.state, &self.frozen])
            .map_err(|e| fail(codes::BUILD_FAILED, e, "report the spec"))?;
        let l = vals["loss"].f()[0] as f64;
        let help =
            "lower the learning rate, add `clip 1.0` or warmup; the last good checkpoint is kept";
        if !l.is_finite() {
            return Err(fail(
                codes::NON_FINITE,
                format!("step {}: the loss is {l}", step + 1),
                help,
            ));
        }
        let mut grads = vec![];
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = vals.remove(&format!("grad.{}", p.name)) else {
                continue;
            };
            if let Some(bad) = g.f().iter().find(|v| !v.is_finite()) {
                return Err(fail(
                    codes::NON_FINITE,
                    format!(
                        "step {}: the gradient of `{}` holds {bad}",
                        step + 1,
                        p.name
                    ),
                    help,
                ));
            }
            grads.push((i, g));
        }
        Ok((l, grads))
    }

    /// Inputs of a batch of tokenized rows.
    pub(crate) fn inputs(&self, rows: &[&Row]) -> HashMap<String, Tensor> {
        batch_inputs(self, rows)
    }

    /// Applies one optimizer step of `total` with summed gradients of `micro` micro-batches
    /// (averaged, clipped, then the update program); returns each optimizer's learning rate
    /// for this step, in the train block's order.
    pub fn apply(
        &mut self,
        grads: Vec<Option<Tensor>>,
        micro: u64,
        step: u64,
        total: u64,
    ) -> Res<Vec<f64>> {
        let cfg = self.cfg;
        let inv = 1.0 / micro as f32;
        let mut grads: Vec<Tensor> = grads
            .into_iter()
            .zip(&self.params)
            .map(|(g, p)| match g {
                Some(g) => Tensor::f32(g.shape.clone(), g.f().iter().map(|v| v * inv).collect()),
                None => Tensor::f32(p.shape.clone(), vec![0.0; p.shape.iter().product()]),
            })
            .collect();
        // Gradient-norm clipping on the selected tensors (global norm over the selection).
        for (max_norm, sel) in &cfg.clip {
            let pick: Vec<usize> = (0..self.params.len())
                .filter(|&i| selected(&self.params[i], sel, &self.experts))
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
        for (p, g) in self.params.iter().zip(grads) {
            up.insert(format!("grad.{}", p.name), g);
        }
        let mut lrs = vec![];
        for (i, o) in cfg.optimizers.iter().enumerate() {
            let sched = cfg
                .schedules
                .iter()
                .find(|sc| {
                    !sc.selectors.is_empty() && sc.selectors.iter().any(|x| o.selectors.contains(x))
                })
                .or_else(|| cfg.schedules.iter().find(|sc| sc.selectors.is_empty()));
            let lr = o.lr * schedule::factor(sched, step, total);
            lrs.push(lr);
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
        let out = self.exec(&self.update, &up)?;
        for (name, t) in out {
            if let Some(n) = name.strip_prefix("new.") {
                self.state.insert(n.to_string(), t);
            }
        }
        Ok(lrs)
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
        let lm = matches!(self.cfg.task, Task::CausalLm { .. });
        let (mut total, mut correct, mut weight) = (0.0, 0usize, 0usize);
        let mut conf = vec![vec![0usize; classes]; classes];
        for chunk in rows.chunks(b) {
            let refs: Vec<&Row> = chunk.iter().collect();
            let vals = self.exec(&self.eval, &batch_inputs(self, &refs))?;
            // The program's loss is a mean over the batch's examples, or over its predicted
            // tokens for causal LM; weight it back into a mean over the whole set.
            let w = if lm {
                chunk
                    .iter()
                    .map(|r| match &r.2 {
                        Label::Tokens(t) => t.iter().filter(|&&x| x >= 0).count(),
                        _ => 0,
                    })
                    .sum()
            } else {
                chunk.len()
            };
            total += vals["loss"].f()[0] as f64 * w as f64;
            weight += w;
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
        let loss = total / weight.max(1) as f64;
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
            loss,
            accuracy: classification.then(|| correct as f64 / n as f64),
            f1,
            examples: n,
            perplexity: lm.then(|| loss.exp()),
            tokens: lm.then_some(weight),
        })
    }
}

/// Clipping applies to every tensor (no selectors) or to the ones its selectors pick.
pub(crate) fn selected(
    p: &build::lower::ParamInfo,
    selectors: &[String],
    experts: &[String],
) -> bool {
    selectors.is_empty() || selectors.iter().any(|s| optim::selects(p, s, experts))
}
