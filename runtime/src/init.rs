//! Initial values of adapter tensors and the one-time rewrites of base weights (`init W0 -= …`),
//! run once before training or inference. Random initializers are seeded per tensor name, so a
//! tensor's initial value does not depend on declaration order.

use lorac_compiler::analysis::svd::{factors, segment, thin_svd, Svd};
use lorac_compiler::build::lower::Lowerer;
use lorac_compiler::check::attach::Attachment;
use lorac_compiler::check::Spec;
use lorac_compiler::ir::interp::run;
use lorac_compiler::ir::{Graph, Tensor};
use lorac_compiler::syntax::ast::{find_arg, Arg, Expr, ExprKind, Stmt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// FNV-1a, to derive a per-tensor seed from its name.
fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325 ^ seed;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// One draw from N(mean, std²) (Box–Muller).
fn gaussian(rng: &mut ChaCha8Rng, mean: f64, std: f64) -> f32 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Evaluates one expression of the adapter (scalars or tensors) through the IR interpreter.
struct Ctx<'a> {
    spec: &'a Spec,
    at: &'a Attachment,
    values: &'a mut HashMap<String, Tensor>,
    seed: u64,
}

impl Ctx<'_> {
    fn eval(&mut self, e: &Expr, expert: Option<(&str, usize)>) -> Result<Tensor, String> {
        let def = &self.spec.adapters[&self.at.adapter];
        let mut g = Graph::new();
        let w0_name = format!("{}.weight", self.at.module);
        let w0 = lorac_compiler::model::forward::frozen(
            &mut g,
            &self.spec.model.as_ref().ok_or("no model")?.tensors,
            &w0_name,
        )
        .map_err(|e| e.0)?;
        let mut lw = Lowerer::new(def, self.at);
        lw.bind(&mut g, w0).map_err(|e| e.0)?;
        if let Some((v, i)) = expert {
            lw.push_expert(v, i);
        }
        let out = lw.expr_node(&mut g, e).map_err(|e| e.0)?;
        g.set_output("v", out);
        lorac_compiler::passes::dce::run(&mut g).map_err(|e| e.0)?;
        let mut inputs = HashMap::new();
        for id in g.g.node_indices() {
            if let lorac_compiler::ir::Op::Input { name, shape, .. } = &g.node(id).op {
                let t = match self.values.get(name) {
                    Some(t) => t.clone(),
                    // A tensor not initialized yet reads as zeros (initializers run in order).
                    None => Tensor::f32(shape.clone(), vec![0.0; shape.iter().product()]),
                };
                inputs.insert(name.clone(), t);
            }
        }
        let vals = run(&g, &inputs)?;
        Ok(vals[&out].clone())
    }

    fn scalar(&mut self, e: &Expr, expert: Option<(&str, usize)>) -> Result<f64, String> {
        let t = self.eval(e, expert)?;
        t.f()
            .first()
            .map(|&v| v as f64)
            .ok_or_else(|| "expected a scalar".to_string())
    }

    fn string(&self, e: Option<&Expr>, default: &str) -> String {
        match e.map(|e| &e.kind) {
            Some(ExprKind::Str(s)) => s.clone(),
            Some(ExprKind::Name(n)) => self
                .at
                .instance
                .scalars
                .iter()
                .find_map(|(k, v)| match v {
                    lorac_compiler::check::value::Value::Str(s) if k == n => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| default.to_string()),
            _ => default.to_string(),
        }
    }

    fn sample(
        &mut self,
        name: &str,
        shape: &[usize],
        init: &Expr,
        expert: Option<(&str, usize)>,
    ) -> Result<Tensor, String> {
        let n: usize = shape.iter().product();
        let fan_in = *shape.last().unwrap_or(&1) as f64;
        let mut rng = ChaCha8Rng::seed_from_u64(name_seed(self.seed, name));
        let (f, args): (&str, &[Arg]) = match &init.kind {
            ExprKind::Name(f) => (f, &[]),
            ExprKind::Call { func, args } => (&func.name, args),
            _ => ("", &[]),
        };
        let arg = |c: &mut Self, pos: usize, key: &str, d: f64| -> Result<f64, String> {
            match find_arg(args, pos, key) {
                Some(e) => c.scalar(e, expert),
                None => Ok(d),
            }
        };
        let data: Vec<f32> = match f {
            "zeros" => vec![0.0; n],
            "ones" => vec![1.0; n],
            "constant" => vec![arg(self, 0, "value", 0.0)? as f32; n],
            "uniform" => {
                let (lo, hi) = (arg(self, 0, "lo", -0.1)?, arg(self, 1, "hi", 0.1)?);
                (0..n).map(|_| rng.random_range(lo..=hi) as f32).collect()
            }
            "normal" => {
                let (std, mean) = (arg(self, 0, "std", 0.02)?, arg(self, 1, "mean", 0.0)?);
                (0..n).map(|_| gaussian(&mut rng, mean, std)).collect()
            }
            "kaiming_uniform" => {
                // PyTorch: gain = √(2 / (1 + a²)), bound = gain · √(3 / fan_in).
                let a = arg(self, 0, "a", 5f64.sqrt())?;
                let bound = (2.0 / (1.0 + a * a)).sqrt() * (3.0 / fan_in).sqrt();
                (0..n)
                    .map(|_| rng.random_range(-bound..=bound) as f32)
                    .collect()
            }
            _ => {
                // Any tensor expression of the base weight with the declared shape.
                let t = self.eval(init, expert)?;
                if t.len() != n {
                    return Err(format!(
                        "initializer of `{name}` has {} values, the tensor {n}",
                        t.len()
                    ));
                }
                t.f().to_vec()
            }
        };
        Ok(Tensor::f32(shape.to_vec(), data))
    }
}

fn set_slice(full: &mut Tensor, e: usize, part: &Tensor) {
    let n = part.len();
    if let lorac_compiler::ir::Data::F32(v) = &mut full.data {
        v[e * n..(e + 1) * n].copy_from_slice(part.f());
    }
}

/// Computes the initial value of every adapter tensor, and rewrites base weights in `weights`
/// where an adapter says `init W0 -= …`. `param_shapes` maps graph input names to shapes.
pub fn initialize(
    spec: &Spec,
    param_shapes: &HashMap<String, Vec<usize>>,
    weights: &mut HashMap<String, Tensor>,
    seed: u64,
) -> Result<HashMap<String, Tensor>, String> {
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for at in &spec.attachments {
        let def = &spec.adapters[&at.adapter];
        let w0_name = format!("{}.weight", at.module);
        let mut values: HashMap<String, Tensor> = HashMap::new();
        values.insert(
            w0_name.clone(),
            weights
                .get(&w0_name)
                .cloned()
                .ok_or(format!("no weight `{w0_name}`"))?,
        );
        let mut svd_cache: HashMap<String, Svd> = HashMap::new();
        let mut stmts: Vec<(&Stmt, Option<(&str, usize)>)> = Vec::new();
        for s in &def.body {
            if let Stmt::Experts { var, body, .. } = s {
                // The count is the leading dimension of the block's tensors.
                let count = body.iter().find_map(|b| match b {
                    Stmt::Param { targets, .. } => param_shapes
                        .get(&format!("{}.{}", at.module, targets[0].name.name))
                        .map(|s| s[0]),
                    _ => None,
                });
                for b in body {
                    for e in 0..count.unwrap_or(0) {
                        stmts.push((b, Some((var.name.as_str(), e))));
                    }
                }
            } else {
                stmts.push((s, None));
            }
        }
        for (s, expert) in stmts {
            let mut cx = Ctx {
                spec,
                at,
                values: &mut values,
                seed,
            };
            match s {
                Stmt::Param {
                    targets,
                    init: Some(init),
                    ..
                } => {
                    let full = |t: &str| format!("{}.{t}", at.module);
                    let call = match &init.kind {
                        ExprKind::Call { func, args } if func.name.starts_with("svd_") => {
                            Some((func.name.as_str(), args))
                        }
                        _ => None,
                    };
                    if let Some((f, args)) = call {
                        let w_expr =
                            find_arg(args, 0, "w").ok_or("SVD initializer without a matrix")?;
                        let key = format!("{w_expr:?}");
                        if !svd_cache.contains_key(&key) {
                            let w = cx.eval(w_expr, expert)?;
                            svd_cache.insert(key.clone(), thin_svd(w.f(), at.m, at.n)?);
                        }
                        let svd = &svd_cache[&key];
                        let h = svd.h();
                        let (pos_rank, idx) = if f == "svd_segment" {
                            let rank = cx
                                .scalar(find_arg(args, 3, "rank").ok_or("no rank")?, expert)?
                                as usize;
                            let of = cx.scalar(find_arg(args, 2, "of").ok_or("no `of`")?, expert)?
                                as usize;
                            let shrink = find_arg(args, 4, "shrink")
                                .map(|e| cx.scalar(e, expert))
                                .transpose()?
                                .unwrap_or(1.0);
                            let select = cx.string(find_arg(args, 5, "select"), "segment_head");
                            let j = expert.map(|e| e.1).unwrap_or(0);
                            let mut rng = ChaCha8Rng::seed_from_u64(name_seed(
                                seed,
                                &format!("{}#{j}", full("segment")),
                            ));
                            let start = rng.random_range(0..=h.saturating_sub(rank));
                            (shrink, segment(&select, j, of, rank, h, start))
                        } else {
                            let rank = cx
                                .scalar(find_arg(args, 1, "rank").ok_or("no rank")?, expert)?
                                as usize;
                            let idx: Vec<usize> = if f == "svd_minor" {
                                (h - rank..h).collect()
                            } else {
                                (0..rank).collect()
                            };
                            (1.0, idx)
                        };
                        let (a, b) = factors(svd, &idx, pos_rank);
                        for (t, v) in targets.iter().zip([a, b]) {
                            let name = full(&t.name.name);
                            match expert {
                                Some((_, e)) => {
                                    let shape = param_shapes
                                        .get(&name)
                                        .ok_or(format!("unknown tensor `{name}`"))?;
                                    let entry =
                                        cx.values.entry(name.clone()).or_insert_with(|| {
                                            Tensor::f32(
                                                shape.clone(),
                                                vec![0.0; shape.iter().product()],
                                            )
                                        });
                                    set_slice(entry, e, &v);
                                }
                                None => {
                                    cx.values.insert(name, v);
                                }
                            }
                        }
                    } else {
                        for t in targets {
                            let name = full(&t.name.name);
                            let shape = param_shapes
                                .get(&name)
                                .ok_or(format!("unknown tensor `{name}`"))?
                                .clone();
                            match expert {
                                Some((_, e)) => {
                                    let part = cx.sample(
                                        &format!("{name}#{e}"),
                                        &shape[1..],
                                        init,
                                        expert,
                                    )?;
                                    let entry =
                                        cx.values.entry(name.clone()).or_insert_with(|| {
                                            Tensor::f32(
                                                shape.clone(),
                                                vec![0.0; shape.iter().product()],
                                            )
                                        });
                                    set_slice(entry, e, &part);
                                }
                                None => {
                                    let v = cx.sample(&name, &shape, init, None)?;
                                    cx.values.insert(name, v);
                                }
                            }
                        }
                    }
                }
                Stmt::Init { op, value, .. } => {
                    let delta = cx.eval(value, None)?;
                    let w = cx.values.get(&w0_name).ok_or("base weight missing")?;
                    let new: Vec<f32> = w
                        .f()
                        .iter()
                        .zip(delta.f())
                        .map(|(&a, &d)| match op {
                            lorac_compiler::syntax::ast::InitOp::Sub => a - d,
                            lorac_compiler::syntax::ast::InitOp::Add => a + d,
                            lorac_compiler::syntax::ast::InitOp::Set => d,
                        })
                        .collect();
                    let shape = w.shape.clone();
                    cx.values.insert(w0_name.clone(), Tensor::f32(shape, new));
                }
                _ => {}
            }
        }
        if let Some(w) = values.remove(&w0_name) {
            weights.insert(w0_name, w);
        }
        out.extend(values);
    }
    // The task head: normal(0, 0.02) weights and zero bias, as transformers' sequence heads.
    use lorac_compiler::build::head::{HEAD_BIAS, HEAD_WEIGHT};
    if let (Some(ws), Some(bs)) = (param_shapes.get(HEAD_WEIGHT), param_shapes.get(HEAD_BIAS)) {
        let mut rng = ChaCha8Rng::seed_from_u64(name_seed(seed, HEAD_WEIGHT));
        let n: usize = ws.iter().product();
        let w = (0..n).map(|_| gaussian(&mut rng, 0.0, 0.02)).collect();
        out.insert(HEAD_WEIGHT.into(), Tensor::f32(ws.clone(), w));
        out.insert(
            HEAD_BIAS.into(),
            Tensor::f32(bs.clone(), vec![0.0; bs.iter().product()]),
        );
    }
    Ok(out)
}
