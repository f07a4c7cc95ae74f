use lorac_compiler::build::{forward, loss, Geometry};
use lorac_compiler::check::check_file;
use lorac_compiler::ir::{InputKind, Tensor};
use std::collections::HashMap;
fn main() {
    let spec_path = std::env::args().nth(1).unwrap();
    let b: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let l: usize = std::env::args().nth(3).unwrap().parse().unwrap();
    let spec = check_file(std::path::Path::new(&spec_path)).spec.unwrap();
    let t0 = std::time::Instant::now();
    let mut fwd = forward(&spec, Geometry { batch: b, seq: l }).unwrap();
    loss::gradient_graph(&mut fwd, &spec.train.as_ref().unwrap().task).unwrap();
    let mut g = fwd.graph;
    lorac_compiler::passes::run_pipeline(&mut g, |_, _| {}).unwrap();
    println!("build {:?} nodes {}", t0.elapsed(), g.len());
    let model = spec.model.as_ref().unwrap();
    let frozen: Vec<String> = g
        .inputs_of_kind(InputKind::Frozen)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut inputs =
        lorac_runtime::weights::load(model.weights.as_ref().unwrap(), Some(&frozen)).unwrap();
    let shapes: HashMap<String, Vec<usize>> = fwd
        .params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let vals = lorac_runtime::init::initialize(&spec, &shapes, &mut inputs, 0).unwrap();
    inputs.extend(vals);
    inputs.insert(
        "input_ids".into(),
        Tensor::i64(
            vec![b, l],
            (0..b * l).map(|i| (i % 1000 + 1000) as i64).collect(),
        ),
    );
    inputs.insert(
        "token_type_ids".into(),
        Tensor::i64(vec![b, l], vec![0; b * l]),
    );
    inputs.insert(
        "attention_mask".into(),
        Tensor::f32(vec![b, l], vec![1.0; b * l]),
    );
    inputs.insert("labels".into(), Tensor::i64(vec![b], vec![1; b]));
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let v = lorac_compiler::ir::interp::run(&g, &inputs).unwrap();
        println!(
            "step {:?} loss {:?}",
            t.elapsed(),
            v[&g.output("loss").unwrap()].f()
        );
    }
}
