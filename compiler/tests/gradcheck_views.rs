//! Finite-difference checks of the view ops (reshape, permute, broadcast, slice, concat) and the
//! indexing ops (gather, scatter-add, one-hot, top-k masks), with their out-of-range semantics.
//! The harness and its tolerances: `common/gradcheck.rs`.

mod common;

use common::gradcheck::*;

// ---------------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------------

#[test]
fn reshape() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[2, 6]),
        (&[1, 3], &[3]),
        (&[3, 50], &[50, 3]),
        (&[50, 1], &[2, 5, 5]),
        (&[1], &[]),
    ];
    for (ci, &(s, t)) in cases.iter().enumerate() {
        let seed = 6000 + ci as u64;
        let vals = Rng::new(seed).vec(numel(s), -1.0, 1.0);
        check(
            &format!("reshape {s:?}->{t:?}"),
            seed,
            FD,
            vec![p(s, vals)],
            |g, ps, _| g.add(Op::Reshape { shape: t.to_vec() }, &[ps[0]]).unwrap(),
        );
    }
}

#[test]
fn permute_all_3d_perms() {
    let perms: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for (si, shape) in [[2usize, 3, 4], [1, 3, 50]].iter().enumerate() {
        for (pi, perm) in perms.iter().enumerate() {
            let seed = 7000 + (si * 10 + pi) as u64;
            let vals = Rng::new(seed).vec(numel(shape), -1.0, 1.0);
            check(
                &format!("permute {shape:?} {perm:?}"),
                seed,
                FD,
                vec![p(shape, vals)],
                |g, ps, _| {
                    g.add(
                        Op::Permute {
                            perm: perm.to_vec(),
                        },
                        &[ps[0]],
                    )
                    .unwrap()
                },
            );
        }
    }
    // 2-D and 4-D too.
    let vals = Rng::new(7100).vec(6, -1.0, 1.0);
    check(
        "permute [2,3] [1,0]",
        7100,
        FD,
        vec![p(&[2, 3], vals)],
        |g, ps, _| g.add(Op::Permute { perm: vec![1, 0] }, &[ps[0]]).unwrap(),
    );
    let vals = Rng::new(7101).vec(120, -1.0, 1.0);
    check(
        "permute [2,3,4,5] [3,1,0,2]",
        7101,
        FD,
        vec![p(&[2, 3, 4, 5], vals)],
        |g, ps, _| {
            g.add(
                Op::Permute {
                    perm: vec![3, 1, 0, 2],
                },
                &[ps[0]],
            )
            .unwrap()
        },
    );
}

#[test]
fn broadcast() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 1], &[2, 3, 4]),
        (&[1], &[3, 50]),
        (&[50, 1], &[50, 3]),
        (&[], &[2, 3]),
        (&[1, 3], &[1, 3]),
        (&[2, 1, 3], &[2, 5, 3]),
        (&[3], &[50, 3]),
    ];
    for (ci, &(s, t)) in cases.iter().enumerate() {
        let seed = 8000 + ci as u64;
        let vals = Rng::new(seed).vec(numel(s), -1.0, 1.0);
        check(
            &format!("broadcast {s:?}->{t:?}"),
            seed,
            FD,
            vec![p(s, vals)],
            |g, ps, _| {
                g.add(Op::Broadcast { shape: t.to_vec() }, &[ps[0]])
                    .unwrap()
            },
        );
    }
}

#[test]
fn slice_each_axis() {
    let shape = [3usize, 4, 5];
    let cases: &[(usize, usize, usize)] = &[
        (0, 0, 1),
        (0, 1, 2),
        (0, 2, 3),
        (0, 0, 3),
        (1, 0, 2),
        (1, 1, 3),
        (1, 2, 4),
        (2, 0, 1),
        (2, 2, 4),
        (2, 4, 5),
        (2, 1, 5),
    ];
    for (ci, &(axis, start, end)) in cases.iter().enumerate() {
        let seed = 9000 + ci as u64;
        let vals = Rng::new(seed).vec(numel(&shape), -1.0, 1.0);
        check(
            &format!("slice {shape:?} axis {axis} {start}..{end}"),
            seed,
            FD,
            vec![p(&shape, vals)],
            |g, ps, _| g.add(Op::Slice { axis, start, end }, &[ps[0]]).unwrap(),
        );
    }
    let vals = Rng::new(9100).vec(50, -1.0, 1.0);
    check(
        "slice [50,1] 10..37",
        9100,
        FD,
        vec![p(&[50, 1], vals.clone())],
        |g, ps, _| {
            g.add(
                Op::Slice {
                    axis: 0,
                    start: 10,
                    end: 37,
                },
                &[ps[0]],
            )
            .unwrap()
        },
    );
    check(
        "slice [1,50] axis 1 49..50",
        9101,
        FD,
        vec![p(&[1, 50], vals)],
        |g, ps, _| {
            g.add(
                Op::Slice {
                    axis: 1,
                    start: 49,
                    end: 50,
                },
                &[ps[0]],
            )
            .unwrap()
        },
    );
}

#[test]
fn concat_two_and_three_operands() {
    let cases: &[(&[&[usize]], usize)] = &[
        (&[&[2, 3], &[2, 1]], 1),
        (&[&[1, 3], &[3, 3], &[50, 3]], 0),
        (&[&[2, 3, 4], &[2, 1, 4], &[2, 2, 4]], 1),
        (&[&[2, 3, 1], &[2, 3, 4]], 2),
        (&[&[3], &[3]], 0),
        (&[&[2, 3], &[2, 3], &[2, 3]], 1),
    ];
    for (ci, &(shapes, axis)) in cases.iter().enumerate() {
        let seed = 10000 + ci as u64;
        let mut rng = Rng::new(seed);
        let params = shapes
            .iter()
            .map(|s| p(s, rng.vec(numel(s), -1.0, 1.0)))
            .collect();
        check(
            &format!("concat {shapes:?} axis {axis}"),
            seed,
            FD,
            params,
            |g, ps, _| g.add(Op::Concat { axis }, ps).unwrap(),
        );
    }
    // The same operand twice.
    let vals = Rng::new(10100).vec(6, -1.0, 1.0);
    check(
        "concat [x, x]",
        10100,
        FD,
        vec![p(&[2, 3], vals)],
        |g, ps, _| g.add(Op::Concat { axis: 0 }, &[ps[0], ps[0]]).unwrap(),
    );
}

// ---------------------------------------------------------------------------------------------
// Indexing
// ---------------------------------------------------------------------------------------------

#[test]
fn gather_wrt_table() {
    // (table shape, index shape, indices) — indices repeat, some rows are never used.
    let cases: &[(&[usize], &[usize], &[i64])] = &[
        (&[5, 3], &[2, 4], &[0, 2, 2, 4, 0, 1, 4, 4]),
        (&[50, 1], &[7], &[49, 0, 7, 7, 7, 12, 49]),
        (&[3], &[4], &[2, 2, 0, 1]),
        (&[4, 2, 3], &[3], &[3, 3, 1]),
        (&[1, 3], &[1, 2], &[0, 0]),
        (&[6, 2], &[], &[5]),
    ];
    for (ci, &(ts, is, idx)) in cases.iter().enumerate() {
        let seed = 11000 + ci as u64;
        let vals = Rng::new(seed).vec(numel(ts), -1.0, 1.0);
        check(
            &format!("gather {ts:?} by {is:?}"),
            seed,
            FD,
            vec![p(ts, vals)],
            |g, ps, extra| {
                let i = data_i64(g, "idx", is);
                extra.insert("idx".into(), Tensor::i64(is.to_vec(), idx.to_vec()));
                g.add(Op::Gather, &[ps[0], i]).unwrap()
            },
        );
    }
}

#[test]
fn scatter_add_wrt_src() {
    // (src shape, index shape, indices, rows)
    type Case<'a> = (&'a [usize], &'a [usize], &'a [i64], usize);
    let cases: &[Case] = &[
        (&[6, 3], &[6], &[0, 2, 2, 0, 3, 2], 5),
        (&[2, 3, 2], &[2, 3], &[4, 0, 0, 1, 4, 4], 5),
        (&[7], &[7], &[0, 0, 0, 1, 1, 2, 0], 3),
        (&[50, 1], &[50], &[3; 50], 4),
    ];
    for (ci, &(ss, is, idx, rows)) in cases.iter().enumerate() {
        let seed = 12000 + ci as u64;
        let vals = Rng::new(seed).vec(numel(ss), -1.0, 1.0);
        check(
            &format!("scatter_add {ss:?} by {is:?} into {rows}"),
            seed,
            FD,
            vec![p(ss, vals)],
            |g, ps, extra| {
                let i = data_i64(g, "idx", is);
                extra.insert("idx".into(), Tensor::i64(is.to_vec(), idx.to_vec()));
                g.add(Op::ScatterAdd { rows }, &[ps[0], i]).unwrap()
            },
        );
    }
}

#[test]
fn gather_and_one_hot_out_of_range() {
    let mut g = Graph::new();
    let t = data(&mut g, "t", &[3, 2]);
    let i = data_i64(&mut g, "i", &[2]);
    let y = g.add(Op::Gather, &[t, i]).unwrap();
    g.set_output("y", y);
    let tv = Tensor::f32(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]);
    let run_with = |idx: Vec<i64>| {
        let mut inp = HashMap::new();
        inp.insert("t".to_string(), tv.clone());
        inp.insert("i".to_string(), Tensor::i64(vec![2], idx));
        run(&g, &inp).map(|v| v[&y].f().to_vec())
    };
    assert_eq!(run_with(vec![2, 0]).unwrap(), vec![5., 6., 1., 2.]);
    assert!(
        run_with(vec![0, 3]).is_err(),
        "gather past the end must fail"
    );
    assert!(
        run_with(vec![-1, 0]).is_err(),
        "gather of a negative index must fail (no wrap-around)"
    );

    // Scatter-add errors the same way.
    let mut g = Graph::new();
    let s = data(&mut g, "s", &[2, 2]);
    let i = data_i64(&mut g, "i", &[2]);
    let y = g.add(Op::ScatterAdd { rows: 3 }, &[s, i]).unwrap();
    g.set_output("y", y);
    let mut inp = HashMap::new();
    inp.insert(
        "s".to_string(),
        Tensor::f32(vec![2, 2], vec![1., 2., 3., 4.]),
    );
    inp.insert("i".to_string(), Tensor::i64(vec![2], vec![2, 2]));
    assert_eq!(run(&g, &inp).unwrap()[&y].f(), &[0., 0., 0., 0., 4., 6.]);
    inp.insert("i".to_string(), Tensor::i64(vec![2], vec![0, 3]));
    assert!(run(&g, &inp).is_err());

    // One-hot: negative (ignore-index) and too-large indices give all-zero rows.
    let mut g = Graph::new();
    let i = data_i64(&mut g, "i", &[4]);
    let y = g.add(Op::OneHot { depth: 3 }, &[i]).unwrap();
    let mut inp = HashMap::new();
    inp.insert("i".to_string(), Tensor::i64(vec![4], vec![-100, 2, 0, 3]));
    let v = run(&g, &inp).unwrap();
    assert_eq!(v[&y].shape, vec![4, 3]);
    assert_eq!(v[&y].f(), &[0., 0., 0., 0., 0., 1., 1., 0., 0., 0., 0., 0.]);
}

fn topk(x: Vec<f32>, shape: &[usize], k: usize) -> Vec<f32> {
    let mut g = Graph::new();
    let xn = data(&mut g, "x", shape);
    let y = g.add(Op::TopKMask { k }, &[xn]).unwrap();
    let mut inp = HashMap::new();
    inp.insert("x".to_string(), Tensor::f32(shape.to_vec(), x));
    run(&g, &inp).unwrap()[&y].f().to_vec()
}

#[test]
fn topk_mask_semantics_and_ties() {
    assert_eq!(
        topk(vec![0.1, 0.7, 0.2, 0.5], &[4], 2),
        vec![0., 1., 0., 1.]
    );
    // Ties go to the lower index.
    assert_eq!(topk(vec![1., 2., 2., 0.], &[4], 1), vec![0., 1., 0., 0.]);
    assert_eq!(topk(vec![3., 3., 3.], &[3], 1), vec![1., 0., 0.]);
    assert_eq!(topk(vec![3., 3., 3.], &[3], 2), vec![1., 1., 0.]);
    assert_eq!(topk(vec![5., 1., 1., 1.], &[4], 2), vec![1., 1., 0., 0.]);
    assert_eq!(
        topk(vec![0., 7., 0., 7., 7.], &[5], 2),
        vec![0., 1., 0., 1., 0.]
    );
    // Per row of the last axis; k = n selects everything.
    assert_eq!(
        topk(vec![1., 2., 4., 3., 0., 0.], &[3, 2], 1),
        vec![0., 1., 1., 0., 1., 0.]
    );
    assert_eq!(topk(vec![1., -2., 4.], &[1, 3], 3), vec![1., 1., 1.]);
    // -0.0 and 0.0 compare equal: a tie, lower index wins.
    assert_eq!(topk(vec![-0.0, 0.0, -1.0], &[3], 1), vec![1., 0., 0.]);
}

#[test]
fn topk_mask_with_nan_rows_does_not_panic() {
    // Long rows (beyond insertion-sort sizes) with NaNs: the sort must not see an
    // inconsistent order (Rust's sort may panic on one). Exactly k entries are selected.
    let mut rng = Rng::new(13000);
    for n in [3usize, 21, 50, 200] {
        for k in [1, n / 2, n] {
            let k = k.max(1);
            let mut x = rng.vec(n, -1.0, 1.0);
            for v in x.iter_mut() {
                if rng.unit() < 0.3 {
                    *v = f32::NAN;
                }
            }
            let m = topk(x.clone(), &[n], k);
            assert_eq!(m.iter().filter(|&&v| v == 1.0).count(), k, "n={n} k={k}");
            // Every selected finite value beats every unselected finite value.
            let sel_min = (0..n)
                .filter(|&j| m[j] == 1.0 && !x[j].is_nan())
                .map(|j| x[j])
                .fold(f32::INFINITY, f32::min);
            let rest_max = (0..n)
                .filter(|&j| m[j] == 0.0 && !x[j].is_nan())
                .map(|j| x[j])
                .fold(f32::NEG_INFINITY, f32::max);
            assert!(
                sel_min >= rest_max,
                "n={n} k={k}: selected {sel_min} < unselected {rest_max}"
            );
        }
    }
}
