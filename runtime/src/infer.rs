//! `loraC infer`: tokenize, build the forward graph, initialize or load the adapter, run it
//! on the reference interpreter, and return the requested tensor.

use crate::exec::{Backend, Program};
use crate::{init, tokenize, weights};
use lorac_compiler::build::{self, Geometry};
use lorac_compiler::check::Spec;
use lorac_compiler::diag::{codes, Diagnostic};
use lorac_compiler::ir::{InputKind, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Which tensor to return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// Last hidden state `[batch, seq, hidden]`.
    Hidden,
    /// Pooler output `[batch, hidden]` (BERT).
    Pooled,
    /// Task head (or LM head) output.
    Logits,
}

impl Emit {
    fn output(self) -> &'static str {
        match self {
            Emit::Hidden => "hidden",
            Emit::Pooled => "pooled",
            Emit::Logits => "logits",
        }
    }
}

fn fail(code: lorac_compiler::diag::Code, msg: impl Into<String>, help: &str) -> Box<Diagnostic> {
    Box::new(Diagnostic::error(code, msg).help(help))
}

/// Loads `DIR/adapter.safetensors` over the initial values (shapes must match).
fn load_adapter(dir: &Path, values: &mut HashMap<String, Tensor>) -> Result<(), Box<Diagnostic>> {
    let file = dir.join("adapter.safetensors");
    let help = "point --adapter at a directory written by a run of this spec";
    let loaded = weights::load(&file, None).map_err(|e| {
        fail(
            codes::BAD_ADAPTER_DIR,
            format!("cannot load the adapter: {e}"),
            help,
        )
    })?;
    for (name, t) in loaded {
        match values.get(&name) {
            Some(v) if v.shape == t.shape => {
                values.insert(name, t);
            }
            Some(v) => {
                return Err(fail(
                    codes::BAD_ADAPTER_DIR,
                    format!(
                        "adapter tensor `{name}` is {:?}, the spec's is {:?}",
                        t.shape, v.shape
                    ),
                    "train the adapter with this spec, or restore the spec it was trained with",
                ))
            }
            None => {
                return Err(fail(
                    codes::BAD_ADAPTER_DIR,
                    format!("adapter tensor `{name}` is not in this spec"),
                    help,
                ))
            }
        }
    }
    Ok(())
}

/// Runs the forward pass on `texts` (default backend) and returns the requested tensor.
pub fn infer(
    spec: &Spec,
    texts: &[String],
    emit: Emit,
    adapter: Option<&Path>,
) -> Result<Tensor, Box<Diagnostic>> {
    infer_on(spec, texts, emit, adapter, Backend::default())
}

/// [`infer`] on a chosen backend.
pub fn infer_on(
    spec: &Spec,
    texts: &[String],
    emit: Emit,
    adapter: Option<&Path>,
    backend: Backend,
) -> Result<Tensor, Box<Diagnostic>> {
    backend.available()?;
    let spec = &crate::alloc::resolved(spec)?;
    let model = spec.model.as_ref().ok_or_else(|| {
        fail(
            codes::NO_MODEL,
            "the spec declares no model",
            "add `model bert(\"dir\")`",
        )
    })?;
    if crate::data_numeric::Widths::of(model).is_some() {
        return Err(fail(
            codes::DATA_MODEL_MISMATCH,
            "`loraC infer` feeds text, but a `linear` model reads number lists",
            "measure a trained adapter on numeric data with `loraC eval SPEC --adapter DIR/adapter`",
        ));
    }
    let tok_path = model.tokenizer.as_ref().ok_or_else(|| {
        fail(
            codes::TOKENIZER,
            "the model directory has no tokenizer.json",
            "put the model's tokenizer.json next to its config.json",
        )
    })?;
    let max_len = spec
        .train
        .as_ref()
        .map(|t| t.max_len as usize)
        .unwrap_or(model.config.max_positions)
        .min(model.config.max_positions);
    let tok = tokenize::load(tok_path, max_len).map_err(|e| {
        fail(
            codes::TOKENIZER,
            e,
            "use the tokenizer.json saved with the model",
        )
    })?;
    let batch = tokenize::encode(&tok, texts)
        .map_err(|e| fail(codes::TOKENIZER, e, "check the input text"))?;
    let geo = Geometry {
        batch: batch.batch,
        seq: batch.seq,
    };
    let fwd = build::forward(spec, geo).map_err(|e| {
        fail(
            codes::BUILD_FAILED,
            e.0,
            "run `loraC check` on the spec; report the spec if it checks clean",
        )
    })?;
    let out = fwd.graph.output(emit.output()).ok_or_else(|| {
        fail(
            codes::NO_SUCH_OUTPUT,
            format!("this spec has no `{}` output", emit.output()),
            "`pooled` needs a BERT model; `logits` needs a task head (a train block with a task) or a Llama model",
        )
    })?;
    let wpath = model.weights.as_ref().ok_or_else(|| {
        fail(
            codes::WEIGHTS,
            "the model has no model.safetensors",
            "point `model` at a directory with the weights",
        )
    })?;
    let frozen: Vec<String> = fwd
        .graph
        .inputs_of_kind(InputKind::Frozen)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut inputs = weights::load(wpath, Some(&frozen))
        .map_err(|e| fail(codes::WEIGHTS, e, "re-download the weights"))?;
    let shapes: HashMap<String, Vec<usize>> = fwd
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let seed = spec.train.as_ref().map(|t| t.seed).unwrap_or(0);
    let mut values = init::initialize(spec, &shapes, &mut inputs, seed)
        .map_err(|e| fail(codes::BUILD_FAILED, e, "report the spec"))?;
    if let Some(dir) = adapter {
        load_adapter(dir, &mut values)?;
    }
    inputs.extend(values);
    let (b, l) = (batch.batch, batch.seq);
    inputs.insert("input_ids".into(), Tensor::i64(vec![b, l], batch.ids));
    inputs.insert(
        "token_type_ids".into(),
        Tensor::i64(vec![b, l], batch.types),
    );
    inputs.insert("attention_mask".into(), Tensor::f32(vec![b, l], batch.mask));
    let mut g = fwd.graph;
    g.outputs.retain(|(_, id)| *id == out);
    lorac_compiler::passes::optimize(&mut g, |_, _| {})
        .map_err(|e| fail(codes::BUILD_FAILED, e.0, "report the spec"))?;
    let name = g.outputs[0].0.clone();
    let mut vals = Program::new(&g, backend)
        .and_then(|p| p.run(&[&inputs]))
        .map_err(|e| {
            fail(
                codes::BUILD_FAILED,
                e,
                "retry with `--backend reference`; report the spec",
            )
        })?;
    vals.remove(&name).ok_or_else(|| {
        fail(
            codes::BUILD_FAILED,
            "the program lost its output",
            "report the spec",
        )
    })
}
