//! The optimisation pipeline (simplify, CSE, DCE) preserves semantics bit for bit on random
//! graphs (`common/graphgen.rs`): each graph is run through the interpreter before and after
//! `run_pipeline`; every output must be bit-identical (NaN == NaN), the graph must verify, and
//! the pipeline must have removed nodes. The same holds after autodiff, for gradients.

mod common;

use common::graphgen::*;

#[test]
fn pipeline_preserves_random_graphs_bit_for_bit() {
    let (mut before_total, mut after_total, mut rewritten) = (0, 0, 0);
    // Nodes left by DCE alone, and graphs where simplify + CSE removed more than DCE alone.
    let (mut dce_total, mut beat_dce) = (0, 0);
    for seed in 0..200u64 {
        let mut gen = Gen::new(seed, false, InputKind::Data);
        let target = 10 + gen.rng.below(31);
        gen.build(target);
        let mut g = gen.g;
        verify(&g).unwrap_or_else(|e| panic!("seed {seed}: generated graph does not verify: {e}"));
        let want = outputs(&g, &gen.inputs);
        let n0 = g.len();
        let text_before = lorac_compiler::ir::print::to_text(&g);
        let mut only_dce = g.clone();
        lorac_compiler::passes::run_pass("dce", &mut only_dce).unwrap();
        assert_bit_identical(
            &want,
            &outputs(&only_dce, &gen.inputs),
            &format!("seed {seed}: dce"),
        );
        run_pipeline(&mut g, |pass, g| {
            verify(g).unwrap_or_else(|e| panic!("seed {seed}: after {pass}: {e}"))
        })
        .unwrap();
        verify(&g).unwrap();
        let got = outputs(&g, &gen.inputs);
        assert_bit_identical(
            &want,
            &got,
            &format!(
                "seed {seed}\n{text_before}\nafter:\n{}",
                lorac_compiler::ir::print::to_text(&g)
            ),
        );
        let n1 = g.len();
        assert!(
            n1 < n0,
            "seed {seed}: the pipeline did not shrink a graph with {} redundancies ({n0} nodes)",
            gen.redundancies
        );
        // A second run finds nothing left to do.
        let mut g2 = g.clone();
        run_pipeline(&mut g2, |_, _| {}).unwrap();
        assert_eq!(g2.len(), n1, "seed {seed}: the pipeline is not idempotent");
        before_total += n0;
        after_total += n1;
        dce_total += only_dce.len();
        beat_dce += usize::from(n1 < only_dce.len());
        rewritten += 1;
    }
    assert_eq!(rewritten, 200);
    eprintln!("nodes: {before_total} built, {dce_total} after DCE alone, {after_total} after the pipeline");
    // The live redundancy is removed too, not just the dead nodes.
    assert!(
        beat_dce >= 150,
        "simplify + CSE improved on DCE alone in only {beat_dce}/200 graphs"
    );
    assert!(
        after_total * 10 < dce_total * 8,
        "expected simplify + CSE to remove ≥20% of the live nodes: {dce_total} → {after_total}"
    );
    assert!(
        after_total * 10 < before_total * 9,
        "expected ≥10% fewer nodes overall: {before_total} → {after_total}"
    );
}

#[test]
fn autodiff_then_pipeline_preserves_gradients_bit_for_bit() {
    for seed in 0..200u64 {
        let mut gen = Gen::new(1000 + seed, true, InputKind::Param);
        let target = 10 + gen.rng.below(21);
        gen.build(target);
        let mut g = gen.g;
        let params: Vec<NodeId> = g
            .inputs_of_kind(InputKind::Param)
            .into_iter()
            .map(|(_, i)| i)
            .collect();
        // loss = Σ_outputs Σ out · R_out with fixed random R.
        let outs: Vec<NodeId> = g.outputs.iter().map(|(_, i)| *i).collect();
        let mut loss = None;
        let mut inputs = gen.inputs.clone();
        let mut rng = Rng::new(seed + 77);
        for (k, o) in outs.iter().enumerate() {
            let s = g.shape(*o).to_vec();
            let name = format!("r{k}");
            let r = g
                .add(
                    Op::Input {
                        name: name.clone(),
                        kind: InputKind::Data,
                        shape: s.clone(),
                        dtype: DType::F32,
                    },
                    &[],
                )
                .unwrap();
            inputs.insert(
                name,
                Tensor::f32(
                    s.clone(),
                    (0..numel(&s)).map(|_| rng.unit() * 2.0 - 1.0).collect(),
                ),
            );
            let pr = g.times(*o, r).unwrap();
            let l = g.sum_all(pr).unwrap();
            loss = Some(match loss {
                None => l,
                Some(p) => g.plus(p, l).unwrap(),
            });
        }
        let loss = loss.unwrap();
        g.outputs.clear();
        g.set_output("loss", loss);
        let grads = grad(&mut g, loss, &params).unwrap();
        let mut n_grads = 0;
        for (k, gr) in grads.iter().enumerate() {
            if let Some(gr) = gr {
                g.set_output(&format!("d{k}"), *gr);
                n_grads += 1;
            }
        }
        assert!(n_grads > 0, "seed {seed}: no parameter reaches the loss");
        verify(&g).unwrap();
        let want = outputs(&g, &inputs);
        let n0 = g.len();
        run_pipeline(&mut g, |pass, g| {
            verify(g).unwrap_or_else(|e| panic!("seed {seed}: after {pass}: {e}"))
        })
        .unwrap();
        let got = outputs(&g, &inputs);
        assert_bit_identical(&want, &got, &format!("autodiff seed {seed}"));
        assert!(
            g.len() < n0,
            "seed {seed}: the gradient graph was not simplified at all"
        );
    }
}
