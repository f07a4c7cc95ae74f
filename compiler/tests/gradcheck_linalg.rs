//! Finite-difference checks of matrix products and the SPD solve, and the solve's closed forms.
//! The harness and its tolerances: `common/gradcheck.rs`.

mod common;

use common::gradcheck::*;

// ---------------------------------------------------------------------------------------------
// Linear algebra
// ---------------------------------------------------------------------------------------------

#[test]
fn matmul_2d_and_batched() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 50], &[50, 1]),
        (&[1, 3], &[3, 4]),
        (&[50, 3], &[3, 50]),
        (&[1, 1], &[1, 1]),
        (&[2, 3, 50], &[2, 50, 1]),
        (&[3, 1, 4], &[3, 4, 3]),
        (&[2, 2, 3, 2], &[2, 2, 2, 5]),
    ];
    for (ci, &(sa, sb)) in cases.iter().enumerate() {
        let seed = 4000 + ci as u64;
        let mut rng = Rng::new(seed);
        let a = rng.vec(numel(sa), -1.0, 1.0);
        let b = rng.vec(numel(sb), -1.0, 1.0);
        // Bilinear: the FD is exact up to rounding, so h can be large.
        check(
            &format!("matmul {sa:?} @ {sb:?}"),
            seed,
            FD,
            vec![p(sa, a), p(sb, b)],
            |g, ps, _| g.matmul(ps[0], ps[1]).unwrap(),
        );
    }
}

#[test]
fn spd_solve_both_operands() {
    // (batch dims, d, c, damping)
    let cases: &[(&[usize], usize, usize, f32)] = &[
        (&[], 3, 2, 0.0),
        (&[], 1, 3, 0.5),
        (&[2], 3, 1, 0.1),
        (&[], 5, 3, 0.0),
        (&[2, 1], 2, 2, 0.0),
    ];
    for (ci, &(batch, d, c, damping)) in cases.iter().enumerate() {
        let seed = 5000 + ci as u64;
        let mut rng = Rng::new(seed);
        let nb = numel(batch);
        let mut sa = batch.to_vec();
        sa.extend([d, d]);
        let mut sb = batch.to_vec();
        sb.extend([d, c]);
        let a = spd(&mut rng, nb, d);
        let b = rng.vec(numel(&sb), -1.0, 1.0);
        // A is perturbed symmetrically (the solve reads its lower triangle):
        // compare (L(A + hE_ij + hE_ji) - L(A - ...)) / 2h with dA[i,j] + dA[j,i].
        check(
            &format!("spd_solve {sa:?} {sb:?} δ={damping}"),
            seed,
            FD_FINE,
            vec![p_sym(&sa, a), p(&sb, b)],
            |g, ps, _| g.add(Op::SpdSolve { damping }, &[ps[0], ps[1]]).unwrap(),
        );
    }
    // Through a graph-built SPD matrix A = M Mᵀ + I (no symmetric perturbation needed).
    let mut rng = Rng::new(5100);
    let m = rng.vec(9, -1.0, 1.0);
    let b = rng.vec(6, -1.0, 1.0);
    check(
        "spd_solve(M Mᵀ + I)",
        5100,
        FD_FINE,
        vec![p(&[3, 3], m), p(&[3, 2], b)],
        |g, ps, _| {
            let mt = g.t(ps[0]).unwrap();
            let mm = g.matmul(ps[0], mt).unwrap();
            let eye = g
                .add(
                    Op::Literal {
                        shape: vec![3, 3],
                        data: std::sync::Arc::new(vec![1., 0., 0., 0., 1., 0., 0., 0., 1.]),
                    },
                    &[],
                )
                .unwrap();
            let a = g.plus(mm, eye).unwrap();
            g.add(Op::SpdSolve { damping: 0.0 }, &[a, ps[1]]).unwrap()
        },
    );
}

fn solve(a: Vec<f32>, ashape: &[usize], b: Vec<f32>, bshape: &[usize], damping: f32) -> Vec<f32> {
    let mut g = Graph::new();
    let an = data(&mut g, "a", ashape);
    let bn = data(&mut g, "b", bshape);
    let x = g.add(Op::SpdSolve { damping }, &[an, bn]).unwrap();
    let mut inp = HashMap::new();
    inp.insert("a".to_string(), Tensor::f32(ashape.to_vec(), a));
    inp.insert("b".to_string(), Tensor::f32(bshape.to_vec(), b));
    run(&g, &inp).unwrap()[&x].f().to_vec()
}

#[test]
fn spd_solve_closed_forms() {
    // A = [[4, 2], [2, 3]]: A⁻¹ = [[3, -2], [-2, 4]] / 8.
    let x = solve(
        vec![4., 2., 2., 3.],
        &[2, 2],
        vec![1., 0., 0., 1.],
        &[2, 2],
        0.0,
    );
    assert_close(&x, &[0.375, -0.25, -0.25, 0.5], 1e-6, "A⁻¹");
    let x = solve(vec![4., 2., 2., 3.], &[2, 2], vec![2., 1.], &[2, 1], 0.0);
    assert_close(&x, &[0.5, 0.0], 1e-6, "A⁻¹ b");
    // Damping: (A + I)⁻¹ = [[4, -2], [-2, 5]] / 16.
    let x = solve(
        vec![4., 2., 2., 3.],
        &[2, 2],
        vec![1., 0., 0., 1.],
        &[2, 2],
        1.0,
    );
    assert_close(&x, &[0.25, -0.125, -0.125, 0.3125], 1e-6, "(A + I)⁻¹");
    // Not SPD (A = -I, no damping): identity fallback, X = B.
    let x = solve(
        vec![-1., 0., 0., -1.],
        &[2, 2],
        vec![1.5, -2., 3., 7.],
        &[2, 2],
        0.0,
    );
    assert_eq!(x, vec![1.5, -2., 3., 7.]);
    // ... but damping that makes it SPD is honoured: (-I + 2I)⁻¹ = I.
    let x = solve(
        vec![-1., 0., 0., -1.],
        &[2, 2],
        vec![1.5, -2., 3., 7.],
        &[2, 2],
        2.0,
    );
    assert_close(&x, &[1.5, -2., 3., 7.], 1e-6, "(-I + 2I)⁻¹");
    // The fallback is per batch block.
    let x = solve(
        vec![2., 0., 0., 4., -1., 0., 0., -1.],
        &[2, 2, 2],
        vec![2., 4., 5., 6.],
        &[2, 2, 1],
        0.0,
    );
    assert_close(&x, &[1., 1., 5., 6.], 1e-6, "batched fallback");
    // Indefinite (eigenvalues 3 and -1): fallback.
    let x = solve(vec![1., 2., 2., 1.], &[2, 2], vec![1., 2.], &[2, 1], 0.0);
    assert_eq!(x, vec![1., 2.]);
}
