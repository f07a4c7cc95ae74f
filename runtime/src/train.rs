//! `loraC train` / `loraC eval`: the loop around a [`Session`]: data order, accumulation,
//! metrics, evaluation, checkpoints and the adapter.

use crate::exec::Backend;
use crate::session::{fail, Res};
pub use crate::session::{Metrics, Session};
use crate::{checkpoint, data, weights};
use lorac_compiler::build;
use lorac_compiler::check::train::{Duration, TrainConfig};
use lorac_compiler::check::Spec;
use lorac_compiler::diag::codes;
use lorac_compiler::ir::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// Each optimizer's rate under the name of what it selects (`default` for the one without
/// `for`), so a run with parameter groups logs every group's schedule.
fn group_rates(cfg: &TrainConfig, lrs: &[f64]) -> serde_json::Value {
    let m: serde_json::Map<String, serde_json::Value> = cfg
        .optimizers
        .iter()
        .zip(lrs)
        .map(|(o, lr)| {
            let name = if o.selectors.is_empty() {
                "default".to_string()
            } else {
                o.selectors.join(",")
            };
            (name, serde_json::json!(lr))
        })
        .collect();
    serde_json::Value::Object(m)
}

/// Total optimizer steps of a run.
fn total_steps(cfg: &TrainConfig, n: usize, over: Option<u64>) -> u64 {
    over.unwrap_or(match cfg.duration {
        Duration::Steps(s) => s,
        Duration::Epochs(e) => (n as u64 * e).div_ceil(cfg.batch * cfg.accumulate).max(1),
    })
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
    let mut history: Vec<(u64, f64)> = Vec::new();
    let mut eval_hist: Vec<(u64, f64)> = Vec::new();
    let ckpt = if opt.resume {
        checkpoint::load(&ckpt_dir).map_err(|e| {
            fail(
                codes::CHECKPOINT,
                format!("cannot resume: {e}"),
                "resume from the --out directory of a run of this spec, or start it again without --resume",
            )
        })?
    } else {
        None
    };
    if opt.resume && ckpt.is_none() {
        eprintln!(
            "note: {} holds no checkpoint yet; starting from step 0",
            opt.out.display()
        );
    }
    if let Some((st, meta)) = ckpt {
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
        start = meta.step;
        history = meta.history;
        eval_hist = meta.eval_history;
        // The resumed run ends where the interrupted one would have (same schedule horizon).
        if opt.steps.is_none() {
            total = meta.total;
        }
    }
    // Lines logged after the checkpoint (or half-written when the process died) are dropped;
    // the resumed run writes them again, identically.
    let metrics_path = opt.out.join("metrics.jsonl");
    checkpoint::trim_metrics(&metrics_path, start).map_err(io)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| io(e.to_string()))?;
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
    let mut order: Vec<usize> = Vec::new();
    let mut order_epoch = u64::MAX;
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
            let (l, gs) = s.gradients(&s.inputs(&batch), step, micro as u64)?;
            loss_sum += l;
            for (i, g) in gs {
                grads[i] = Some(match grads[i].take() {
                    None => g,
                    Some(acc) => Tensor::f32(
                        acc.shape.clone(),
                        acc.f().iter().zip(g.f()).map(|(a, b)| a + b).collect(),
                    ),
                });
            }
        }
        let lrs = s.apply(grads, cfg.accumulate, step, total)?;
        let lr0 = lrs.first().copied().unwrap_or(0.0);
        let loss = loss_sum / cfg.accumulate as f64;
        history.push((step + 1, loss));
        let done = step + 1;
        let tps = tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {loss:.4} lr {lr0:.2e} {tps:.0} tok/s"));
        bar.inc(1);
        if done % log_every == 0 || done == total {
            metrics_line(
                &mut metrics,
                serde_json::json!({"step": done, "loss": loss, "lr": lr0, "lr_groups": group_rates(cfg, &lrs), "tokens_per_s": tps}),
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
                serde_json::json!({"step": done, "eval_loss": m.loss, "accuracy": m.accuracy, "f1": m.f1, "perplexity": m.perplexity}),
            )?;
            let line = format!("eval @ {done}: {}", m.summary());
            bar.println(&line);
            if !opt.progress {
                eprintln!("{line}");
            }
            last_eval = Some(m);
        }
        if opt.checkpoint_every.is_some_and(|c| done % c.max(1) == 0) || done == total {
            let meta = checkpoint::Meta {
                step: done,
                total,
                seed: cfg.seed,
                spec: spec.path.display().to_string(),
                history: history.clone(),
                eval_history: eval_hist.clone(),
            };
            checkpoint::save(&ckpt_dir, &s.state, &meta).map_err(io)?;
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
