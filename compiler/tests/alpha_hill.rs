//! AlphaLoRA: PL_Alpha_Hill (methods.md §3.1) and expert allocation (§3.2) test vectors.

use lorac_compiler::analysis::alpha::{
    allocate, fix_finger, fix_finger_fit, layer_alphas, matrix_alpha, top_k_for, AllocMode,
    LinearWeight,
};

const BETA: f64 = 2.5;

/// (alphas, T, code output, largest remainder).
type Vector = (Vec<f64>, i64, Vec<i64>, Vec<i64>);

/// The four allocation vectors of methods.md §3.2.
fn vectors() -> Vec<Vector> {
    vec![
        (
            vec![2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0],
            40,
            vec![1, 2, 3, 4, 5, 7, 8, 10],
            vec![1, 2, 3, 4, 5, 7, 8, 10],
        ),
        (
            vec![3.35, 2.2, 2.08, 6.07, 6.56, 5.03, 5.65, 4.72],
            33,
            vec![2, 1, 0, 7, 8, 5, 6, 4],
            vec![2, 1, 0, 7, 9, 4, 6, 4],
        ),
        (
            vec![6.08, 2.01, 6.29, 2.17, 5.65, 2.88],
            34,
            vec![11, 1, 10, 1, 9, 2],
            vec![10, 1, 11, 1, 9, 2],
        ),
        (
            vec![2.62, 5.35, 5.24, 5.08, 3.92],
            5,
            vec![1, 1, 1, 1, 1],
            vec![0, 2, 1, 1, 1],
        ),
    ]
}

#[test]
fn allocation_exact_matches_released_code() {
    for (alphas, t, exact, _) in vectors() {
        let n = allocate(&alphas, t, BETA, AllocMode::Exact, 0);
        assert_eq!(n, exact, "alphas {alphas:?}, T = {t}");
        assert_eq!(n.iter().sum::<i64>(), t);
    }
}

#[test]
fn allocation_largest_remainder() {
    for (alphas, t, _, lr) in vectors() {
        let n = allocate(&alphas, t, BETA, AllocMode::LargestRemainder, 0);
        assert_eq!(n, lr, "alphas {alphas:?}, T = {t}");
        assert_eq!(n.iter().sum::<i64>(), t);
    }
}

#[test]
fn min_experts_raises_zero_layers_after_rounding() {
    // Vector 2 leaves layer 2 with 0 experts in exact mode; min_experts = 1 raises it, so the
    // total exceeds the budget by one.
    let (alphas, t, exact, _) = vectors().swap_remove(1);
    let n = allocate(&alphas, t, BETA, AllocMode::Exact, 1);
    let mut want = exact.clone();
    want[2] = 1;
    assert_eq!(n, want);
    assert_eq!(n.iter().sum::<i64>(), t + 1);
    // Vector 4, largest remainder: layer 0 gets 0, then 1.
    let (alphas, t, _, lr) = vectors().swap_remove(3);
    let n = allocate(&alphas, t, BETA, AllocMode::LargestRemainder, 1);
    assert_eq!(n, vec![1, 2, 1, 1, 1]);
    assert_eq!(lr[0], 0);
    // min_experts never lowers a count.
    let (alphas, t, exact, _) = vectors().swap_remove(0);
    assert_eq!(allocate(&alphas, t, BETA, AllocMode::Exact, 1), exact);
}

#[test]
fn top_k_rule() {
    assert_eq!(top_k_for(0), 1);
    assert_eq!(top_k_for(1), 1);
    assert_eq!(top_k_for(2), 2);
    assert_eq!(top_k_for(10), 2);
}

#[test]
fn mode_names() {
    assert_eq!(AllocMode::from_name("exact"), Some(AllocMode::Exact));
    assert_eq!(
        AllocMode::from_name("largest_remainder"),
        Some(AllocMode::LargestRemainder)
    );
    assert_eq!(AllocMode::from_name("nearest"), None);
}

/// Exact Pareto quantiles λ_j = (1 − j/201)^(−1/(a−1)), j = 1..200 (ascending).
fn pareto(a: f64) -> Vec<f64> {
    (1..=200)
        .map(|j| (1.0 - j as f64 / 201.0).powf(-1.0 / (a - 1.0)))
        .collect()
}

#[test]
fn hill_on_pareto_quantiles() {
    for (a, want) in [(3.0, 3.03633), (2.0, 2.01817), (4.0, 4.05450)] {
        let got = fix_finger(&pareto(a), false);
        assert!((got - want).abs() < 1e-4, "a = {a}: got {got}, want {want}");
    }
}

/// The full-tail Hill estimate at i = 0 (n = N), the argmin the spec names.
fn hill_at_0(lam: &[f64]) -> f64 {
    let n = lam.len() as f64;
    let s: f64 = lam.iter().map(|l| l.ln()).sum();
    1.0 + n / (s - n * lam[0].ln())
}

#[test]
fn hill_argmin_is_the_full_tail() {
    for a in [2.0, 3.0, 4.0] {
        let lam = pareto(a);
        let fit = fix_finger_fit(&lam, false).unwrap();
        assert_eq!(fit.index, 0, "a = {a}");
        assert_eq!(fit.xmin, lam[0]);
        assert!(fit.ks < 1.0);
        assert!((fit.alpha - hill_at_0(&lam)).abs() < 1e-12, "a = {a}");
        assert_eq!(fix_finger_fit(&lam, true).unwrap().index, 0, "a = {a}");
    }
}

#[test]
fn corrected_mode_on_pareto_quantiles() {
    // The peak of the log-histogram is the first bin (the quantiles are densest at the
    // bottom), so xmin2 = λ_0 and the corrected window [0.95 λ_0, 1.5 λ_0] still contains
    // i = 0, the KS minimum: both modes agree here.
    for (a, want) in [(3.0, 3.03633), (2.0, 2.01817), (4.0, 4.05450)] {
        let lam = pareto(a);
        let got = fix_finger(&lam, true);
        assert!((got - want).abs() < 1e-4, "a = {a}: got {got}, want {want}");
        assert_eq!(got, fix_finger(&lam, false));
    }
}

#[test]
fn corrected_mode_differs_when_the_quirk_matters() {
    // 100 Pareto quantiles in [1, 10) plus a spike of 20 values at 5: the histogram peak is
    // the spike, xmin2 ≈ 5. The quirky bound log10(0.95·xmin2) ≈ 0.68 admits every
    // eigenvalue (the fit lands on i = 0); the corrected bound 0.95·xmin2 starts at the spike.
    let mut lam: Vec<f64> = (1..=100)
        .map(|j| (1.0 - j as f64 / 101.0).powf(-0.5))
        .collect();
    lam.extend((0..20).map(|i| 5.0 * (1.0 + i as f64 * 1e-4)));
    lam.sort_by(f64::total_cmp);
    let exact = fix_finger_fit(&lam, false).unwrap();
    let corrected = fix_finger_fit(&lam, true).unwrap();
    assert_eq!(exact.index, 0);
    assert!((exact.alpha - 2.490738).abs() < 1e-5, "{exact:?}");
    assert!(corrected.xmin >= 0.95 * 5.0 * 0.9, "{corrected:?}");
    assert!((corrected.alpha - 5.181058).abs() < 1e-5, "{corrected:?}");
    // The exact window is a superset here, so its KS minimum is no larger.
    assert!(exact.ks <= corrected.ks);
}

#[test]
fn degenerate_spectra_do_not_panic() {
    assert!(fix_finger(&[], false).is_nan());
    assert!(fix_finger(&[2.0], false).is_nan());
    assert!(fix_finger(&[3.0; 50], false).is_nan());
    assert!(fix_finger(&[3.0; 50], true).is_nan());
    assert!(fix_finger(&[0.0, 1.0, 2.0], false).is_nan());
    assert!(fix_finger(&[-1.0, 1.0, 2.0], false).is_nan());
    assert!(fix_finger(&[1.0, f64::INFINITY], false).is_nan());
    assert!(fix_finger(&[1.0, f64::NAN, 2.0], true).is_nan());
    // Two values: one candidate.
    let a = fix_finger(&[1.0, 2.0], false);
    assert!(a.is_finite() && a > 1.0);
    // Unsorted input is sorted first.
    let mut lam = pareto(3.0);
    let want = fix_finger(&lam, false);
    lam.reverse();
    assert_eq!(fix_finger(&lam, false), want);
}

#[test]
fn degenerate_matrices_are_errors() {
    assert!(matrix_alpha(&[], 0, 0, false).is_err());
    assert!(matrix_alpha(&[1.0, 2.0], 2, 2, false).is_err());
    assert!(matrix_alpha(&[0.0; 16], 4, 4, false).is_err());
    assert!(matrix_alpha(&[5.0], 1, 1, false).is_err());
    // Identity: all singular values equal.
    let eye: Vec<f32> = (0..16)
        .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
        .collect();
    assert!(matrix_alpha(&eye, 4, 4, false).is_err());
    assert!(matrix_alpha(&[1.0, f32::NAN, 0.0, 1.0], 2, 2, false).is_err());
}

#[test]
fn degenerate_allocations_do_not_panic() {
    assert!(allocate(&[], 10, BETA, AllocMode::Exact, 1).is_empty());
    let n = allocate(&[0.0, 0.0, 0.0], 6, BETA, AllocMode::Exact, 0);
    assert_eq!(n, vec![2, 2, 2]);
    let n = allocate(&[f64::NAN, 3.0], 4, BETA, AllocMode::LargestRemainder, 0);
    assert_eq!(n, vec![0, 4]);
    let n = allocate(&[3.0, 4.0], 0, BETA, AllocMode::Exact, 0);
    assert_eq!(n.iter().sum::<i64>(), 0);
    assert!(n.iter().all(|&x| x >= 0));
    let n = allocate(&[3.0, 4.0], 0, BETA, AllocMode::LargestRemainder, 1);
    assert_eq!(n, vec![1, 1]);
}

/// A deterministic, full-rank, non-trivial matrix.
fn matrix(m: usize, n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..m * n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
        })
        .collect()
}

#[test]
fn matrix_alpha_uses_squared_singular_values() {
    // A diagonal matrix has singular values |d_i|: its alpha is fix_finger of d_i².
    let d: Vec<f64> = pareto(3.0).iter().map(|l| l.sqrt()).collect();
    let k = d.len();
    let mut w = vec![0f32; k * k];
    for (i, &x) in d.iter().enumerate() {
        w[i * k + i] = x as f32;
    }
    let lam: Vec<f64> = d.iter().map(|&x| (x as f32 as f64).powi(2)).collect();
    let got = matrix_alpha(&w, k, k, false).unwrap();
    assert!((got - fix_finger(&lam, false)).abs() < 1e-9);
    assert!((got - 3.03633).abs() < 1e-3);
}

#[test]
fn layer_means() {
    let (a, b, c) = (matrix(12, 8, 1), matrix(8, 12, 2), matrix(10, 10, 3));
    let ws = [
        LinearWeight {
            module: "encoder.layer.0.attention.self.query",
            data: &a,
            m: 12,
            n: 8,
        },
        LinearWeight {
            module: "encoder.layer.1.output.dense",
            data: &b,
            m: 8,
            n: 12,
        },
        LinearWeight {
            module: "encoder.layer.0.output.dense",
            data: &c,
            m: 10,
            n: 10,
        },
        LinearWeight {
            module: "pooler.dense",
            data: &c,
            m: 10,
            n: 10,
        },
    ];
    let r = layer_alphas(&ws, 3, false).unwrap();
    let each: Vec<f64> = [(&a, 12, 8), (&b, 8, 12), (&c, 10, 10)]
        .iter()
        .map(|(w, m, n)| matrix_alpha(w, *m, *n, false).unwrap())
        .collect();
    assert_eq!(r.modules.len(), 4);
    assert_eq!(r.modules[3].0, "pooler.dense");
    assert_eq!(r.modules[0].1, each[0]);
    assert_eq!(r.layers[0], Some((each[0] + each[2]) / 2.0));
    assert_eq!(r.layers[1], Some(each[1]));
    assert_eq!(r.layers[2], None);
    // A degenerate module is an error naming it.
    let z = vec![0f32; 16];
    let bad = [LinearWeight {
        module: "model.layers.0.mlp.up_proj",
        data: &z,
        m: 4,
        n: 4,
    }];
    let e = layer_alphas(&bad, 1, false).unwrap_err();
    assert!(e.contains("model.layers.0.mlp.up_proj"), "{e}");
}

#[test]
fn minilm_layer_alphas_allocation() {
    // Per-layer alphas of assets/minilm (`loraC inspect assets/minilm --alpha`, matching an
    // independent numpy port of the released code to 3e-13); the counts come from a numpy port
    // of the released allocation function.
    let alphas = [
        2.329312264084847,
        2.663379846158674,
        2.9372210437669923,
        2.584145747804546,
        2.53922757448942,
        3.074239833619744,
    ];
    assert_eq!(
        allocate(&alphas, 12, BETA, AllocMode::Exact, 1),
        vec![1, 2, 2, 2, 2, 3]
    );
    assert_eq!(
        allocate(&alphas, 24, BETA, AllocMode::Exact, 1),
        vec![3, 4, 5, 4, 3, 5]
    );
}
