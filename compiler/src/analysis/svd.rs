//! Thin SVD of base weights (faer, f64) and the SVD-derived adapter priors:
//! PiSSA / MiLoRA factors and GOAT's spectrum segments (methods.md §2.3, §5).

use crate::ir::Tensor;

/// `W = U diag(S) Vᵀ` with singular values in descending order.
pub struct Svd {
    /// `[m, h]`, row-major.
    pub u: Vec<f64>,
    /// `[h]`, descending.
    pub s: Vec<f64>,
    /// `Vᵀ`, `[h, n]`, row-major.
    pub vt: Vec<f64>,
    /// Rows of W.
    pub m: usize,
    /// Columns of W.
    pub n: usize,
}

impl Svd {
    /// h = min(m, n).
    pub fn h(&self) -> usize {
        self.s.len()
    }
}

/// Thin SVD of a row-major `[m, n]` f32 matrix, computed in f64.
pub fn thin_svd(w: &[f32], m: usize, n: usize) -> Result<Svd, String> {
    let a = faer::Mat::<f64>::from_fn(m, n, |i, j| w[i * n + j] as f64);
    let svd = a
        .thin_svd()
        .map_err(|e| format!("SVD did not converge: {e:?}"))?;
    let (u, s, v) = (svd.U(), svd.S(), svd.V());
    let h = m.min(n);
    let sv: Vec<f64> = (0..h).map(|i| s[i]).collect();
    let mut order: Vec<usize> = (0..h).collect();
    // faer returns descending values already; sort defensively (stable, so ties keep order).
    order.sort_by(|&a, &b| {
        sv[b]
            .partial_cmp(&sv[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut out = Svd {
        u: vec![0.0; m * h],
        s: vec![0.0; h],
        vt: vec![0.0; h * n],
        m,
        n,
    };
    for (k, &o) in order.iter().enumerate() {
        out.s[k] = sv[o];
        for i in 0..m {
            out.u[i * h + k] = u[(i, o)];
        }
        for j in 0..n {
            out.vt[k * n + j] = v[(j, o)];
        }
    }
    Ok(out)
}

/// Factors `A = diag(√(σ/shrink)) Vᵀ[idx]` (`[d, n]`) and `B = U[:, idx] diag(√(σ/shrink))` (`[m, d]`)
/// for the singular triplets `idx`.
pub fn factors(svd: &Svd, idx: &[usize], shrink: f64) -> (Tensor, Tensor) {
    let (m, n, h, d) = (svd.m, svd.n, svd.h(), idx.len());
    let mut a = vec![0f32; d * n];
    let mut b = vec![0f32; m * d];
    for (r, &k) in idx.iter().enumerate() {
        let sq = (svd.s[k] / shrink).max(0.0).sqrt();
        for j in 0..n {
            a[r * n + j] = (sq * svd.vt[k * n + j]) as f32;
        }
        for i in 0..m {
            b[i * d + r] = (svd.u[i * h + k] * sq) as f32;
        }
    }
    (Tensor::f32(vec![d, n], a), Tensor::f32(vec![m, d], b))
}

/// Indices of expert `j`'s segment (methods.md §2.3): `t = h / E`;
/// `segment_head`/`goat`: `[j t, j t + d)`; `segment_tail`/`goat_mini`: `[(j+1) t − d, (j+1) t)`;
/// `principal`: `[j d, (j+1) d)`; `minor`: `[h − (j+1) d, h − j d)`; `random`: `[start, start + d)`.
pub fn segment(
    select: &str,
    j: usize,
    experts: usize,
    d: usize,
    h: usize,
    random_start: usize,
) -> Vec<usize> {
    let t = h / experts;
    let start = match select {
        "segment_tail" | "goat_mini" => (j + 1) * t - d,
        "principal" => j * d,
        "minor" => h - (j + 1) * d,
        "random" => random_start.min(h - d),
        _ => j * t,
    };
    (start..start + d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svd_reconstructs_and_orders() {
        let (m, n) = (5, 3);
        let w: Vec<f32> = (0..m * n)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let s = thin_svd(&w, m, n).unwrap();
        assert!(s.s.windows(2).all(|p| p[0] >= p[1]));
        for i in 0..m {
            for j in 0..n {
                let r: f64 = (0..3)
                    .map(|k| s.u[i * 3 + k] * s.s[k] * s.vt[k * n + j])
                    .sum();
                assert!((r - w[i * n + j] as f64).abs() < 1e-9);
            }
        }
        // B A over all triplets with shrink 1 reconstructs W.
        let (a, b) = factors(&s, &[0, 1, 2], 1.0);
        for i in 0..m {
            for j in 0..n {
                let r: f32 = (0..3).map(|k| b.f()[i * 3 + k] * a.f()[k * n + j]).sum();
                assert!((r - w[i * n + j]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn goat_segments_follow_methods_md() {
        // h = 16, E = 4, d = 2: t = 4.
        assert_eq!(segment("segment_head", 1, 4, 2, 16, 0), vec![4, 5]);
        assert_eq!(segment("goat", 3, 4, 2, 16, 0), vec![12, 13]);
        assert_eq!(segment("segment_tail", 1, 4, 2, 16, 0), vec![6, 7]);
        assert_eq!(segment("principal", 1, 4, 2, 16, 0), vec![2, 3]);
        assert_eq!(segment("minor", 0, 4, 2, 16, 0), vec![14, 15]);
    }
}
