//! Mixed optimizers in one update graph, and the `for` selector assignment of tensors to
//! optimizers.
//! Fixtures and closed forms: `common/optim.rs`.

mod common;

use common::optim::*;

// Mixed optimizers and `assign`

#[test]
fn each_tensor_gets_its_own_optimizers_update_and_scalars() {
    let params = vec![
        param("enc.q", "A", &[2, 2, 3], Some(2)),
        param("enc.q", "Wg", &[2, 2], None),
        param("head", "weight", &[3], None),
    ];
    let t = train(vec![
        opt(adamw(1e-8, 0.0, true), None, &["experts"]),
        opt(sgd(0.0, 0.0), None, &[]),
    ]);
    let owner = assign(&params, &t, &["A".into()]).unwrap();
    assert_eq!(owner, vec![0, 1, 1]);
    let g = update_graph(&params, &owner, &t).unwrap();
    let mut seed = 3u64;
    let mut feed = HashMap::new();
    for p in &params {
        let n: usize = p.shape.iter().product();
        feed.insert(
            p.name.clone(),
            (p.shape.clone(), vals(&mut seed, n, -1.0, 1.0)),
        );
        feed.insert(
            format!("grad.{}", p.name),
            (p.shape.clone(), vals(&mut seed, n, -1.0, 1.0)),
        );
    }
    let n = 12;
    feed.insert(
        "m.enc.q.A".into(),
        (vec![2, 2, 3], vals(&mut seed, n, -0.1, 0.1)),
    );
    feed.insert(
        "v.enc.q.A".into(),
        (vec![2, 2, 3], vals(&mut seed, n, 0.01, 0.02)),
    );
    let steps = [
        Step {
            lr: 1e-2,
            bc1: 1.0 / (1.0 - 0.9f64.powi(4)),
            bc2: 1.0 / (1.0 - 0.999f64.powi(4)),
        },
        Step {
            lr: 0.2,
            bc1: 1.0,
            bc2: 1.0,
        },
    ];
    let out = run_update(&g, &feed, &steps);
    let f = |k: &str| feed[k].1.clone();
    let (pa, ma, va) = adamw_ref(
        &f("enc.q.A"),
        &f("grad.enc.q.A"),
        &f("m.enc.q.A"),
        &f("v.enc.q.A"),
        (0.9, 0.999),
        1e-8,
        0.0,
        steps[0].lr,
        steps[0].bc1,
        steps[0].bc2,
    );
    close("A", &out["new.enc.q.A"], &pa, RTOL);
    close("m.A", &out["new.m.enc.q.A"], &ma, RTOL);
    close("v.A", &out["new.v.enc.q.A"], &va, RTOL);
    for n in ["enc.q.Wg", "head.weight"] {
        let (pn, _) = sgd_ref(&f(n), &f(&format!("grad.{n}")), &[], 0.0, 0.0, steps[1].lr);
        close(n, &out[&format!("new.{n}")], &pn, RTOL);
    }
}

fn selectors_params() -> Vec<ParamInfo> {
    vec![
        param("l0.q", "A", &[2, 4, 3], Some(2)),
        param("l0.q", "B", &[2, 5, 4], Some(2)),
        param("l0.q", "Wg", &[2, 3], None),
        param("l0.q", "scale", &[1], None),
        param("head", "weight", &[2, 3], None),
        param("head", "bias", &[2], None),
    ]
}

#[test]
fn assign_routes_tensors_by_selector_else_default() {
    let params = selectors_params();
    let experts = vec!["A".to_string(), "B".to_string()];
    let t = train(vec![
        opt(adamw(1e-8, 0.0, true), None, &["experts"]),
        opt(sgd(0.0, 0.0), None, &["head"]),
        opt(adamw(1e-8, 0.0, true), None, &["Wg"]),
        opt(adamw(1e-8, 0.1, true), None, &[]),
    ]);
    assert_eq!(
        assign(&params, &t, &experts).unwrap(),
        vec![0, 0, 2, 3, 1, 1]
    );

    // The default may come first: a `for` optimizer still claims its tensors.
    let t = train(vec![
        opt(adamw(1e-8, 0.1, true), None, &[]),
        opt(sgd(0.0, 0.0), None, &["head", "scale"]),
    ]);
    assert_eq!(
        assign(&params, &t, &experts).unwrap(),
        vec![0, 0, 0, 1, 1, 1]
    );

    // `adapters` claims every adapter tensor and not the head.
    let t = train(vec![
        opt(sgd(0.0, 0.0), None, &["adapters"]),
        opt(adamw(1e-8, 0.0, true), None, &[]),
    ]);
    assert_eq!(
        assign(&params, &t, &experts).unwrap(),
        vec![0, 0, 0, 0, 1, 1]
    );

    // `experts` needs the tensor to be declared in an experts block.
    let t = train(vec![
        opt(sgd(0.0, 0.0), None, &["experts"]),
        opt(adamw(1e-8, 0.0, true), None, &[]),
    ]);
    assert_eq!(
        assign(&params, &t, &["A".to_string()]).unwrap(),
        vec![0, 1, 1, 1, 1, 1]
    );

    // A tensor-name selector claims that tensor in every module (and every expert's copy).
    let mut more = params.clone();
    more.push(param("l1.v", "A", &[2, 4, 3], Some(2)));
    let t = train(vec![
        opt(sgd(0.0, 0.0), None, &["A"]),
        opt(adamw(1e-8, 0.0, true), None, &[]),
    ]);
    assert_eq!(
        assign(&more, &t, &experts).unwrap(),
        vec![0, 1, 1, 1, 1, 1, 0]
    );
}

#[test]
fn assign_without_default_rejects_an_unclaimed_tensor() {
    let params = selectors_params();
    let experts = vec!["A".to_string(), "B".to_string()];
    let t = train(vec![
        opt(adamw(1e-8, 0.0, true), None, &["experts"]),
        opt(sgd(0.0, 0.0), None, &["head"]),
    ]);
    let err = assign(&params, &t, &experts).unwrap_err();
    assert!(
        err.0.contains("l0.q.Wg"),
        "error names the tensor: {}",
        err.0
    );

    // Every tensor claimed: no default needed.
    let t = train(vec![
        opt(adamw(1e-8, 0.0, true), None, &["adapters"]),
        opt(sgd(0.0, 0.0), None, &["head"]),
    ]);
    assert_eq!(
        assign(&params, &t, &experts).unwrap(),
        vec![0, 0, 0, 0, 1, 1]
    );

    // No optimizers at all.
    assert!(assign(&params, &train(vec![]), &experts).is_err());
}
