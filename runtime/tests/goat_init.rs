//! GOAT's initialisation on MiniLM's real query weight (methods.md §2.3, §7.1–7.2):
//! the residual rewrite, the SVD segments each expert gets, the single-token identity
//! W_eff − W0 = Σ_i (w_i − 1/E)(1/ρ) U_i Σ_i V_iᵀ, and E[w_i] = 1/E over router draws.
//! Oracle for the spectrum: a cyclic Jacobi eigen-solver on W0ᵀW0 written here (not faer).

use lorac_compiler::check::check_source;
use lorac_compiler::check::value::Value;
use lorac_runtime::init::initialize;
use lorac_runtime::weights::load;
use std::collections::HashMap;
use std::path::Path;

const MODULE: &str = "encoder.layer.0.attention.self.query";

/// Eigenvalues of a symmetric matrix (cyclic Jacobi, f64), descending.
fn jacobi_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    for _sweep in 0..30 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        if off < 1e-22 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    let mut e: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
    e.sort_by(|x, y| y.partial_cmp(x).unwrap_or(std::cmp::Ordering::Equal));
    e
}

#[test]
fn goat_init_rewrites_w0_and_takes_segment_heads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let weights = root.join("assets/minilm/model.safetensors");
    if !weights.is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let text = format!(
        "import std.goat\nmodel bert(\"{}\")\nattach Goat(E = 8, k = 2, r = 8, eta = 1.0, rho = 10.0) to {MODULE}\n",
        root.join("assets/minilm").display()
    );
    let c = check_source("goat_init.lora", &root.join("goat_init.lora"), text);
    let spec = c.spec.expect("checks clean");
    let at = &spec.attachments[0];
    let s = match at.instance.scalars.iter().find(|(k, _)| k == "s") {
        Some((_, Value::Float(s))) => *s,
        other => panic!("{other:?}"),
    };
    assert!((s - (3.0f64 * 384.0).sqrt()).abs() < 1e-9);
    let (e, rho, n) = (8usize, 10.0f64, 384usize);
    let wname = format!("{MODULE}.weight");
    let mut w = load(&weights, Some(std::slice::from_ref(&wname))).unwrap();
    let w0: Vec<f64> = w[&wname].f().iter().map(|&v| v as f64).collect();
    let shapes: HashMap<String, Vec<usize>> = HashMap::from([
        (format!("{MODULE}.Wg"), vec![e, n]),
        (format!("{MODULE}.A"), vec![e, 1, n]),
        (format!("{MODULE}.B"), vec![e, n, 1]),
    ]);
    let vals = initialize(&spec, &shapes, &mut w, 0).unwrap();
    let wt: Vec<f64> = w[&wname].f().iter().map(|&v| v as f64).collect();
    let a: Vec<f64> = vals[&format!("{MODULE}.A")]
        .f()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let b: Vec<f64> = vals[&format!("{MODULE}.B")]
        .f()
        .iter()
        .map(|&v| v as f64)
        .collect();
    // Expert i's s·B_i A_i (rank 1: B_i is a column, A_i a row).
    let delta = |i: usize, r: usize, c: usize| s * b[i * n + r] * a[i * n + c];
    // 1. The rewrite: W̃0 + (s/E) Σ_i B_i A_i = W0.
    let mut worst = 0f64;
    for r in 0..n {
        for c in 0..n {
            let sum: f64 = (0..e).map(|i| delta(i, r, c)).sum::<f64>() / e as f64;
            worst = worst.max((wt[r * n + c] + sum - w0[r * n + c]).abs());
        }
    }
    assert!(worst < 1e-5, "rewrite residual {worst}");
    // 2. Segment heads: ρ‖s B_i A_i‖_F = σ_{i·t}, t = h / E = 48 (independent eigen-solver).
    let mut gram = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            gram[i * n + j] = (0..n).map(|k| w0[k * n + i] * w0[k * n + j]).sum();
        }
    }
    let sigma: Vec<f64> = jacobi_eigenvalues(gram, n)
        .iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    for i in 0..e {
        let norm_a: f64 = (0..n).map(|c| a[i * n + c].powi(2)).sum::<f64>().sqrt();
        let norm_b: f64 = (0..n).map(|r| b[i * n + r].powi(2)).sum::<f64>().sqrt();
        let got = rho * s * norm_a * norm_b;
        let want = sigma[i * (n / e)];
        assert!(
            (got - want).abs() < 1e-4 * want.max(1.0),
            "expert {i}: {got} vs σ_{} = {want}",
            i * (n / e)
        );
    }
    // 3. Single token: W_eff x − W0 x = Σ_i (w_i − 1/E) s B_i A_i x for any renormalised gate w.
    let x: Vec<f64> = (0..n)
        .map(|k| ((k * 37 % 101) as f64 / 50.0) - 1.0)
        .collect();
    let gate = [0.0, 0.7, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0];
    for r in (0..n).step_by(17) {
        let base: f64 = (0..n).map(|c| w0[r * n + c] * x[c]).sum();
        let eff: f64 = (0..n)
            .map(|c| (wt[r * n + c] + (0..e).map(|i| gate[i] * delta(i, r, c)).sum::<f64>()) * x[c])
            .sum();
        let want: f64 = (0..e)
            .map(|i| {
                (gate[i] - 1.0 / e as f64) * (0..n).map(|c| delta(i, r, c) * x[c]).sum::<f64>()
            })
            .sum();
        assert!(
            (eff - base - want).abs() < 1e-5,
            "row {r}: {} vs {want}",
            eff - base
        );
    }
}

#[test]
fn top2_of_8_renormalised_gates_average_one_eighth() {
    // Lemma 3.3: i.i.d. logits ⇒ E[w_i] = 1/E; Var(w_i) ≈ (E − k)/(k E²) = 0.046875 at small logits.
    let (e, k, draws) = (8usize, 2usize, 100_000usize);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut gauss = || {
        let mut u = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (u1, u2) = (u(), u());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    let (mut mean, mut sq) = (vec![0f64; e], vec![0f64; e]);
    for _ in 0..draws {
        let z: Vec<f64> = (0..e).map(|_| 0.01 * gauss()).collect();
        let p: Vec<f64> = z.iter().map(|v| v.exp()).collect();
        let mut idx: Vec<usize> = (0..e).collect();
        idx.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap_or(std::cmp::Ordering::Equal));
        let tot: f64 = idx[..k].iter().map(|&i| p[i]).sum();
        for &i in &idx[..k] {
            mean[i] += p[i] / tot / draws as f64;
            sq[i] += (p[i] / tot).powi(2) / draws as f64;
        }
    }
    for i in 0..e {
        assert!((mean[i] - 0.125).abs() < 0.003, "E[w_{i}] = {}", mean[i]);
        let var = sq[i] - mean[i] * mean[i];
        assert!((var - 0.046875).abs() < 0.002, "Var(w_{i}) = {var}");
    }
}
