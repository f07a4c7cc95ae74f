//! Riemannian preconditioning (methods.md §4.1: Jacobi order for SGD, Gauss–Seidel for
//! AdamW, §7.10's B = 0 first step) in update graphs run through the reference interpreter,
//! against closed forms computed in f64.
//! Fixtures and closed forms: `common/optim.rs`.

mod common;

use common::optim::*;

// Riemannian preconditioning

const D: usize = 2; // rank
const N: usize = 4; // A: [D, N]
const M: usize = 3; // B: [M, D]

struct Pair {
    e: Option<usize>,
    a: Vec<f64>,
    b: Vec<f64>,
    ga: Vec<f64>,
    gb: Vec<f64>,
    /// AdamW moments (m.A, v.A, m.B, v.B).
    ma: Vec<f64>,
    va: Vec<f64>,
    mb: Vec<f64>,
    vb: Vec<f64>,
}

impl Pair {
    fn experts(&self) -> usize {
        self.e.unwrap_or(1)
    }
    fn shape_a(&self) -> Vec<usize> {
        match self.e {
            Some(e) => vec![e, D, N],
            None => vec![D, N],
        }
    }
    fn shape_b(&self) -> Vec<usize> {
        match self.e {
            Some(e) => vec![e, M, D],
            None => vec![M, D],
        }
    }
    fn random(e: Option<usize>, seed: u64) -> Pair {
        let k = e.unwrap_or(1);
        let mut s = seed;
        let (na, nb) = (k * D * N, k * M * D);
        Pair {
            e,
            a: vals(&mut s, na, -1.0, 1.0),
            b: vals(&mut s, nb, -1.0, 1.0),
            ga: vals(&mut s, na, -1.0, 1.0),
            gb: vals(&mut s, nb, -1.0, 1.0),
            // Zero first moments and small second moments for A make the Adam step linear in Ĝ
            // and large for A, so A moves a lot and pre- vs post-update A differ clearly for B.
            ma: vec![0.0; na],
            va: vals(&mut s, na, 0.005, 0.01),
            mb: vec![0.0; nb],
            vb: vals(&mut s, nb, 0.5, 1.0),
        }
    }
    fn params(&self) -> Vec<ParamInfo> {
        vec![
            param("enc.q", "A", &self.shape_a(), self.e),
            param("enc.q", "B", &self.shape_b(), self.e),
        ]
    }
    fn feed(&self) -> Feed {
        let (sa, sb) = (self.shape_a(), self.shape_b());
        [
            ("enc.q.A", &sa, &self.a),
            ("grad.enc.q.A", &sa, &self.ga),
            ("m.enc.q.A", &sa, &self.ma),
            ("v.enc.q.A", &sa, &self.va),
            ("enc.q.B", &sb, &self.b),
            ("grad.enc.q.B", &sb, &self.gb),
            ("m.enc.q.B", &sb, &self.mb),
            ("v.enc.q.B", &sb, &self.vb),
        ]
        .into_iter()
        .map(|(n, s, v)| (n.to_string(), (s.clone(), v.clone())))
        .collect()
    }
}

/// Riemannian SGD reference: (A', B') with B's preconditioner from `b_uses_updated_a`.
fn sgdr_ref(p: &Pair, lr: f64, delta: f64, b_uses_updated_a: bool) -> (Vec<f64>, Vec<f64>) {
    let o = per_expert(p.experts(), &[&p.a, &p.b, &p.ga, &p.gb], |t| {
        let (a, b, ga, gb) = (t[0], t[1], t[2], t[3]);
        let ga_hat = precond_a(b, ga, M, D, N, delta);
        let a_new: Vec<f64> = a.iter().zip(&ga_hat).map(|(x, g)| x - lr * g).collect();
        let a_for_b = if b_uses_updated_a { &a_new[..] } else { a };
        let gb_hat = precond_b(a_for_b, gb, M, D, N, delta);
        let b_new: Vec<f64> = b.iter().zip(&gb_hat).map(|(x, g)| x - lr * g).collect();
        vec![a_new, b_new]
    });
    (o[0].clone(), o[1].clone())
}

/// Riemannian AdamW reference (no bias correction): [A', m.A', v.A', B', m.B', v.B'].
fn adamwr_ref(p: &Pair, lr: f64, eps: f64, delta: f64, b_uses_updated_a: bool) -> Vec<Vec<f64>> {
    let betas = (0.9, 0.999);
    per_expert(
        p.experts(),
        &[&p.a, &p.b, &p.ga, &p.gb, &p.ma, &p.va, &p.mb, &p.vb],
        |t| {
            let (a, b, ga, gb, ma, va, mb, vb) = (t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
            let ga_hat = precond_a(b, ga, M, D, N, delta);
            let (a_new, ma_new, va_new) =
                adamw_ref(a, &ga_hat, ma, va, betas, eps, 0.0, lr, 1.0, 1.0);
            let a_for_b = if b_uses_updated_a { &a_new[..] } else { a };
            let gb_hat = precond_b(a_for_b, gb, M, D, N, delta);
            let (b_new, mb_new, vb_new) =
                adamw_ref(b, &gb_hat, mb, vb, betas, eps, 0.0, lr, 1.0, 1.0);
            vec![a_new, ma_new, va_new, b_new, mb_new, vb_new]
        },
    )
}

fn riemannian_graph(p: &Pair, kind: OptimizerKind, delta: f64) -> Graph {
    let params = p.params();
    let t = train(vec![opt(kind, Some((delta, "A", "B")), &[])]);
    let owner = assign(&params, &t, &["A".into(), "B".into()]).unwrap();
    update_graph(&params, &owner, &t).unwrap()
}

fn check_sgdr(e: Option<usize>) {
    let (lr, delta) = (0.3, 0.1);
    let p = Pair::random(e, 21);
    let g = riemannian_graph(&p, sgd(0.0, 0.0), delta);
    let out = run_update(
        &g,
        &p.feed(),
        &[Step {
            lr,
            bc1: 1.0,
            bc2: 1.0,
        }],
    );
    let (a_want, b_want) = sgdr_ref(&p, lr, delta, false);
    let (_, b_wrong) = sgdr_ref(&p, lr, delta, true);
    assert!(
        max_abs_diff(&b_want, &b_wrong) > 1e-2,
        "test values do not separate Jacobi from Gauss–Seidel"
    );
    close("SGDr new A", &out["new.enc.q.A"], &a_want, RTOL);
    close(
        "SGDr new B (pre-update A)",
        &out["new.enc.q.B"],
        &b_want,
        RTOL,
    );
    // And the preconditioner actually did something: plain SGD would differ.
    let plain_a: Vec<f64> = p.a.iter().zip(&p.ga).map(|(x, g)| x - lr * g).collect();
    assert!(max_abs_diff(&plain_a, &a_want) > 1e-2);
}

fn check_adamwr(e: Option<usize>) {
    let (lr, eps, delta) = (0.5, 1e-6, 0.1);
    let p = Pair::random(e, 33);
    let g = riemannian_graph(&p, adamw(eps, 0.0, false), delta);
    let out = run_update(
        &g,
        &p.feed(),
        &[Step {
            lr,
            bc1: 1.0,
            bc2: 1.0,
        }],
    );
    let want = adamwr_ref(&p, lr, eps, delta, true);
    let wrong = adamwr_ref(&p, lr, eps, delta, false);
    assert!(
        max_abs_diff(&want[3], &wrong[3]) > 1e-2,
        "test values do not separate Gauss–Seidel from Jacobi: {}",
        max_abs_diff(&want[3], &wrong[3])
    );
    let names = [
        "new.enc.q.A",
        "new.m.enc.q.A",
        "new.v.enc.q.A",
        "new.enc.q.B",
        "new.m.enc.q.B",
        "new.v.enc.q.B",
    ];
    for (n, w) in names.iter().zip(&want) {
        close(&format!("AdamWr {n}"), &out[*n], w, RTOL);
    }
}

/// The Riemannian update-order test (methods.md §4.1, §7.10): SGD builds B's preconditioner from
/// the pre-update A (Jacobi), AdamW from the already-updated A (Gauss–Seidel).
#[test]
fn riemannian_update_order_sgd_uses_pre_update_a() {
    check_sgdr(None);
}

#[test]
fn riemannian_update_order_adamw_uses_updated_a() {
    check_adamwr(None);
}

#[test]
fn riemannian_update_order_per_expert_stacked() {
    check_sgdr(Some(3));
    check_adamwr(Some(3));
}

/// methods.md §7.10: at step 1 with B = 0 the gradient of A (= Bᵀ·G_W) is 0, so only B moves.
#[test]
fn riemannian_first_step_with_zero_b_moves_only_b() {
    let delta = 1e-6;
    for e in [None, Some(2)] {
        let k = e.unwrap_or(1);
        let mut s = 5u64;
        let a = vals(&mut s, k * D * N, -1.0, 1.0);
        let b = vec![0.0; k * M * D];
        // W = B·A, so G_A = Bᵀ G_W (= 0) and G_B = G_W Aᵀ, per expert.
        let gw = vals(&mut s, k * M * N, -1.0, 1.0);
        let grads = per_expert(k, &[&a, &b, &gw], |t| {
            vec![
                matmul(&transpose(t[1], M, D), t[2], D, M, N),
                matmul(t[2], &transpose(t[0], D, N), M, N, D),
            ]
        });
        assert!(grads[0].iter().all(|&x| x == 0.0));
        let na = k * D * N;
        let nb = k * M * D;
        let p = Pair {
            e,
            a: a.clone(),
            b,
            ga: grads[0].clone(),
            gb: grads[1].iter().map(|&x| x as f32 as f64).collect(),
            ma: vec![0.0; na],
            va: vec![0.0; na],
            mb: vec![0.0; nb],
            vb: vec![0.0; nb],
        };

        // AdamW (as in the method: no bias correction, eps 1e-6).
        let (lr, eps) = (1e-2, 1e-6);
        let g = riemannian_graph(&p, adamw(eps, 0.0, false), delta);
        let out = run_update(
            &g,
            &p.feed(),
            &[Step {
                lr,
                bc1: 1.0,
                bc2: 1.0,
            }],
        );
        assert_eq!(
            out["new.enc.q.A"], a,
            "A must not move at step 1 with B = 0"
        );
        assert!(out["new.m.enc.q.A"].iter().all(|&x| x == 0.0));
        let want = adamwr_ref(&p, lr, eps, delta, true);
        close("B=0 AdamWr new B", &out["new.enc.q.B"], &want[3], RTOL);
        assert!(
            out["new.enc.q.B"].iter().any(|&x| x.abs() > 1e-4),
            "B must move"
        );

        // SGD.
        let g = riemannian_graph(&p, sgd(0.0, 0.0), delta);
        let out = run_update(
            &g,
            &p.feed(),
            &[Step {
                lr,
                bc1: 1.0,
                bc2: 1.0,
            }],
        );
        assert_eq!(
            out["new.enc.q.A"], a,
            "A must not move at step 1 with B = 0"
        );
        let (_, b_want) = sgdr_ref(&p, lr, delta, false);
        close("B=0 SGDr new B", &out["new.enc.q.B"], &b_want, RTOL);
        assert!(
            out["new.enc.q.B"].iter().any(|&x| x.abs() > 1e-4),
            "B must move"
        );
    }
}

/// Only the named pair is preconditioned: another tensor of the same optimizer gets the plain
/// update, and a pair in another module is preconditioned with its own factors.
#[test]
fn riemannian_leaves_other_tensors_alone_and_pairs_per_module() {
    let (lr, delta) = (0.3, 0.1);
    let p1 = Pair::random(None, 41);
    let p2 = Pair::random(None, 43);
    let mut params = p1.params();
    for q in p2.params() {
        params.push(param("enc.k", &q.local, &q.shape, None));
    }
    params.push(param("enc.q", "Wg", &[2, 2], None));
    let t = train(vec![opt(sgd(0.0, 0.0), Some((delta, "A", "B")), &[])]);
    let owner = assign(&params, &t, &[]).unwrap();
    let g = update_graph(&params, &owner, &t).unwrap();
    let mut feed = p1.feed();
    for (n, v) in p2.feed() {
        feed.insert(n.replace("enc.q", "enc.k"), v);
    }
    let wg = vec![0.5, -0.25, 1.0, 2.0];
    let gwg = vec![1.0, 2.0, -3.0, 0.5];
    feed.insert("enc.q.Wg".into(), (vec![2, 2], wg.clone()));
    feed.insert("grad.enc.q.Wg".into(), (vec![2, 2], gwg.clone()));
    let out = run_update(
        &g,
        &feed,
        &[Step {
            lr,
            bc1: 1.0,
            bc2: 1.0,
        }],
    );
    for (p, m) in [(&p1, "enc.q"), (&p2, "enc.k")] {
        let (a, b) = sgdr_ref(p, lr, delta, false);
        close(&format!("{m}.A"), &out[&format!("new.{m}.A")], &a, RTOL);
        close(&format!("{m}.B"), &out[&format!("new.{m}.B")], &b, RTOL);
    }
    let want: Vec<f64> = wg.iter().zip(&gwg).map(|(x, g)| x - lr * g).collect();
    close("Wg", &out["new.enc.q.Wg"], &want, RTOL);
}

// ---------------------------------------------------------------------------------------------
