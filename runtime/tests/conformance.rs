//! Backend conformance: every op family and the fused forms the lowering produces (chains,
//! broadcasts in every addressing mode, row/column reductions, softmax, layer norm, GELU,
//! transposed and batched products, fused thin products, views, gathers) run on each backend
//! and are compared with the reference interpreter on seeded inputs at sizes 1, 3, 50 and 783
//! (783 and 50 leave a scalar tail after the 4-lane vector loop). Attention (head views,
//! the score ops): `conformance_attention.rs`; special values: `conformance_special.rs`.
//!
//! Tolerances: |backend − reference| ≤ tol · max(1, |reference|), with tol = 2e-6 for
//! elementwise results (the CPU backend repeats the reference's exp/erf operation for
//! operation, so it meets them exactly; CUDA may not), 2e-5 for reductions and matrix
//! products (summation order differs from the reference's).

use common::case::{Case, EW, RED, SIZES};
use lorac_compiler::ir::{BinaryOp, Op, ReduceOp, Tensor, UnaryOp};
use lorac_runtime::exec::{Backend, Program};
use rand::Rng;

mod common;

const UNARY: [(UnaryOp, f32, f32); 12] = [
    (UnaryOp::Neg, -3.0, 3.0),
    (UnaryOp::Exp, -20.0, 20.0),
    (UnaryOp::Log, 0.01, 50.0),
    (UnaryOp::Sqrt, 0.0, 50.0),
    (UnaryOp::Recip, 0.5, 4.0),
    (UnaryOp::Tanh, -5.0, 5.0),
    (UnaryOp::Erf, -4.0, 4.0),
    (UnaryOp::Abs, -3.0, 3.0),
    (UnaryOp::Sigmoid, -12.0, 12.0),
    (UnaryOp::Relu, -3.0, 3.0),
    (UnaryOp::Sin, -6.0, 6.0),
    (UnaryOp::Cos, -6.0, 6.0),
];

const BINARY: [BinaryOp; 9] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Pow,
    BinaryOp::Max,
    BinaryOp::Min,
    BinaryOp::Gt,
    BinaryOp::Eq,
];

#[test]
fn unary_ops() {
    for (u, lo, hi) in UNARY {
        for n in SIZES {
            let mut c = Case::new(n as u64);
            let x = c.input("x", &[n], lo, hi);
            let y = c.g.un(u, x).unwrap();
            c.g.set_output("y", y);
            c.check(&format!("{u:?}[{n}]"), EW);
        }
    }
}

#[test]
fn binary_ops() {
    for b in BINARY {
        for n in SIZES {
            let mut c = Case::new(7 + n as u64);
            let x = c.input("x", &[n], 0.1, 3.0);
            // Equal values for some entries so Eq and Gt see ties.
            let y = if matches!(b, BinaryOp::Eq | BinaryOp::Gt) {
                let r = c.g.scale(x, 1.0).unwrap();
                let m = c.input("m", &[n], 0.0, 1.0);
                let half = c.g.scalar(0.5).unwrap();
                let gt = c.g.bin(BinaryOp::Gt, m, half).unwrap();
                c.g.times(r, gt).unwrap()
            } else {
                c.input("y", &[n], 0.1, 3.0)
            };
            let z = c.g.bin(b, x, y).unwrap();
            c.g.set_output("z", z);
            c.check(&format!("{b:?}[{n}]"), EW);
        }
    }
}

#[test]
fn broadcast_addressing_modes() {
    for n in SIZES {
        let mut c = Case::new(100 + n as u64);
        let x = c.input("x", &[3, 5, n], -2.0, 2.0);
        let row = c.input("row", &[n], -2.0, 2.0);
        let col = c.input("col", &[3, 5, 1], -2.0, 2.0);
        let grp = c.input("grp", &[3, 1, n], -2.0, 2.0);
        let mid = c.input("mid", &[1, 5, n], -2.0, 2.0);
        let s = c.input("s", &[], -2.0, 2.0);
        let a = c.g.plus(x, row).unwrap();
        let b = c.g.times(a, col).unwrap();
        let d = c.g.minus(b, grp).unwrap();
        let e = c.g.over(d, s).unwrap();
        let f = c.g.plus(e, mid).unwrap();
        c.g.set_output("f", f);
        // A pattern no addressing mode covers (materialised on the host).
        let odd = c.input("odd", &[3, 1, 1], -2.0, 2.0);
        let h = c.g.times(x, odd).unwrap();
        c.g.set_output("h", h);
        c.check(&format!("broadcasts[{n}]"), EW);
    }
}

#[test]
fn reductions_on_every_axis() {
    for n in SIZES {
        for op in [ReduceOp::Sum, ReduceOp::Max] {
            let mut c = Case::new(200 + n as u64);
            let x = c.input("x", &[4, 3, n], -2.0, 2.0);
            let e = c.g.un(UnaryOp::Exp, x).unwrap();
            for axis in 0..3 {
                let r = c.g.add(Op::Reduce { op, axis }, &[e]).unwrap();
                c.g.set_output(&format!("r{axis}"), r);
            }
            // A 2-d column reduction with a fused producer (bias-gradient shape).
            let m = c.input("m", &[n, 6], -2.0, 2.0);
            let sq = c.g.times(m, m).unwrap();
            let r2 = c.g.add(Op::Reduce { op, axis: 0 }, &[sq]).unwrap();
            c.g.set_output("col", r2);
            c.check(&format!("{op:?}[{n}]"), RED);
        }
    }
}

#[test]
fn fused_softmax_layer_norm_gelu() {
    for n in SIZES {
        let mut c = Case::new(300 + n as u64);
        let x = c.input("x", &[7, n], -4.0, 4.0);
        let w = c.input("w", &[n], 0.5, 1.5);
        let b = c.input("b", &[n], -0.5, 0.5);
        let s = c.g.softmax(x).unwrap();
        let ln = c.g.layer_norm(x, w, b, 1e-12).unwrap();
        let ge = c.g.gelu(ln).unwrap();
        c.g.set_output("softmax", s);
        c.g.set_output("gelu_ln", ge);
        c.check(&format!("softmax/layernorm/gelu[{n}]"), RED);
    }
}

#[test]
fn matmuls_plain_transposed_batched() {
    for n in SIZES {
        let mut c = Case::new(400 + n as u64);
        let a = c.input("a", &[n, 5], -1.0, 1.0);
        let b = c.input("b", &[5, 3], -1.0, 1.0);
        let ab = c.g.matmul(a, b).unwrap();
        let bt_src = c.input("bt", &[3, 5], -1.0, 1.0);
        let bt = c.g.t(bt_src).unwrap();
        let abt = c.g.matmul(a, bt).unwrap();
        let at_src = c.input("at", &[5, n], -1.0, 1.0);
        let at = c.g.t(at_src).unwrap();
        let atb = c.g.matmul(at, b).unwrap();
        let q = c.input("q", &[2, 3, n, 4], -1.0, 1.0);
        let k = c.input("k", &[2, 3, n, 4], -1.0, 1.0);
        let kt = c.g.t(k).unwrap();
        let s = c.g.matmul(q, kt).unwrap();
        for (name, v) in [("ab", ab), ("abt", abt), ("atb", atb), ("qkt", s)] {
            c.g.set_output(name, v);
        }
        c.check(&format!("matmul[{n}]"), RED);
    }
}

/// Permutes large enough to be split across threads (attention's key transpose).
#[test]
fn large_permutes() {
    let mut c = Case::new(460);
    let x = c.input("x", &[3, 200, 5, 40], -1.0, 1.0);
    for (i, perm) in [[0, 2, 3, 1], [0, 2, 1, 3], [3, 1, 0, 2]]
        .iter()
        .enumerate()
    {
        let p = c.g.permute(x, perm).unwrap();
        c.g.set_output(&format!("p{i}"), p);
    }
    c.check("large permutes", 0.0);
}

#[test]
fn views_and_gathers() {
    for n in SIZES {
        let mut c = Case::new(500 + n as u64);
        let x = c.input("x", &[2, n, 3], -1.0, 1.0);
        let p = c.g.permute(x, &[2, 0, 1]).unwrap();
        let r = c.g.reshape(p, &[6, n]).unwrap();
        let sl = c.g.slice(r, 0, 1, 4).unwrap();
        let y = c.input("y", &[2, n, 2], -1.0, 1.0);
        let cat = c.g.concat(&[x, y], 2).unwrap();
        let table = c.input("table", &[11, n], -1.0, 1.0);
        let idx = c.ids("idx", &[4, 2], 11);
        let gat = c.g.add(Op::Gather, &[table, idx]).unwrap();
        let oh = c.g.add(Op::OneHot { depth: 11 }, &[idx]).unwrap();
        let top = c.g.add(Op::TopKMask { k: 1.min(n) }, &[r]).unwrap();
        for (name, v) in [
            ("permute", p),
            ("slice", sl),
            ("concat", cat),
            ("gather", gat),
            ("one_hot", oh),
            ("topk", top),
        ] {
            c.g.set_output(name, v);
        }
        c.check(&format!("views[{n}]"), EW);
    }
}

#[test]
fn shared_values_and_chains() {
    for n in SIZES {
        let mut c = Case::new(600 + n as u64);
        let x = c.input("x", &[5, n], -2.0, 2.0);
        let sq = c.g.times(x, x).unwrap();
        let ex = c.g.un(UnaryOp::Exp, sq).unwrap();
        let s = c.g.plus(sq, ex).unwrap();
        let t = c.g.un(UnaryOp::Sigmoid, s).unwrap();
        let u = c.g.times(t, sq).unwrap();
        c.g.set_output("u", u);
        c.g.set_output("sq", sq);
        c.check(&format!("chains[{n}]"), EW);
    }
}

/// The default CPU mode is bit-identical to the reference on the transcendental ops training
/// uses most (softmax's exp, GELU's erf, sigmoid), over 10⁵ points spanning their range.
#[test]
fn default_math_is_bit_identical_on_exp_erf_sigmoid() {
    for u in [UnaryOp::Exp, UnaryOp::Erf, UnaryOp::Sigmoid] {
        let n = 100_003;
        let mut c = Case::new(9);
        let x = c.input("x", &[n], -20.0, 20.0);
        let y = c.g.un(u, x).unwrap();
        c.g.set_output("y", y);
        let (want, got) = c.reference_and_cpu();
        let differ = want["y"]
            .f()
            .iter()
            .zip(got["y"].f())
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "{u:?}: {differ} of {n} values differ from the reference"
        );
    }
}

/// Sums follow the reference's definition (`sum_f64`: four f64 partials, combined pairwise,
/// then the tail in order) bit for bit, on every lowering: fused row sums, plain row sums,
/// column sums with a producer fused in. The values mix ±1e20 with ±1, so any other grouping
/// or order of the additions changes the f32 result.
#[test]
fn sums_are_bit_identical_to_the_reference() {
    for n in SIZES.into_iter().chain([4, 5, 6, 7, 8]) {
        let mut c = Case::new(70 + n as u64);
        let mixed = |c: &mut Case, name: &str, shape: &[usize]| {
            let id = c.input(name, shape, 0.0, 1.0);
            let len: usize = shape.iter().product();
            let v: Vec<f32> = (0..len)
                .map(|_| {
                    let sign = if c.rng.random_bool(0.5) { 1.0 } else { -1.0 };
                    sign * [1e20, 1.0, 3.0][c.rng.random_range(0..3)]
                })
                .collect();
            c.inputs.insert(name.into(), Tensor::f32(shape.to_vec(), v));
            id
        };
        let x = mixed(&mut c, "x", &[5, n]);
        let y = mixed(&mut c, "y", &[5, n]);
        let xy = c.g.times(x, y).unwrap();
        let fused = c.g.sum(xy, 1).unwrap();
        let plain = c.g.sum(x, 1).unwrap();
        let m = mixed(&mut c, "m", &[n, 6]);
        let m2 = c.g.plus(m, m).unwrap();
        let col = c.g.sum(m2, 0).unwrap();
        for (name, v) in [("fused", fused), ("plain", plain), ("col", col)] {
            c.g.set_output(name, v);
        }
        let (want, got) = c.reference_and_cpu();
        for name in ["fused", "plain", "col"] {
            let bits = |t: &Tensor| t.f().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got[name]), bits(&want[name]), "{name}[{n}]");
        }
    }
}

/// The executor allocates exactly the planned peak, once.
#[test]
fn the_arena_is_the_planned_peak() {
    let mut c = Case::new(11);
    let x = c.input("x", &[33, 50], -1.0, 1.0);
    let w = c.input("w", &[50], 0.5, 1.5);
    let b = c.input("b", &[50], -0.5, 0.5);
    let y = c.g.layer_norm(x, w, b, 1e-5).unwrap();
    let z = c.g.softmax(y).unwrap();
    c.g.set_output("z", z);
    let p = Program::new(&c.g, Backend::Cpu).unwrap();
    let Program::Cpu(cpu) = &p else {
        panic!("expected a CPU program")
    };
    assert!(cpu.mem.peak > 0);
    assert_eq!(cpu.arena_len_bytes(), cpu.mem.peak);
    c.check("arena", RED);
}

#[test]
fn dropout_masks_match() {
    for n in SIZES {
        let mut c = Case::new(700 + n as u64);
        let x = c.input("x", &[3, n], -1.0, 1.0);
        let s = c.ids("seed", &[1], 1 << 40);
        let y = c.g.add(Op::Dropout { p: 0.3, salt: 17 }, &[x, s]).unwrap();
        let z = c.g.un(UnaryOp::Exp, y).unwrap();
        c.g.set_output("z", z);
        c.check(&format!("dropout[{n}]"), EW);
    }
}

/// Routed experts (top-k sparse dispatch): the projection on each row's selected experts and
/// its two gradients equal the reference bit for bit on the CPU (they share the definition's
/// chains), and an independent f64 oracle within 1e-5 (masks from the dropout stream of
/// each expert, products in f64).
#[test]
fn routed_ops_match() {
    use lorac_compiler::ir::ops::random::factor;
    for n in SIZES {
        for (k, d) in [(1, 1), (2, 1), (3, 2)] {
            // More than two blocks of `RoutedOuter`'s rows (256), the last one partial.
            let (rows, e, p) = (531, 8, 0.25);
            let q = e * d;
            let mut c = Case::new(900 + n as u64 + 10 * k as u64 + d as u64);
            let x = c.input("x", &[rows, n], -1.0, 1.0);
            let a = c.input("a", &[q, n], -1.0, 1.0);
            let gr = c.input("g", &[rows, q], -1.0, 1.0);
            // Zero entries in the upstream gradient (skipped by RoutedExpand's chains).
            let mut gv = c.inputs["g"].f().to_vec();
            gv.iter_mut().step_by(3).for_each(|x| *x = 0.0);
            c.inputs.insert("g".into(), Tensor::f32(vec![rows, q], gv));
            let logits = c.input("logits", &[rows, e], -2.0, 2.0);
            let mask = c.g.add(Op::TopKMask { k }, &[logits]).unwrap();
            let s = c.ids("seed", &[1], 1 << 40);
            let salts: Vec<u64> = (0..e as u64).map(|i| 0x51ed + 3 * i).collect();
            let keep = Op::RoutedKeep {
                p,
                salts: salts.clone(),
                k,
                n,
            };
            let keep = c.g.add(keep, &[mask, s]).unwrap();
            let proj = c.g.add(Op::RoutedProject { p, k }, &[x, a, mask, keep]);
            let exp = c.g.add(Op::RoutedExpand { p, k }, &[gr, a, mask, keep]);
            let out = c.g.add(Op::RoutedOuter { p, k }, &[gr, x, mask, keep]);
            c.g.set_output("project", proj.unwrap());
            c.g.set_output("expand", exp.unwrap());
            c.g.set_output("outer", out.unwrap());
            c.g.set_output("mask", mask);
            c.g.set_output("keep", keep);
            c.check(&format!("routed[n={n}, k={k}, d={d}]"), 0.0);

            // The oracle.
            let got = c.run_on(Backend::Cpu);
            let m = got["mask"].f();
            let (xv, av, gv) = (c.inputs["x"].f(), c.inputs["a"].f(), c.inputs["g"].f());
            let seed = c.inputs["seed"].i()[0] as u64;
            let mut want_p = vec![0f64; rows * q];
            let mut want_e = vec![0f64; rows * n];
            let mut want_o = vec![0f64; q * n];
            for r in 0..rows {
                let chosen: Vec<usize> = (0..e).filter(|&x| m[r * e + x] != 0.0).collect();
                assert_eq!(chosen.len(), k, "top-{k} of distinct logits");
                for &ex in &chosen {
                    for j in 0..n {
                        let f = factor(seed, salts[ex], (r * n + j) as u64, p) as f64;
                        let xd = xv[r * n + j] as f64 * f;
                        for cc in ex * d..(ex + 1) * d {
                            want_p[r * q + cc] += xd * av[cc * n + j] as f64;
                            want_e[r * n + j] += gv[r * q + cc] as f64 * av[cc * n + j] as f64 * f;
                            want_o[cc * n + j] += gv[r * q + cc] as f64 * xd;
                        }
                    }
                }
            }
            for (name, want) in [("project", want_p), ("expand", want_e), ("outer", want_o)] {
                let scale = want.iter().fold(1f64, |s, v| s.max(v.abs()));
                for (i, (w, v)) in want.iter().zip(got[name].f()).enumerate() {
                    assert!(
                        (w - *v as f64).abs() <= 1e-5 * scale,
                        "{name}[{i}] n={n} k={k} d={d}: {v} vs oracle {w}"
                    );
                }
            }
        }
    }
}

/// Products with a thin inner dimension (a LoRA rank) read by one elementwise op are computed
/// inside that op's kernel (`Inst::Dot`): plain, with a transposed right factor, through a
/// reshape, inside a row sum, and (read twice, so stored) as a plain product. All equal the
/// reference bit for bit (both follow `ir::ops::thin`'s chain), and an f64 oracle within
/// 1e-6 of the terms' magnitude.
#[test]
fn fused_thin_products_match() {
    use lorac_compiler::lower::kernel::Inst;
    for n in SIZES {
        for k in [1, 2, 3, 8, 16] {
            let rows = 37;
            let mut c = Case::new(1300 + n as u64 * 17 + k as u64);
            let x = c.input("x", &[rows, k], -1.0, 1.0);
            let b = c.input("b", &[k, n], -1.0, 1.0);
            let bt_src = c.input("bt", &[n, k], -1.0, 1.0);
            let base = c.input("base", &[rows, n], -1.0, 1.0);
            // base + 3·(x b)
            let xb = c.g.matmul(x, b).unwrap();
            let s = c.g.scale(xb, 3.0).unwrap();
            let plain = c.g.plus(base, s).unwrap();
            // exp(x btᵀ)
            let bt = c.g.t(bt_src).unwrap();
            let xbt = c.g.matmul(x, bt).unwrap();
            let trans = c.g.un(UnaryOp::Exp, xbt).unwrap();
            // [rows, n] → [1, rows, n] through a reshape, added to a reshaped base.
            let xb2 = c.g.matmul(x, b).unwrap();
            let r3 = c.g.reshape(xb2, &[1, rows, n]).unwrap();
            let base3 = c.g.reshape(base, &[1, rows, n]).unwrap();
            let reshaped = c.g.times(r3, base3).unwrap();
            // Σ_j (x b + base) inside a row sum.
            let xb3 = c.g.matmul(x, b).unwrap();
            let t = c.g.plus(xb3, base).unwrap();
            let summed = c.g.sum(t, 1).unwrap();
            // Read twice: stored as a product.
            let xb4 = c.g.matmul(x, b).unwrap();
            let twice = c.g.times(xb4, xb4).unwrap();
            let outs = [
                ("plain", plain),
                ("trans", trans),
                ("reshaped", reshaped),
                ("summed", summed),
                ("twice", twice),
            ];
            for (name, v) in outs {
                c.g.set_output(name, v);
            }
            // CSE is not run here, so every product above is its own node.
            let plan = lorac_compiler::lower::plan::lower(&c.g).unwrap();
            let dots = plan
                .kernels
                .iter()
                .filter(|kk| kk.body.iter().any(|i| matches!(i, Inst::Dot(..))))
                .count();
            assert_eq!(dots, 4, "fused products (n={n}, k={k})");
            c.check(&format!("dot[n={n}, k={k}]"), 0.0);

            let got = c.run_on(Backend::Cpu);
            let bits = |t: &Tensor| t.f().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let want = c.run_on(Backend::Reference);
            for (name, _) in outs {
                assert_eq!(bits(&got[name]), bits(&want[name]), "{name} n={n} k={k}");
            }
            // The oracle for the plain form.
            let (xv, bv, basev) = (c.inputs["x"].f(), c.inputs["b"].f(), c.inputs["base"].f());
            for r in 0..rows {
                for j in 0..n {
                    let (mut w, mut mag) = (0f64, 0f64);
                    for p in 0..k {
                        let t = xv[r * k + p] as f64 * bv[p * n + j] as f64;
                        w += t;
                        mag += t.abs();
                    }
                    let want = basev[r * n + j] as f64 + 3.0 * w;
                    let v = got["plain"].f()[r * n + j] as f64;
                    assert!(
                        (v - want).abs() <= 1e-6 * (1.0 + 3.0 * mag),
                        "plain[{r},{j}] n={n} k={k}: {v} vs oracle {want}"
                    );
                }
            }
        }
    }
}

/// Routed ops on masks the router does not make: rows selecting no expert, fewer than k, or
/// more than k (only the first k count), and NaN and infinite inputs, at every size. CPU and
/// reference must agree bit for bit (NaN meets NaN), and a row selecting nothing projects to
/// exactly zero.
#[test]
fn routed_ops_on_short_rows_and_non_finite_inputs() {
    for n in SIZES {
        // Five of `RoutedOuter`'s 256-row blocks: more than one wave on two threads.
        let (rows, e, d, k, p) = (1100, 4, 2, 2, 0.2);
        let q = e * d;
        let mut c = Case::new(1700 + n as u64);
        let x = c.input("x", &[rows, n], -1.0, 1.0);
        let a = c.input("a", &[q, n], -1.0, 1.0);
        let gr = c.input("g", &[rows, q], -1.0, 1.0);
        let m = c.input("mask", &[rows, e], 0.0, 1.0);
        // Row r selects the experts of the bits of r mod 16: 0 to 4 of them.
        let mv: Vec<f32> = (0..rows * e)
            .map(|i| ((((i / e) % 16) >> (i % e)) & 1) as f32)
            .collect();
        c.inputs
            .insert("mask".into(), Tensor::f32(vec![rows, e], mv));
        let mut xv = c.inputs["x"].f().to_vec();
        for (i, v) in xv.iter_mut().enumerate().step_by(37) {
            *v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3];
        }
        c.inputs.insert("x".into(), Tensor::f32(vec![rows, n], xv));
        let s = c.ids("seed", &[1], 1 << 40);
        let salts: Vec<u64> = (0..e as u64).map(|i| 0x7a11 + i).collect();
        let keep = c.g.add(Op::RoutedKeep { p, salts, k, n }, &[m, s]).unwrap();
        let proj =
            c.g.add(Op::RoutedProject { p, k }, &[x, a, m, keep])
                .unwrap();
        let exp =
            c.g.add(Op::RoutedExpand { p, k }, &[gr, a, m, keep])
                .unwrap();
        let out =
            c.g.add(Op::RoutedOuter { p, k }, &[gr, x, m, keep])
                .unwrap();
        c.g.set_output("project", proj);
        c.g.set_output("expand", exp);
        c.g.set_output("outer", out);
        let (want, got) = c.reference_and_cpu();
        // Any NaN meets any NaN (payloads may differ); everything else bit for bit.
        let bits = |t: &Tensor| {
            t.f()
                .iter()
                .map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() })
                .collect::<Vec<_>>()
        };
        for name in ["project", "expand", "outer"] {
            assert_eq!(bits(&got[name]), bits(&want[name]), "{name} n={n}");
        }
        // Rows 0, 16, 32, … select nothing.
        for r in (0..rows).step_by(16) {
            let row = &got["project"].f()[r * q..(r + 1) * q];
            assert!(row.iter().all(|&v| v == 0.0), "row {r} n={n}: {row:?}");
        }
    }
}

/// Stored readers of a map's result computed by the same kernel as extra outputs (GELU's
/// `erf(h/√2) + 1` and `0.5·h·(…)`, both kept for a later reader, through a reshape): one
/// kernel writes all three, and every output equals the reference bit for bit.
#[test]
fn sibling_outputs_match() {
    for n in SIZES {
        let mut c = Case::new(1900 + n as u64);
        let x = c.input("x", &[6, n], -3.0, 3.0);
        let y = c.input("y", &[6, n], -3.0, 3.0);
        let h2 = c.g.plus(x, y).unwrap();
        let h = c.g.reshape(h2, &[2, 3, n]).unwrap();
        let hs = c.g.scale(h, std::f32::consts::FRAC_1_SQRT_2).unwrap();
        let e = c.g.un(UnaryOp::Erf, hs).unwrap();
        let one = c.g.fill(&[2, 3, n], 1.0).unwrap();
        let cdf = c.g.plus(e, one).unwrap();
        let half = c.g.scale(h, 0.5).unwrap();
        let gelu = c.g.times(half, cdf).unwrap();
        // Later readers of each, so all three are stored.
        let r1 = c.g.un(UnaryOp::Exp, h).unwrap();
        let r2 = c.g.times(cdf, h).unwrap();
        let r3 = c.g.sum(gelu, 2).unwrap();
        for (name, v) in [("r1", r1), ("r2", r2), ("r3", r3), ("gelu", gelu)] {
            c.g.set_output(name, v);
        }
        let plan = lorac_compiler::lower::plan::lower(&c.g).unwrap();
        assert!(
            plan.kernels.iter().any(|k| k.outputs.len() >= 3),
            "h, erf(h/√2)+1 and the GELU come out of one kernel (n={n})"
        );
        let (want, got) = c.reference_and_cpu();
        let bits = |t: &Tensor| t.f().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for name in ["r1", "r2", "r3", "gelu"] {
            assert_eq!(bits(&got[name]), bits(&want[name]), "{name} n={n}");
        }
    }
}
