//! AlphaLoRA (methods.md §3): the PL_Alpha_Hill heavy-tail metric of pretrained weights
//! (Hill estimator with a Fix-finger `x_min`, §3.1) and the expert allocation rule (§3.2).
//!
//! Degenerate inputs never panic:
//!
//! * [`fix_finger`] returns `NaN` when the metric is undefined: fewer than 2 eigenvalues, an
//!   eigenvalue that is not finite or not positive (its log is undefined; the reference code
//!   does not filter zeros), all eigenvalues equal (the histogram has zero width and every
//!   Hill denominator is 0), or a selected estimate that is not finite. [`matrix_alpha`] and
//!   [`layer_alphas`] turn `NaN` into an `Err` naming the matrix.
//! * When no candidate gets a KS distance (possible only in the corrected mode, when no
//!   eigenvalue lies in `[lo, hi]`), the reference code returns `alphas[argmin D] = alphas[0]`,
//!   which is `0.0` if `i = 0` was never visited. That is reproduced, not treated as an error.
//! * [`allocate`] returns an empty vector for no layers. Alphas that are not finite or are
//!   negative weigh 0; if every weight is 0 the budget is split as if all alphas were equal.
//!   Counts are never negative (a guard the released code lacks; its repair loop can in
//!   principle decrement a 0).

use crate::model::layer_of;

/// Number of histogram bins in the Fix-finger peak search.
const BINS: usize = 100;

/// `torch.linspace(start, end, steps)[idx]` as computed by PyTorch's CPU kernel (the first
/// half counts up from `start`, the second half down from `end`).
fn torch_linspace(start: f64, end: f64, steps: usize, idx: usize) -> f64 {
    if steps == 1 {
        return start;
    }
    let step = (end - start) / (steps - 1) as f64;
    if idx < steps / 2 {
        start + step * idx as f64
    } else {
        end - step * (steps - idx - 1) as f64
    }
}

/// Index of the most populated bin of `torch.histc(h, BINS, min, max)` (first index on ties).
fn histc_argmax(h: &[f64], min: f64, max: f64) -> usize {
    let mut counts = [0usize; BINS];
    for &x in h {
        if !(x >= min && x <= max) {
            continue;
        }
        // ATen's linear-interpolation bin selection (no local search for histc).
        let mut pos = ((x - min) * BINS as f64 / (max - min)) as usize;
        if pos >= BINS {
            pos = BINS - 1;
        }
        counts[pos] += 1;
    }
    let mut best = 0;
    for (k, &c) in counts.iter().enumerate() {
        if c > counts[best] {
            best = k;
        }
    }
    best
}

/// PL_Alpha_Hill of an eigen-spectrum, exactly as the AlphaLoRA / TempBalance code computes it
/// (methods.md §3.1): Hill estimates for each candidate `x_min = λ_i` in the window
/// `[lo, 1.5·xmin2]` around the log-histogram peak, and the one with the smallest KS distance.
///
/// `eigs_ascending` are the eigenvalues of `WᵀW` (squared singular values), ascending; an
/// unsorted input is sorted first. `corrected = false` reproduces the reference quirk
/// `lo = log10(0.95·xmin2)` compared against raw eigenvalues; `true` uses `lo = 0.95·xmin2`.
///
/// Returns `NaN` for degenerate spectra (see the module documentation).
pub fn fix_finger(eigs_ascending: &[f64], corrected: bool) -> f64 {
    fix_finger_fit(eigs_ascending, corrected).map_or(f64::NAN, |f| f.alpha)
}

/// The selected Fix-finger fit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FixFingerFit {
    /// PL_Alpha_Hill.
    pub alpha: f64,
    /// The KS-minimising candidate index `i` into the ascending eigenvalues.
    pub index: usize,
    /// `x_min = λ_i`.
    pub xmin: f64,
    /// Its KS distance (`1` when no candidate had `α > 1`).
    pub ks: f64,
}

/// [`fix_finger`] with the details of the chosen fit; `None` where it returns `NaN`.
pub fn fix_finger_fit(eigs_ascending: &[f64], corrected: bool) -> Option<FixFingerFit> {
    let n_total = eigs_ascending.len();
    if n_total < 2 || eigs_ascending.iter().any(|&l| !l.is_finite() || l <= 0.0) {
        return None;
    }
    let sorted;
    let lam: &[f64] = if eigs_ascending.windows(2).all(|p| p[0] <= p[1]) {
        eigs_ascending
    } else {
        let mut v = eigs_ascending.to_vec();
        v.sort_by(f64::total_cmp);
        sorted = v;
        &sorted
    };
    let h: Vec<f64> = lam.iter().map(|l| l.log10()).collect();
    let (hmin, hmax) = (h[0], h[n_total - 1]);
    if hmin >= hmax {
        return None;
    }
    let peak = histc_argmax(&h, hmin, hmax);
    let xmin2 = 10f64.powf(torch_linspace(hmin, hmax, BINS + 1, peak));
    let lo = if corrected {
        0.95 * xmin2
    } else {
        (0.95 * xmin2).log10()
    };
    let hi = 1.5 * xmin2;

    let ln: Vec<f64> = lam.iter().map(|l| l.ln()).collect();
    // Suffix sums of ln λ: tail[i] = Σ_{j ≥ i} ln λ_j, summed from the top as a reduction would.
    let mut tail = vec![0.0; n_total + 1];
    for i in (0..n_total).rev() {
        tail[i] = tail[i + 1] + ln[i];
    }
    let mut alphas = vec![0.0; n_total - 1];
    let mut ds = vec![1.0; n_total - 1];
    for i in 0..n_total - 1 {
        let xmin = lam[i];
        if xmin < lo {
            continue;
        }
        if xmin > hi {
            break;
        }
        let n = (n_total - i) as f64;
        let alpha = 1.0 + n / (tail[i] - n * ln[i]);
        alphas[i] = alpha;
        if alpha > 1.0 {
            let mut d: f64 = 0.0;
            for (q, &l) in lam[i..].iter().enumerate() {
                let v = (1.0 - (l / xmin).powf(1.0 - alpha) - q as f64 / n).abs();
                // NaN-propagating max, like torch.max.
                if v.is_nan() || v > d {
                    d = v;
                    if v.is_nan() {
                        break;
                    }
                }
            }
            ds[i] = d;
        }
    }
    // argmin, first index on ties; a NaN distance never wins.
    let mut best = 0;
    for (i, &d) in ds.iter().enumerate() {
        if d < ds[best] || (ds[best].is_nan() && !d.is_nan()) {
            best = i;
        }
    }
    let alpha = alphas[best];
    alpha.is_finite().then_some(FixFingerFit {
        alpha,
        index: best,
        xmin: lam[best],
        ks: ds[best],
    })
}

/// Squared singular values of a row-major `[m, n]` matrix, ascending (f64).
pub fn eigenvalues(w: &[f32], m: usize, n: usize) -> Result<Vec<f64>, String> {
    if m == 0 || n == 0 || w.len() != m * n {
        return Err(format!(
            "expected a non-empty [{m}, {n}] matrix, found {} values",
            w.len()
        ));
    }
    if w.iter().any(|x| !x.is_finite()) {
        return Err("the matrix has non-finite entries".into());
    }
    let a = faer::Mat::<f64>::from_fn(m, n, |i, j| w[i * n + j] as f64);
    let s = a
        .singular_values()
        .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    let mut lam: Vec<f64> = s.iter().map(|s| s * s).collect();
    lam.sort_by(f64::total_cmp);
    Ok(lam)
}

/// PL_Alpha_Hill of one weight matrix (row-major `[m, n]`): [`fix_finger`] of the squared
/// singular values. Degenerate spectra are errors.
pub fn matrix_alpha(w: &[f32], m: usize, n: usize, corrected: bool) -> Result<f64, String> {
    let lam = eigenvalues(w, m, n)?;
    let a = fix_finger(&lam, corrected);
    if a.is_nan() {
        Err(degenerate_reason(&lam))
    } else {
        Ok(a)
    }
}

fn degenerate_reason(lam: &[f64]) -> String {
    if lam.len() < 2 {
        format!(
            "the spectrum has {} eigenvalue(s); at least 2 are needed",
            lam.len()
        )
    } else if lam.iter().any(|&l| l <= 0.0) {
        "the matrix is rank-deficient (a zero singular value); PL_Alpha_Hill is undefined".into()
    } else if lam[0] >= lam[lam.len() - 1] {
        "all singular values are equal; PL_Alpha_Hill is undefined".into()
    } else {
        "the power-law fit is degenerate (non-finite estimate)".into()
    }
}

/// How [`allocate`] turns real-valued quotas into integer counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocMode {
    /// The released AlphaLoRA code: banker's rounding, then its repair loop.
    Exact,
    /// Floors of the quotas, then the remainder by largest fractional part.
    LargestRemainder,
}

impl AllocMode {
    /// Parses the `mode` argument of `alpha_hill` (`"exact"`, `"alphalora_exact"`,
    /// `"largest_remainder"`).
    pub fn from_name(s: &str) -> Option<AllocMode> {
        match s {
            "exact" | "alphalora_exact" => Some(AllocMode::Exact),
            "largest_remainder" => Some(AllocMode::LargestRemainder),
            _ => None,
        }
    }
}

/// First index of the smallest (`min = true`) or largest value; NaN never wins.
fn arg_extreme(x: &[f64], min: bool) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        let better = if min { v < x[best] } else { v > x[best] };
        if better || (x[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

/// Experts per layer (methods.md §3.2): `v = α^β`, counts proportional to `v` summing to
/// `budget`, rounded per `mode`, then raised to at least `min_experts` (so the total can
/// exceed `budget`; `min_experts = 0` reproduces the released code).
pub fn allocate(
    alphas: &[f64],
    budget: i64,
    beta: f64,
    mode: AllocMode,
    min_experts: i64,
) -> Vec<i64> {
    if alphas.is_empty() {
        return Vec::new();
    }
    let mut v: Vec<f64> = alphas
        .iter()
        .map(|&a| {
            let x = a.powf(beta);
            if x.is_finite() && x >= 0.0 {
                x
            } else {
                0.0
            }
        })
        .collect();
    let mut total: f64 = v.iter().sum();
    if !(total > 0.0 && total.is_finite()) {
        v.iter_mut().for_each(|x| *x = 1.0);
        total = v.len() as f64;
    }
    let t = budget as f64;
    let quotas: Vec<f64> = v.iter().map(|x| x / total * t).collect();
    let mut n: Vec<i64> = match mode {
        AllocMode::Exact => {
            let mut n: Vec<i64> = quotas.iter().map(|q| q.round_ties_even() as i64).collect();
            // The released repair loop, quirks included: it compares the unnormalised v with
            // the counts. Each step moves Σn one towards the budget, so it terminates.
            let mut sum: i64 = n.iter().sum();
            while sum != budget {
                let gap: Vec<f64> = v.iter().zip(&n).map(|(v, &n)| v - n as f64).collect();
                if sum < budget {
                    n[arg_extreme(&gap, true)] += 1;
                    sum += 1;
                } else {
                    n[arg_extreme(&gap, false)] -= 1;
                    sum -= 1;
                }
            }
            n
        }
        AllocMode::LargestRemainder => {
            let mut n: Vec<i64> = quotas.iter().map(|q| q.floor() as i64).collect();
            let left = budget - n.iter().sum::<i64>();
            let mut order: Vec<usize> = (0..n.len()).collect();
            // Stable sort: ties keep the lower index first.
            order.sort_by(|&a, &b| {
                let ra = quotas[a] - quotas[a].floor();
                let rb = quotas[b] - quotas[b].floor();
                rb.total_cmp(&ra)
            });
            for k in 0..left.max(0) as usize {
                n[order[k % order.len()]] += 1;
            }
            n
        }
    };
    let floor = min_experts.max(0);
    for x in &mut n {
        *x = (*x).max(floor);
    }
    n
}

/// AlphaLoRA's router top-k for a layer with `n` experts.
pub fn top_k_for(n: i64) -> i64 {
    if n > 1 {
        2
    } else {
        1
    }
}

/// One linear weight of the base model.
#[derive(Clone, Copy, Debug)]
pub struct LinearWeight<'a> {
    /// Module path (tensor name without `.weight`).
    pub module: &'a str,
    /// Row-major `[m, n]` values.
    pub data: &'a [f32],
    /// Rows (output features).
    pub m: usize,
    /// Columns (input features).
    pub n: usize,
}

/// PL_Alpha_Hill per module and per layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Alphas {
    /// `(module, alpha)` in input order.
    pub modules: Vec<(String, f64)>,
    /// Mean alpha of each layer's modules; `None` for a layer with none.
    pub layers: Vec<Option<f64>>,
}

/// Alpha of every given linear module, and per layer `l < layers` the mean over the modules
/// whose path lies in layer `l` (for `bert` the 6 linears of `encoder.layer.l`, for `llama` the
/// 7 projections). Modules outside any layer (`pooler.dense`) or in a layer `≥ layers` get an
/// alpha but count towards no layer. Matrices are analysed in parallel.
pub fn layer_alphas(
    linears: &[LinearWeight<'_>],
    layers: usize,
    corrected: bool,
) -> Result<Alphas, String> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(linears.len().max(1));
    let mut results: Vec<Option<Result<f64, String>>> = vec![None; linears.len()];
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots = std::sync::Mutex::new(&mut results);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(w) = linears.get(i) else { break };
                let r = matrix_alpha(w.data, w.m, w.n, corrected);
                if let Ok(mut g) = slots.lock() {
                    g[i] = Some(r);
                }
            });
        }
    });
    let mut modules = Vec::with_capacity(linears.len());
    let mut sums = vec![(0.0f64, 0usize); layers];
    for (w, r) in linears.iter().zip(results) {
        let a = match r {
            Some(Ok(a)) => a,
            Some(Err(e)) => return Err(format!("`{}`: {e}", w.module)),
            None => return Err(format!("`{}`: analysis did not run", w.module)),
        };
        if let Some(l) = layer_of(w.module).filter(|&l| l < layers) {
            sums[l].0 += a;
            sums[l].1 += 1;
        }
        modules.push((w.module.to_string(), a));
    }
    let layers = sums
        .iter()
        .map(|&(s, c)| (c > 0).then(|| s / c as f64))
        .collect();
    Ok(Alphas { modules, layers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_endpoints() {
        assert_eq!(torch_linspace(-3.0, 2.0, 101, 0), -3.0);
        assert_eq!(torch_linspace(-3.0, 2.0, 101, 100), 2.0);
        assert!((torch_linspace(-3.0, 2.0, 101, 50) + 0.5).abs() < 1e-12);
    }

    #[test]
    fn histc_puts_max_in_last_bin() {
        let h = [0.0, 1.0, 1.0];
        assert_eq!(histc_argmax(&h, 0.0, 1.0), BINS - 1);
        assert_eq!(histc_argmax(&[0.0, 0.5, 1.0], 0.0, 1.0), 0);
    }
}
