//! `loraC compile SPEC --emit report [--format json]`: the cost report as an aligned table
//! with totals, or as JSON (`analysis::cost`).

use super::Format;
use lorac_compiler::analysis::cost::{cost, CostReport};
use lorac_compiler::build::Geometry;
use lorac_compiler::check::Spec;
use lorac_compiler::diag::render::{render, Style};
use lorac_compiler::diag::SourceMap;
use std::path::Path;

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// FLOPs with an SI prefix: `13.48 G`.
fn si(x: f64) -> String {
    const UNITS: [(f64, &str); 5] = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    match UNITS.iter().find(|(s, _)| x >= *s) {
        Some((s, u)) => format!("{:.2} {u}", x / s),
        None => format!("{x:.0} "),
    }
}

/// Bytes in binary units: `1.50 GiB`.
fn bytes(x: f64) -> String {
    const UNITS: [(f64, &str); 4] = [
        (1099511627776.0, "TiB"),
        (1073741824.0, "GiB"),
        (1048576.0, "MiB"),
        (1024.0, "KiB"),
    ];
    match UNITS.iter().find(|(s, _)| x >= *s) {
        Some((s, u)) => format!("{:.2} {u}", x / s),
        None => format!("{x:.0} B"),
    }
}

/// The report as text: one row per module, then the totals.
pub fn to_text(spec_path: &Path, r: &CostReport) -> String {
    let geo = r.geometry;
    let mut s = format!(
        "cost report: {} (batch {} × seq {} = {} tokens)\n\n",
        spec_path.display(),
        geo.batch,
        geo.seq,
        geo.batch * geo.seq
    );
    let head = [
        "module",
        "adapter",
        "layer",
        "experts",
        "top_k",
        "rank",
        "params",
        "fwd FLOP/tok",
        "step FLOP/tok",
    ];
    let rows: Vec<[String; 9]> = r
        .modules
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.adapter.clone(),
                m.layer.map_or("-".into(), |l| l.to_string()),
                m.experts.to_string(),
                m.top_k.to_string(),
                m.rank.to_string(),
                thousands(m.trainable_params),
                si(m.flops_per_token_forward),
                si(m.flops_per_token_step),
            ]
        })
        .collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (wi, cell) in w.iter_mut().zip(row) {
            *wi = (*wi).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut l = String::new();
        for (i, (c, wi)) in cells.iter().zip(&w).enumerate() {
            // Names left-aligned, numbers right-aligned.
            if i < 2 {
                l += &format!("{c:<wi$}  ");
            } else {
                l += &format!("{c:>wi$}  ");
            }
        }
        l.trim_end().to_string() + "\n"
    };
    s += &line(&head);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        s += &line(&cells);
    }
    if rows.is_empty() {
        s += "(no attached modules)\n";
    }
    let t = &r.total;
    let adapters_fwd: f64 = r.modules.iter().map(|m| m.flops_per_token_forward).sum();
    let opt = r.optimizers.join(", ");
    let opt_note = if r.optimizer_assumed {
        format!("{opt}, assumed: the spec has no train block")
    } else {
        opt
    };
    s += &format!(
        "\ntotal\n  \
         trainable parameters  {:>16}  (adapters {}, routers {}, head {})\n  \
         forward FLOP/token    {:>16}  (base model {}, adapters and routers {})\n  \
         step FLOP/token       {:>16}  (forward + backward)\n  \
         activation memory     {:>16}  (one batch of {} tokens)\n  \
         optimizer memory      {:>16}  ({opt_note})\n",
        thousands(t.trainable_params),
        thousands(t.adapter_params),
        thousands(t.router_params),
        thousands(t.head_params),
        si(t.flops_per_token_forward),
        si(t.base_flops_per_token_forward),
        si(adapters_fwd),
        si(t.flops_per_token_step),
        bytes(t.activation_bytes),
        geo.batch * geo.seq,
        bytes(t.optimizer_bytes as f64),
    );
    s
}

/// Prints (or writes to `out`) the cost report of a checked spec; returns the exit code.
pub fn run(spec: &Spec, geo: Geometry, format: Format, out: Option<&Path>, color: bool) -> i32 {
    let r = match cost(spec, geo) {
        Ok(r) => r,
        Err(d) => {
            eprint!(
                "{}",
                render(&SourceMap::new(), &d, Style { color, width: 100 })
            );
            return 1;
        }
    };
    let text = match format {
        Format::Json => {
            serde_json::to_string_pretty(&r.to_json()).unwrap_or_else(|_| "{}".into()) + "\n"
        }
        Format::Text => to_text(&spec.path, &r),
    };
    match out {
        Some(p) => match std::fs::write(p, text) {
            Ok(()) => {
                eprintln!("wrote {}", p.display());
                0
            }
            Err(e) => {
                eprintln!("error[E0801]: cannot write {}: {e}", p.display());
                2
            }
        },
        None => {
            super::out(&text);
            0
        }
    }
}
