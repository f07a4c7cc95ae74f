//! `loraC bench SPEC [--steps N] [--warmup W] [--batch B] [--seq L] [--backend B] [--format json]`.

use super::check::{checked_spec, show_error, use_color};
use super::{Color, Format};
use lorac_runtime::bench::{bench, BenchOptions};
use std::path::Path;

/// Runs the benchmark and prints its figures.
pub fn run(spec: &Path, o: BenchOptions, format: Format, color: Color) -> i32 {
    let color = use_color(color);
    let spec = match checked_spec(spec, color) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match bench(&spec, &o) {
        Ok(r) => {
            match format {
                Format::Json => super::out(&format!("{}\n", r.to_json(&o))),
                Format::Text => super::out(&format!(
                    "backend {}  batch {} × seq {}  {} timed steps\n\
                     median step      {:.4} s\n\
                     tokens/s         {:.0}\n\
                     achieved         {:.1} GFLOP/s ({:.1}% of this machine's measured GEMM peak, {:.1} GFLOP/s)\n\
                     peak RSS         {:.0} MiB\n\
                     compile          {:.3} s (spec → compiled programs)\n",
                    o.backend.name(),
                    o.batch,
                    o.seq,
                    o.steps,
                    r.median_step_s,
                    r.tokens_per_s,
                    r.gflops,
                    100.0 * r.gflops / r.gemm_peak_gflops.max(1e-9),
                    r.gemm_peak_gflops,
                    r.peak_rss_mb,
                    r.compile_s
                )),
            }
            0
        }
        Err(d) => show_error(&d, format, color),
    }
}
