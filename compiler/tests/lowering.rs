//! The backend-neutral lowering: what fuses, what is recomputed, what aliases, and the memory
//! planner's guarantees (no two live temporaries share bytes; the arena is the planned peak).

use lorac_compiler::ir::{DType, Graph, InputKind, NodeId, Op, UnaryOp};
use lorac_compiler::lower::kernel::{Form, Inst};
use lorac_compiler::lower::memplan::{self, MemPlan};
use lorac_compiler::lower::plan::{lower, Step};

fn input(g: &mut Graph, name: &str, shape: &[usize]) -> NodeId {
    g.add(
        Op::Input {
            name: name.into(),
            kind: InputKind::Data,
            shape: shape.to_vec(),
            dtype: DType::F32,
        },
        &[],
    )
    .unwrap()
}

/// Layer norm then GELU: a handful of kernels, not one per primitive.
fn ln_gelu() -> Graph {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[64, 96]);
    let w = input(&mut g, "w", &[96]);
    let b = input(&mut g, "b", &[96]);
    let y = g.layer_norm(x, w, b, 1e-12).unwrap();
    let z = g.gelu(y).unwrap();
    g.set_output("z", z);
    g
}

#[test]
fn elementwise_chains_fuse_and_broadcasts_are_not_materialised() {
    let g = ln_gelu();
    let primitives = g.len();
    let p = lower(&g).unwrap();
    // Two row sums, a per-row map after each (mean; √(var + ε)) and one map for
    // normalise-scale-shift-GELU: five kernels for 35 primitives.
    assert!(
        p.kernels.len() <= 5,
        "{} kernels for {primitives} nodes",
        p.kernels.len()
    );
    assert!(
        p.steps.iter().all(|s| !matches!(s, Step::Host { .. })),
        "broadcasts of w, b and the row statistics must be addressing modes, not copies"
    );
    let reductions = p
        .kernels
        .iter()
        .filter(|k| matches!(k.form, Form::RowReduce(_)))
        .count();
    assert_eq!(reductions, 2, "mean and variance");
}

#[test]
fn cheap_values_with_several_users_are_recomputed_not_stored() {
    // s = x · 0.5 feeds two kernels' worth of work; both recompute it.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 40]);
    let s = g.scale(x, 0.5).unwrap();
    let e = g.un(UnaryOp::Exp, s).unwrap();
    let t = g.un(UnaryOp::Tanh, s).unwrap();
    g.set_output("e", e);
    g.set_output("t", t);
    let p = lower(&g).unwrap();
    assert_eq!(
        p.kernels.len(),
        2,
        "one kernel per output, none for the shared scale"
    );
    // An expensive shared value (exp) is stored once instead, computed once; its two
    // readers come out of the same kernel as sibling outputs.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[8, 40]);
    let e = g.un(UnaryOp::Exp, x).unwrap();
    let a = g.scale(e, 2.0).unwrap();
    let b = g.scale(e, 3.0).unwrap();
    g.set_output("a", a);
    g.set_output("b", b);
    let p = lower(&g).unwrap();
    assert_eq!(p.kernels.len(), 1);
    assert_eq!(p.kernels[0].outputs.len(), 3, "exp, 2·exp, 3·exp");
    let exps = p.kernels[0]
        .body
        .iter()
        .filter(|i| matches!(i, Inst::Unary(UnaryOp::Exp, _)))
        .count();
    assert_eq!(exps, 1);
}

#[test]
fn transposes_read_by_products_are_strides_not_copies() {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[16, 32]);
    let w = input(&mut g, "w", &[24, 32]);
    let y = g.linear(x, w, None).unwrap();
    g.set_output("y", y);
    let p = lower(&g).unwrap();
    assert_eq!(p.steps.len(), 1);
    assert!(matches!(&p.steps[0], Step::MatMul { b, .. } if b.trans));
}

#[test]
fn memory_plan_reuses_bytes_and_its_verifier_catches_overlap() {
    let g = ln_gelu();
    let p = lower(&g).unwrap();
    let m = memplan::plan(&p, false);
    memplan::verify(&p, &m).unwrap();
    let total: usize = p
        .bufs
        .iter()
        .enumerate()
        .filter(|(b, _)| m.offset[*b].is_some())
        .map(|(_, buf)| memplan::bytes(buf.dtype, buf.len))
        .sum();
    assert!(
        m.peak < total,
        "peak {} must be below the sum {total} (reuse)",
        m.peak
    );
    // Put every temporary at offset 0: any two that live together now overlap.
    let bad = MemPlan {
        offset: m.offset.iter().map(|o| o.map(|_| 0)).collect(),
        ..m.clone()
    };
    assert!(memplan::verify(&p, &bad).is_err());
}

/// A map over narrow rows (per-token gate values, `[T, k, e, 1]`) runs over wide rows, and
/// means the same: each output element from the same operand elements.
#[test]
fn narrow_maps_are_retiled_to_wide_rows() {
    let mut g = Graph::new();
    let a = input(&mut g, "a", &[2048, 16, 1]);
    let b = input(&mut g, "b", &[2048, 16, 1]);
    let y = g.times(a, b).unwrap();
    let y = g.un(UnaryOp::Neg, y).unwrap();
    g.set_output("y", y);
    let p = lower(&g).unwrap();
    assert_eq!(p.kernels.len(), 1);
    let k = &p.kernels[0];
    assert_eq!((k.rows, k.inner), (32, 1024));
    let av: Vec<f32> = (0..32768).map(|i| i as f32 * 0.5).collect();
    let bv: Vec<f32> = (0..32768).map(|i| 3.0 - i as f32).collect();
    let mut out = vec![vec![0f32; 32768]];
    k.eval_host(&[&av, &bv], &mut out);
    for i in [0, 1, 1023, 1024, 20_000, 32_767] {
        assert_eq!(out[0][i], -(av[i] * bv[i]), "element {i}");
    }
    // A per-row broadcast over wider rows keeps its shape.
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[100, 8]);
    let s = input(&mut g, "s", &[100, 1]);
    let sb = g.bc(s, &[100, 8]).unwrap();
    let y = g.times(x, sb).unwrap();
    g.set_output("y", y);
    let p = lower(&g).unwrap();
    assert_eq!((p.kernels[0].rows, p.kernels[0].inner), (100, 8));
}

/// `Kernel::check` (run on every planned kernel and before CPU code generation) refuses what
/// the code generators cannot render: a product whose factors do not match, a factor read
/// element by element, a value read before it is defined; a well-formed product passes.
#[test]
fn kernel_check_refuses_malformed_products() {
    use lorac_compiler::lower::kernel::{Access, Kernel};
    let kernel = |operands: Vec<Access>, body: Vec<Inst>| Kernel {
        name: "k".into(),
        form: Form::Map,
        rows: 4,
        inner: 8,
        operands,
        outputs: vec![body.len() - 1],
        body,
    };
    let factors = || vec![Access::DotRows { k: 3 }, Access::DotCols { k: 3 }];
    assert!(kernel(factors(), vec![Inst::Dot(0, 1)]).check().is_ok());
    let mismatched = vec![Access::DotRows { k: 3 }, Access::DotCols { k: 2 }];
    assert!(kernel(mismatched, vec![Inst::Dot(0, 1)]).check().is_err());
    assert!(kernel(factors(), vec![Inst::Dot(1, 0)]).check().is_err());
    assert!(kernel(factors(), vec![Inst::Load(0)]).check().is_err());
    let early = vec![Inst::Unary(UnaryOp::Neg, 1), Inst::Dot(0, 1)];
    assert!(kernel(factors(), early).check().is_err());
}

/// `linear → GELU → linear` with the first product also read after the GELU (or not).
fn mlp(residual: bool) -> Graph {
    let mut g = Graph::new();
    let x = input(&mut g, "x", &[64, 96]);
    let w1 = input(&mut g, "w1", &[96, 96]);
    let w2 = input(&mut g, "w2", &[96, 96]);
    let h = g.linear(x, w1, None).unwrap();
    let a = g.gelu(h).unwrap();
    let y = g.linear(a, w2, None).unwrap();
    let y = if residual { g.plus(y, h).unwrap() } else { y };
    g.set_output("y", y);
    g
}

#[test]
fn maps_write_over_inputs_they_read_last_and_only_then() {
    let p = lower(&mlp(false)).unwrap();
    // The GELU map reads the first product for the last time: its output takes those bytes.
    let (ins, outs) = p
        .steps
        .iter()
        .find_map(|s| match s {
            Step::Kernel { ins, outs, .. } if ins.len() == 1 && outs.len() == 1 => {
                Some((ins.clone(), outs.clone()))
            }
            _ => None,
        })
        .expect("a one-operand GELU map");
    let (h, a) = (ins[0], outs[0]);
    let m = memplan::plan(&p, true);
    memplan::verify(&p, &m).unwrap();
    assert_eq!(m.offset[a], m.offset[h], "GELU written over its input");
    let apart = memplan::plan(&p, false);
    memplan::verify(&p, &apart).unwrap();
    assert_ne!(apart.offset[a], apart.offset[h]);
    assert!(m.peak <= apart.peak, "{} vs {}", m.peak, apart.peak);
    // Without `in_place`, the same placement is an overlap the verifier rejects.
    let forced = MemPlan {
        in_place: false,
        ..m.clone()
    };
    assert!(memplan::verify(&p, &forced).is_err());

    // With the residual, the first product is read after the GELU: the GELU may not take
    // it (the final sum, its last reader, may).
    let p = lower(&mlp(true)).unwrap();
    let m = memplan::plan(&p, true);
    memplan::verify(&p, &m).unwrap();
    let gelu_out = p
        .steps
        .iter()
        .find_map(|s| match s {
            Step::Kernel { ins, outs, .. } if ins.len() == 1 && outs.len() == 1 => Some(outs[0]),
            _ => None,
        })
        .expect("a one-operand GELU map");
    let from = memplan::in_place(&p, &memplan::lifetimes(&p));
    assert_eq!(from[gelu_out], None, "h is read again after the GELU");
    let (_, out, _, _) = &p.outputs[0];
    assert!(
        from[*out].is_some(),
        "the residual sum writes over a dying input"
    );
}
