//! Products that read a frozen weight transposed may read a row-major copy made once
//! (`exec::bound`): the values must be those of the strided read, bit for bit, and a run
//! given another weight tensor than the one bound must use that tensor.

use common::case::Case;
use lorac_compiler::ir::Tensor;
use lorac_compiler::lower::plan::Step;
use lorac_runtime::exec::cpu::CpuProgram;
use std::collections::HashMap;

mod common;

/// Products whose right operand is read transposed.
fn transposed(p: &CpuProgram) -> usize {
    p.plan
        .steps
        .iter()
        .filter(|s| matches!(s, Step::MatMul { b, .. } if b.trans))
        .count()
}

fn same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>, what: &str) {
    for (name, t) in a {
        let (x, y) = (t.f(), b[name].f());
        assert_eq!(x.len(), y.len(), "{what}: {name}");
        for (i, (u, v)) in x.iter().zip(y).enumerate() {
            assert_eq!(u.to_bits(), v.to_bits(), "{what}: {name}[{i}] {u} vs {v}");
        }
    }
}

#[test]
fn bound_copies_compute_what_strided_reads_do() {
    let mut c = Case::new(11);
    // A gemm-sized product, a thin-output one and a thin-inner one, and the weight read
    // row-major too (as a backward pass does).
    let x = c.input("x", &[70, 96], -2.0, 2.0);
    let w = c.input("w", &[80, 96], -0.3, 0.3);
    let v = c.input("v", &[4, 80], -0.3, 0.3);
    let u = c.input("u", &[96, 12], -0.3, 0.3);
    let h = c.g.linear(x, w, None).unwrap();
    let back = c.g.matmul(h, w).unwrap();
    let thin = c.g.linear(h, v, None).unwrap();
    let x12 = c.g.matmul(x, u).unwrap();
    let small = c.g.linear(x12, u, None).unwrap();
    c.g.set_output("h", h);
    c.g.set_output("back", back);
    c.g.set_output("thin", thin);
    c.g.set_output("small", small);

    let plain = CpuProgram::new(&c.g).unwrap();
    let want = plain.run(&[&c.inputs]).unwrap();
    let mut bound = CpuProgram::new(&c.g).unwrap();
    let frozen: HashMap<String, Tensor> = ["w", "v", "u"]
        .iter()
        .map(|&n| (n.to_string(), c.inputs[n].clone()))
        .collect();
    let data = HashMap::from([("x".to_string(), c.inputs["x"].clone())]);
    let before = transposed(&bound);
    bound.bind_frozen(&frozen, &mut Default::default());
    assert_eq!(before, 3, "the three products read their weight transposed");
    assert_eq!(transposed(&bound), 0, "binding rewrote every one of them");
    same(&want, &bound.run(&[&data, &frozen]).unwrap(), "bound");
    // A second bind changes nothing.
    bound.bind_frozen(&frozen, &mut Default::default());
    same(&want, &bound.run(&[&data, &frozen]).unwrap(), "bound twice");

    // Other weights than the bound ones: the run must read them, not the copies.
    let mut other = frozen.clone();
    for t in other.values_mut() {
        let shape = t.shape.clone();
        let v: Vec<f32> = t.f().iter().map(|x| x * -1.5 + 0.01).collect();
        *t = Tensor::f32(shape, v);
    }
    let all: HashMap<String, Tensor> = other.clone().into_iter().chain(data.clone()).collect();
    let want_other = plain.run(&[&all]).unwrap();
    same(
        &want_other,
        &bound.run(&[&data, &other]).unwrap(),
        "other weights",
    );
    assert!(
        want_other["h"].f() != want["h"].f(),
        "the other weights change the values"
    );
}
