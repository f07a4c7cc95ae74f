//! The `model` item: find config.json and the weights' header, cross-check them.

use crate::diag::{codes, suggest, Diagnostic, Diagnostics};
use crate::model::{
    expected_tensors, is_linear, parse_config, read_header, Family, ModelInfo, FAMILIES,
};
use crate::syntax::ast::{ExprKind, ModelDecl};
use std::path::Path;

fn fetch_help(p: &str) -> String {
    if p.contains("assets") {
        "run `scripts/fetch-assets` to download MiniLM into assets/minilm, or fix the path".into()
    } else {
        "fix the path; it is relative to the spec file".into()
    }
}

/// Loads what checking needs about the model; `base` is the spec file's directory.
pub fn load(decl: &ModelDecl, base: &Path, diags: &mut Diagnostics) -> Option<ModelInfo> {
    let Some(family) = Family::from_name(&decl.family.name) else {
        let help = suggest(
            &decl.family.name,
            FAMILIES.iter().copied(),
            "supported families: bert, llama, linear",
        );
        diags.push(
            Diagnostic::error(
                codes::UNKNOWN_FAMILY,
                format!("unknown model family `{}`", decl.family.name),
            )
            .at(decl.family.span, "not a supported family")
            .help(help),
        );
        return None;
    };
    let mut dir = None;
    let mut config = None;
    for (i, a) in decl.args.iter().enumerate() {
        let key = match &a.name {
            Some(n) if n.name == "config" || n.name == "dir" => n.name.as_str(),
            Some(n) => {
                let help = suggest(
                    &n.name,
                    ["dir", "config"],
                    "`model` takes a directory and optionally `config = \"file.json\"`",
                );
                diags.push(
                    Diagnostic::error(
                        codes::UNKNOWN_ARGUMENT,
                        format!("`model` has no argument `{}`", n.name),
                    )
                    .at(n.span, "unknown argument")
                    .help(help),
                );
                continue;
            }
            None if i == 0 => "dir",
            None => {
                diags.push(Diagnostic::error(codes::ARITY, "`model` takes one positional argument").at(a.span, "extra argument").help("write `model bert(\"dir\")` or `model llama(config = \"config.json\")`"));
                continue;
            }
        };
        let ExprKind::Str(s) = &a.value.kind else {
            diags.push(
                Diagnostic::error(
                    codes::TYPE_MISMATCH,
                    format!("`{key}` must be a string path"),
                )
                .at(a.value.span, "not a string")
                .help("quote the path: `\"../assets/minilm\"`"),
            );
            continue;
        };
        if key == "dir" {
            dir = Some((base.join(s), s.clone(), a.value.span));
        } else {
            config = Some((base.join(s), s.clone(), a.value.span));
        }
    }
    let (config_path, cfg_span, cfg_text) = match (&dir, &config) {
        (_, Some((p, s, span))) => (p.clone(), *span, s.clone()),
        (Some((d, s, span)), None) => {
            if !d.is_dir() {
                diags.push(
                    Diagnostic::error(
                        codes::MODEL_NOT_FOUND,
                        format!("model directory `{s}` not found"),
                    )
                    .at(
                        *span,
                        format!("resolved to {}", crate::diag::source::shown(d)),
                    )
                    .help(fetch_help(s)),
                );
                return None;
            }
            (d.join("config.json"), *span, format!("{s}/config.json"))
        }
        (None, None) => {
            diags.push(
                Diagnostic::error(
                    codes::MISSING_ARGUMENT,
                    "`model` needs a directory or a config file",
                )
                .at(decl.family.span, "no model files named")
                .help(format!(
                    "write `model {}(\"path/to/model\")` or `model {}(config = \"config.json\")`",
                    decl.family.name, decl.family.name
                )),
            );
            return None;
        }
    };
    let text = match std::fs::read_to_string(&config_path) {
        Ok(t) => t,
        Err(e) => {
            diags.push(
                Diagnostic::error(
                    codes::MODEL_NOT_FOUND,
                    format!("cannot read `{cfg_text}`: {e}"),
                )
                .at(
                    cfg_span,
                    format!("resolved to {}", crate::diag::source::shown(&config_path)),
                )
                .help(fetch_help(&cfg_text)),
            );
            return None;
        }
    };
    let cfg = match parse_config(family, &text) {
        Ok(c) => c,
        Err(e) => {
            diags.push(
                Diagnostic::error(codes::BAD_CONFIG, format!("`{cfg_text}` is invalid: {e}"))
                    .at(cfg_span, "this model's config.json")
                    .help(match family {
                        Family::Linear => format!(
                            "fix {} (`{{\"in_features\": N, \"out_features\": M}}`)",
                            crate::diag::source::shown(&config_path)
                        ),
                        _ => format!(
                            "fix {} (a Hugging Face {} config)",
                            crate::diag::source::shown(&config_path),
                            decl.family.name
                        ),
                    }),
            );
            return None;
        }
    };
    let dir_path = dir.as_ref().map(|d| d.0.clone());
    let weights = dir_path
        .as_ref()
        .map(|d| d.join("model.safetensors"))
        .filter(|p| p.is_file());
    let tokenizer = dir_path
        .as_ref()
        .map(|d| d.join("tokenizer.json"))
        .filter(|p| p.is_file());
    let expected = expected_tensors(&cfg);
    let tensors = match &weights {
        None => expected,
        Some(w) => {
            let header = match read_header(w) {
                Ok(h) => h,
                Err(e) => {
                    diags.push(
                        Diagnostic::error(codes::BAD_SAFETENSORS, format!("model.safetensors is corrupt: {e}"))
                            .at(cfg_span, format!("weights read from {}", crate::diag::source::shown(w)))
                            .help("re-download the model (delete it and run `scripts/fetch-assets`), or remove the file to check against config.json alone"),
                    );
                    return None;
                }
            };
            cross_check(&expected, &header, cfg_span, &decl.family.name, diags);
            header
        }
    };
    Some(ModelInfo {
        family,
        dir: dir_path,
        config_path,
        weights,
        tokenizer,
        config: cfg,
        tensors,
        layer_alpha: None,
    })
}

fn cross_check(
    expected: &[crate::model::TensorInfo],
    header: &[crate::model::TensorInfo],
    span: crate::diag::Span,
    family: &str,
    diags: &mut Diagnostics,
) {
    let mut found = 0;
    let mut reported = 0;
    let linears: Vec<_> = expected.iter().filter(|t| is_linear(t)).collect();
    for e in &linears {
        let h = header
            .iter()
            .find(|h| h.name == e.name || h.name.ends_with(&format!(".{}", e.name)));
        if let Some(h) = h {
            found += 1;
            if h.shape != e.shape && reported < 3 {
                reported += 1;
                diags.push(
                    Diagnostic::error(
                        codes::CONFIG_MISMATCH,
                        format!(
                            "config.json implies `{}` is {:?} but the weights hold {:?}",
                            e.name, e.shape, h.shape
                        ),
                    )
                    .at(span, "config and weights disagree")
                    .help("use the config.json that was saved with these weights"),
                );
            }
        }
    }
    if found == 0 && !linears.is_empty() {
        diags.push(
            Diagnostic::error(
                codes::CONFIG_MISMATCH,
                format!(
                    "the weights hold none of the tensors a `{family}` config implies (e.g. `{}`)",
                    linears[0].name
                ),
            )
            .at(span, "config and weights disagree")
            .help("check the model family, or that the directory holds this model's weights"),
        );
    }
}
