//! Attention's score ops (`ir/ops/attention.rs`): `AttnProbs` equals the primitive graph it
//! replaces (product, scale, broadcast mask, softmax) bit for bit in the reference
//! interpreter; its vector-Jacobian product (`AttnGrad` and two products) agrees with central
//! differences and with the primitive graph's gradient; bad shapes are errors.
//! The harness and its tolerances: `common/gradcheck.rs`.

mod common;

use common::gradcheck::*;
use lorac_compiler::ir::interp::run;
use lorac_compiler::ir::{Graph, InputKind, Op, Tensor};
use lorac_compiler::passes::autodiff::grad;
use std::collections::HashMap;

/// One case's operand shapes: queries `[b, h, m, d]`, keys `[b, h, n, d]`, the mask and
/// the scores `[b, h, m, n]`.
struct Shapes {
    q: [usize; 4],
    k: [usize; 4],
    mask: [usize; 4],
    scores: [usize; 4],
}

/// Cases: BERT's `[b, 1, 1, n]` padding mask, a causal `[1, 1, m, n]` and `[b, 1, m, n]`
/// mask, a full one, one query row (a first-only last layer), and sizes 1, 3, 50.
fn cases() -> Vec<Shapes> {
    [
        ([2, 3], 4, 5, 3, [2, 1, 1, 5]),
        ([2, 3], 5, 5, 4, [1, 1, 5, 5]),
        ([1, 2], 3, 3, 2, [1, 2, 3, 3]),
        ([2, 1], 1, 7, 3, [2, 1, 1, 7]),
        ([1, 1], 1, 1, 1, [1, 1, 1, 1]),
        ([1, 2], 50, 50, 5, [1, 1, 50, 50]),
        ([2, 2], 3, 50, 8, [2, 1, 3, 50]),
    ]
    .into_iter()
    .map(|(bd, m, n, d, mask)| Shapes {
        q: [bd[0], bd[1], m, d],
        k: [bd[0], bd[1], n, d],
        mask,
        scores: [bd[0], bd[1], m, n],
    })
    .collect()
}

/// An input tensor of `shape`, uniform in `lo..hi`.
fn uniform(rng: &mut Rng, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    Tensor::f32(shape.to_vec(), rng.vec(numel(shape), lo, hi))
}

/// A mask in the models' style: mostly 0, some entries `f32::MIN` (padded or future keys),
/// never a whole row masked.
fn masks(rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape[3];
    let v = (0..numel(shape))
        .map(|i| {
            if i % n != 0 && rng.below(4) == 0 {
                f32::MIN
            } else {
                rng.uniform(-1.0, 1.0)
            }
        })
        .collect();
    Tensor::f32(shape.to_vec(), v)
}

#[test]
fn attn_probs_is_its_primitive_graph_bit_for_bit() {
    // Plus BERT's head shape, where gemm reads `kᵀ` in place (`linalg::gemm_bt`) while the
    // primitive graph multiplies a row-major copy.
    let bert = Shapes {
        q: [2, 3, 128, 32],
        k: [2, 3, 128, 32],
        mask: [2, 1, 1, 128],
        scores: [2, 3, 128, 128],
    };
    for (ci, c) in cases().iter().chain([&bert]).enumerate() {
        let mut rng = Rng::new(9100 + ci as u64);
        let mut g = Graph::new();
        let q = data(&mut g, "q", &c.q);
        let k = data(&mut g, "k", &c.k);
        let mask = data(&mut g, "mask", &c.mask);
        let scale = 1.0 / (c.q[3] as f32).sqrt();
        let fused = g.attn_probs(q, k, mask, scale).unwrap();
        let prim = g.attn_probs_decomposed(q, k, mask, scale).unwrap();
        let inputs = HashMap::from([
            ("q".to_string(), uniform(&mut rng, &c.q, -3.0, 3.0)),
            ("k".to_string(), uniform(&mut rng, &c.k, -3.0, 3.0)),
            ("mask".to_string(), masks(&mut rng, &c.mask)),
        ]);
        let v = run(&g, &inputs).unwrap();
        let (a, b) = (v[&fused].f(), v[&prim].f());
        assert_eq!(v[&fused].shape, v[&prim].shape, "case {ci}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(x.to_bits(), y.to_bits(), "case {ci} [{i}]: {x} vs {y}");
        }
        // Rows are distributions: the oracle is not trivially zero.
        assert!(a.iter().all(|p| (0.0..=1.0).contains(p)), "case {ci}");
    }
}

#[test]
fn attn_probs_gradients_match_finite_differences() {
    for (ci, c) in cases().iter().enumerate().take(5) {
        let seed = 9200 + ci as u64 * 10;
        let mut rng = Rng::new(seed);
        let (q, k) = (
            rng.vec(numel(&c.q), -1.5, 1.5),
            rng.vec(numel(&c.k), -1.5, 1.5),
        );
        let mv = rng.vec(numel(&c.mask), -1.0, 1.0);
        check(
            &format!("attn_probs case {ci}"),
            seed,
            FD_FINE,
            vec![p(&c.q, q), p(&c.k, k), p(&c.mask, mv)],
            |g, ps, _| g.attn_probs(ps[0], ps[1], ps[2], 0.7).unwrap(),
        );
    }
}

/// The fused op's gradients equal the primitive graph's within rounding (they differ only
/// in how the softmax gradient is grouped).
#[test]
fn attn_probs_gradients_match_the_primitive_graph() {
    for (ci, c) in cases().iter().enumerate() {
        let mut rng = Rng::new(9300 + ci as u64);
        let mut grads = Vec::new();
        let inputs = HashMap::from([
            ("q".to_string(), uniform(&mut rng, &c.q, -2.0, 2.0)),
            ("k".to_string(), uniform(&mut rng, &c.k, -2.0, 2.0)),
            ("mask".to_string(), uniform(&mut rng, &c.mask, -2.0, 2.0)),
            ("r".to_string(), uniform(&mut rng, &c.scores, -1.0, 1.0)),
        ]);
        for fused in [true, false] {
            let mut g = Graph::new();
            let q = param(&mut g, "q", &c.q);
            let k = param(&mut g, "k", &c.k);
            let mask = param(&mut g, "mask", &c.mask);
            let rr = data(&mut g, "r", &c.scores);
            let pr = if fused {
                g.attn_probs(q, k, mask, 0.35).unwrap()
            } else {
                g.attn_probs_decomposed(q, k, mask, 0.35).unwrap()
            };
            let prod = g.times(pr, rr).unwrap();
            let loss = g.sum_all(prod).unwrap();
            let gs = grad(&mut g, loss, &[q, k, mask]).unwrap();
            let v = run(&g, &inputs).unwrap();
            grads.push(
                gs.iter()
                    .map(|x| v[&x.unwrap()].f().to_vec())
                    .collect::<Vec<_>>(),
            );
        }
        for (w, name) in ["q", "k", "mask"].iter().enumerate() {
            let (a, b) = (&grads[0][w], &grads[1][w]);
            let scale = b.iter().fold(0f32, |s, x| s.max(x.abs())).max(1e-3);
            assert_close(
                a,
                b,
                2e-5 * scale,
                &format!("case {ci} d{name} (max {scale})"),
            );
        }
    }
}

#[test]
fn attention_ops_reject_bad_shapes_and_second_derivatives() {
    let mut g = Graph::new();
    let q = data(&mut g, "q", &[2, 3, 4, 5]);
    let k = data(&mut g, "k", &[2, 3, 6, 5]);
    let bad_d = data(&mut g, "k2", &[2, 3, 6, 4]);
    let bad_batch = data(&mut g, "k3", &[2, 2, 6, 5]);
    let ok_mask = data(&mut g, "m", &[2, 1, 1, 6]);
    let bad_last = data(&mut g, "m2", &[2, 1, 1, 1]);
    let bad_mid = data(&mut g, "m3", &[2, 2, 1, 6]);
    let low_rank = data(&mut g, "m4", &[2, 6]);
    let ids = input(
        &mut g,
        "ids",
        InputKind::Data,
        &[2, 3, 6, 5],
        lorac_compiler::ir::DType::I64,
    );
    for (what, ins) in [
        ("head widths differ", [q, bad_d, ok_mask]),
        ("batch dims differ", [q, bad_batch, ok_mask]),
        ("mask's last axis 1", [q, k, bad_last]),
        ("mask broadcasts 2 to 3", [q, k, bad_mid]),
        ("mask of lower rank", [q, k, low_rank]),
        ("i64 keys", [q, ids, ok_mask]),
    ] {
        let e = g.add(Op::AttnProbs { scale: 1.0 }, &ins);
        assert!(e.is_err(), "{what} accepted");
    }
    let pr = g.attn_probs(q, k, ok_mask, 1.0).unwrap();
    let other = data(&mut g, "o", &[2, 3, 4, 5]);
    assert!(g.add(Op::AttnGrad { scale: 1.0 }, &[pr, other]).is_err());
    // AttnGrad is made by differentiation; differentiating it again is an error, not zero.
    let w = param(&mut g, "w", &[2, 3, 4, 6]);
    let dg = g.add(Op::AttnGrad { scale: 1.0 }, &[pr, w]).unwrap();
    let loss = g.sum_all(dg).unwrap();
    let e = grad(&mut g, loss, &[w]).unwrap_err();
    assert!(e.to_string().contains("has no gradient"), "{e}");
}

/// The CUDA lowering's expansion (`passes::expand_attention`) gives the primitive graph the
/// ops are defined by: the reference interpreter's values of a differentiated graph are the
/// same bits before and after, and the emitted CUDA plan has no attention host step.
#[test]
fn expansion_for_cuda_keeps_every_bit() {
    use lorac_compiler::lower::{cuda, Step};
    use lorac_compiler::passes::expand_attention;
    for (ci, c) in cases().iter().enumerate() {
        let mut rng = Rng::new(9400 + ci as u64);
        let mut g = Graph::new();
        let q = param(&mut g, "q", &c.q);
        let k = param(&mut g, "k", &c.k);
        let mask = data(&mut g, "mask", &c.mask);
        let r = data(&mut g, "r", &c.scores);
        let pr = g.attn_probs(q, k, mask, 0.4).unwrap();
        let prod = g.times(pr, r).unwrap();
        let loss = g.sum_all(prod).unwrap();
        let gs = grad(&mut g, loss, &[q, k]).unwrap();
        g.set_output("probs", pr);
        g.set_output("dq", gs[0].unwrap());
        g.set_output("dk", gs[1].unwrap());
        let inputs = HashMap::from([
            ("q".to_string(), uniform(&mut rng, &c.q, -2.0, 2.0)),
            ("k".to_string(), uniform(&mut rng, &c.k, -2.0, 2.0)),
            ("r".to_string(), uniform(&mut rng, &c.scores, -2.0, 2.0)),
            ("mask".to_string(), masks(&mut rng, &c.mask)),
        ]);
        let mut e = g.clone();
        assert_eq!(expand_attention::run(&mut e).unwrap(), 2, "case {ci}");
        let attn = |g: &Graph| {
            g.g.node_weights()
                .filter(|n| matches!(n.op, Op::AttnProbs { .. } | Op::AttnGrad { .. }))
                .count()
        };
        assert_eq!(attn(&e), 0, "case {ci}");
        let (a, b) = (run(&g, &inputs).unwrap(), run(&e, &inputs).unwrap());
        for name in ["probs", "dq", "dk"] {
            let (x, y) = (&a[&g.output(name).unwrap()], &b[&e.output(name).unwrap()]);
            let bits = |t: &Tensor| t.f().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(x.shape, y.shape, "case {ci} {name}");
            assert_eq!(bits(x), bits(y), "case {ci} {name} bit for bit");
        }
        let em = cuda::emit(&g, "kernels.cu").unwrap();
        assert!(
            em.plan.steps.iter().all(|s| !matches!(
                s,
                Step::Host {
                    op: Op::AttnProbs { .. } | Op::AttnGrad { .. },
                    ..
                }
            )),
            "case {ci}: attention reached the CUDA plan as a host step"
        );
    }
}
