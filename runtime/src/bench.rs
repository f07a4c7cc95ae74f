//! `loraC bench`: times whole training steps (gradients + optimizer update) of a spec on
//! full-length random sequences, and relates them to the cost report's FLOPs and to this
//! machine's measured GEMM peak.

use crate::data::Label;
use crate::exec::Backend;
use crate::session::{fail, Res, Row, Session};
use lorac_compiler::analysis::cost::flops_per_token;
use lorac_compiler::build::Geometry;
use lorac_compiler::check::train::Task;
use lorac_compiler::check::Spec;
use lorac_compiler::diag::codes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Backend.
    pub backend: Backend,
}

/// The measurements.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// Median seconds per training step.
    pub median_step_s: f64,
    /// Every timed step, in seconds.
    pub step_s: Vec<f64>,
    /// Tokens per second at the median.
    pub tokens_per_s: f64,
    /// Achieved GFLOP/s (the cost report's step FLOPs over the median step).
    pub gflops: f64,
    /// FLOPs of one step, from the cost report.
    pub flops_per_step: f64,
    /// This machine's single-precision GEMM rate measured by the bench (GFLOP/s).
    pub gemm_peak_gflops: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mb: f64,
    /// Seconds from the checked spec to compiled programs (graph build, passes, lowering, JIT).
    pub compile_s: f64,
}

impl BenchResult {
    /// JSON form (keys as documented in benches/README.md).
    pub fn to_json(&self, o: &BenchOptions) -> serde_json::Value {
        serde_json::json!({
            "backend": o.backend.name(),
            "batch": o.batch,
            "seq": o.seq,
            "steps": o.steps,
            "median_step_s": self.median_step_s,
            "step_s": self.step_s,
            "tokens_per_s": self.tokens_per_s,
            "gflops": self.gflops,
            "flops_per_step": self.flops_per_step,
            "gemm_peak_gflops": self.gemm_peak_gflops,
            "peak_fraction": self.gflops / self.gemm_peak_gflops.max(1e-9),
            "peak_rss_mb": self.peak_rss_mb,
            "compile_s": self.compile_s,
        })
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`; 0 where unavailable).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Best of twelve 1024³ single-precision products through `gemm` on every thread, in
/// GFLOP/s. A shared machine sometimes loses a core for a few milliseconds; with only three
/// tries the peak read as half the real one, and the fraction of it as nearly twice the
/// truth, so this takes the best of many (about 0.15 s in all).
pub fn gemm_peak_gflops() -> f64 {
    let n = 1024;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..12 {
        let t = Instant::now();
        lorac_compiler::ir::ops::linalg::gemm_rowmajor(n, n, n, &a, &b, &mut c);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Runs the benchmark.
pub fn bench(spec: &Spec, o: &BenchOptions) -> Res<BenchResult> {
    if o.steps == 0 || o.batch == 0 || o.seq == 0 {
        return Err(fail(
            codes::BAD_VALUE,
            "--steps, --batch and --seq must be at least 1",
            "e.g. `--steps 10 --batch 16 --seq 128`",
        ));
    }
    let spec = crate::alloc::resolved(spec)?;
    let mut spec = spec.clone();
    let train = spec.train.as_mut().ok_or_else(|| {
        fail(
            codes::MISSING_SETTING,
            "the spec has no train block to benchmark",
            "add `train { … }` with an optimizer and a task",
        )
    })?;
    train.batch = o.batch as u64;
    train.max_len = o.seq as u64;
    let geo = Geometry {
        batch: o.batch,
        seq: o.seq,
    };
    let (_, step_per_token) = flops_per_token(&spec, geo)?;
    let mut s = Session::with_backend(&spec, o.backend)?;
    let vocab = spec
        .model
        .as_ref()
        .map(|m| m.config.vocab)
        .unwrap_or(2)
        .max(2) as i64;
    // Skip the low ids (BERT's special and unused tokens) when the vocabulary is large.
    let first = if vocab > 2000 { 1000 } else { 0 };
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let rows: Vec<Row> = (0..o.batch)
        .map(|_| {
            let ids: Vec<i64> = (0..o.seq).map(|_| rng.random_range(first..vocab)).collect();
            let label = match s.cfg.task {
                Task::Classification { labels, .. } => {
                    Label::Class(rng.random_range(0..labels.max(1)))
                }
                // Every position predicts the next token; the last has none.
                Task::CausalLm { ignore_index, .. } => {
                    Label::Tokens(ids[1..].iter().copied().chain([ignore_index]).collect())
                }
                _ => Label::Value(rng.random_range(-1.0..1.0)),
            };
            (ids, vec![0; o.seq], label)
        })
        .collect();
    let refs: Vec<&Row> = rows.iter().collect();
    let inputs = s.inputs(&refs);
    // The peak is measured before and after the timed steps and the higher kept: a burst
    // of a few tenths of a second can land while the machine lends a core elsewhere.
    let peak_before = gemm_peak_gflops();
    let total = (o.warmup + o.steps) as u64;
    let mut times = vec![];
    for step in 0..total {
        let t = Instant::now();
        let (_, gs) = s.gradients(&inputs, step, 0)?;
        let mut grads = vec![None; s.params.len()];
        for (i, g) in gs {
            grads[i] = Some(g);
        }
        s.apply(grads, 1, step, total)?;
        if step as usize >= o.warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let med = median(&times);
    let flops = step_per_token * (o.batch * o.seq) as f64;
    Ok(BenchResult {
        median_step_s: med,
        tokens_per_s: (o.batch * o.seq) as f64 / med,
        gflops: flops / med / 1e9,
        flops_per_step: flops,
        step_s: times,
        gemm_peak_gflops: gemm_peak_gflops().max(peak_before),
        peak_rss_mb: peak_rss_mb(),
        compile_s: s.compile_s,
    })
}
