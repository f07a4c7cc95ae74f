//! Optimizer update graphs (`build::optim`) run through the reference interpreter against
//! closed forms computed in f64: state names and scalar inputs, AdamW (torch semantics, with and
//! without bias correction and weight decay) and SGD (plain, momentum, weight decay).
//! Fixtures and closed forms: `common/optim.rs`.

mod common;

use common::optim::*;

// State names and scalar inputs

#[test]
fn state_names_follow_the_optimizer_kind() {
    assert_eq!(
        state_names(&adamw(1e-8, 0.0, true), "m.A"),
        vec!["m.m.A", "v.m.A"]
    );
    assert_eq!(state_names(&sgd(0.9, 0.0), "q.B"), vec!["mom.q.B"]);
    assert!(state_names(&sgd(0.0, 0.1), "q.B").is_empty());
    assert_eq!(
        scalar_inputs(2),
        ["lr.2".to_string(), "bc1.2".into(), "bc2.2".into()]
    );
}

#[test]
fn update_graph_declares_params_grads_state_and_scalars() {
    let params = vec![
        param("q", "A", &[2, 3], None),
        param("head", "w", &[2, 2], None),
    ];
    let t = train(vec![
        opt(adamw(1e-8, 0.0, true), None, &["head"]),
        opt(sgd(0.9, 0.0), None, &[]),
    ]);
    let owner = assign(&params, &t, &[]).unwrap();
    assert_eq!(owner, vec![1, 0]);
    let g = update_graph(&params, &owner, &t).unwrap();
    for name in [
        "q.A",
        "grad.q.A",
        "mom.q.A",
        "head.w",
        "grad.head.w",
        "m.head.w",
        "v.head.w",
    ] {
        assert!(g.find_input(name).is_some(), "missing input {name}");
    }
    for i in 0..2 {
        for s in scalar_inputs(i) {
            assert!(g.find_input(&s).is_some(), "missing scalar {s}");
        }
    }
    let mut outs: Vec<&str> = g.outputs.iter().map(|(n, _)| n.as_str()).collect();
    outs.sort();
    assert_eq!(
        outs,
        vec![
            "new.head.w",
            "new.m.head.w",
            "new.mom.q.A",
            "new.q.A",
            "new.v.head.w"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// AdamW

/// Three AdamW steps on two tensors, outputs fed back as the next step's inputs, against an
/// independent f64 trajectory.
fn adamw_three_steps(wd: f64, bias_correction: bool) {
    let (b1, b2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
    let params = vec![
        param("q", "A", &[2, 3], None),
        param("head", "w", &[3], None),
    ];
    let t = train(vec![opt(adamw(eps, wd, bias_correction), None, &[])]);
    let owner = assign(&params, &t, &[]).unwrap();
    let g = update_graph(&params, &owner, &t).unwrap();

    let mut seed = 7u64;
    // Graph-side values (fed back from the outputs) and the f64 reference trajectory.
    let mut feed: Feed = HashMap::new();
    let mut refp: HashMap<String, Moments> = HashMap::new();
    for p in &params {
        let n = p.shape.iter().product();
        let v = vals(&mut seed, n, -1.0, 1.0);
        feed.insert(p.name.clone(), (p.shape.clone(), v.clone()));
        feed.insert(format!("m.{}", p.name), (p.shape.clone(), vec![0.0; n]));
        feed.insert(format!("v.{}", p.name), (p.shape.clone(), vec![0.0; n]));
        refp.insert(p.name.clone(), (v, vec![0.0; n], vec![0.0; n]));
    }
    for step in 1..=3i32 {
        let lr = 0.01 * step as f64; // a schedule: the lr input changes per step
        let (bc1, bc2) = if bias_correction {
            (1.0 / (1.0 - b1.powi(step)), 1.0 / (1.0 - b2.powi(step)))
        } else {
            (1.0, 1.0)
        };
        for p in &params {
            let n = p.shape.iter().product();
            let grad = vals(&mut seed, n, -2.0, 2.0);
            feed.insert(format!("grad.{}", p.name), (p.shape.clone(), grad.clone()));
            let (rp, rm, rv) = &refp[&p.name];
            let next = adamw_ref(rp, &grad, rm, rv, (b1, b2), eps, wd, lr, bc1, bc2);
            refp.insert(p.name.clone(), next);
        }
        let out = run_update(&g, &feed, &[Step { lr, bc1, bc2 }]);
        for p in &params {
            let (rp, rm, rv) = &refp[&p.name];
            let tag = format!("step {step} wd {wd} bc {bias_correction}");
            close(
                &format!("{tag} new.{}", p.name),
                &out[&format!("new.{}", p.name)],
                rp,
                RTOL,
            );
            close(
                &format!("{tag} new.m.{}", p.name),
                &out[&format!("new.m.{}", p.name)],
                rm,
                RTOL,
            );
            close(
                &format!("{tag} new.v.{}", p.name),
                &out[&format!("new.v.{}", p.name)],
                rv,
                RTOL,
            );
            for (k, o) in [("", "new."), ("m.", "new.m."), ("v.", "new.v.")] {
                let key = format!("{k}{}", p.name);
                let s = feed[&key].0.clone();
                feed.insert(key, (s, out[&format!("{o}{}", p.name)].clone()));
            }
        }
    }
}

#[test]
fn adamw_with_bias_correction_three_steps() {
    adamw_three_steps(0.0, true);
}

#[test]
fn adamw_with_bias_correction_and_weight_decay_three_steps() {
    adamw_three_steps(0.1, true);
}

#[test]
fn adamw_without_bias_correction_three_steps() {
    adamw_three_steps(0.0, false);
    adamw_three_steps(0.05, false);
}

#[test]
fn adamw_weight_decay_is_decoupled() {
    // Zero gradient and zero moments: the Adam step is 0/(0 + eps) = 0, so only the decoupled
    // decay acts: p ← p(1 − lr·wd). (L2-in-the-gradient would give a step of ≈ lr·sign(p).)
    let params = vec![param("q", "A", &[4], None)];
    let t = train(vec![opt(adamw(1e-8, 0.5, true), None, &[])]);
    let g = update_graph(&params, &[0], &t).unwrap();
    let p = vec![1.0, -2.0, 0.5, 4.0];
    let feed: Feed = [
        ("q.A", p.clone()),
        ("grad.q.A", vec![0.0; 4]),
        ("m.q.A", vec![0.0; 4]),
        ("v.q.A", vec![0.0; 4]),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), (vec![4], v)))
    .collect();
    let out = run_update(
        &g,
        &feed,
        &[Step {
            lr: 0.1,
            bc1: 10.0,
            bc2: 1000.0,
        }],
    );
    let want: Vec<f64> = p.iter().map(|x| x * (1.0 - 0.1 * 0.5)).collect();
    close("decayed", &out["new.q.A"], &want, RTOL);
}

// ---------------------------------------------------------------------------------------------
// SGD

fn sgd_three_steps(mu: f64, wd: f64) {
    let params = vec![param("q", "A", &[2, 2], None), param("q", "B", &[3], None)];
    let t = train(vec![opt(sgd(mu, wd), None, &[])]);
    let owner = assign(&params, &t, &[]).unwrap();
    let g = update_graph(&params, &owner, &t).unwrap();
    let mut seed = 11u64;
    let mut feed: Feed = HashMap::new();
    let mut refp: HashMap<String, (Vec<f64>, Vec<f64>)> = HashMap::new();
    for p in &params {
        let n = p.shape.iter().product();
        let v = vals(&mut seed, n, -1.0, 1.0);
        feed.insert(p.name.clone(), (p.shape.clone(), v.clone()));
        if mu > 0.0 {
            // torch's buffer is created from the first gradient; a zero buffer gives the same.
            feed.insert(format!("mom.{}", p.name), (p.shape.clone(), vec![0.0; n]));
        }
        refp.insert(p.name.clone(), (v, vec![0.0; n]));
    }
    for step in 1..=3 {
        let lr = 0.05 / step as f64;
        for p in &params {
            let n = p.shape.iter().product();
            let grad = vals(&mut seed, n, -2.0, 2.0);
            feed.insert(format!("grad.{}", p.name), (p.shape.clone(), grad.clone()));
            let (rp, rb) = &refp[&p.name];
            let (np, nb) = sgd_ref(rp, &grad, rb, mu, wd, lr);
            if step == 1 && mu > 0.0 {
                // First step: buf = g (+ wd·p), as torch.
                let d: Vec<f64> = grad.iter().zip(rp).map(|(g, p)| g + wd * p).collect();
                close("first buffer", &nb, &d, 1e-12);
            }
            refp.insert(
                p.name.clone(),
                (np, if mu > 0.0 { nb } else { vec![0.0; n] }),
            );
        }
        // Unused scalars (bc1/bc2) are fed anyway: the graph declares them for every optimizer.
        let out = run_update(
            &g,
            &feed,
            &[Step {
                lr,
                bc1: 1.0,
                bc2: 1.0,
            }],
        );
        for p in &params {
            let (rp, rb) = &refp[&p.name];
            let tag = format!("sgd step {step} mu {mu} wd {wd}");
            close(
                &format!("{tag} new.{}", p.name),
                &out[&format!("new.{}", p.name)],
                rp,
                RTOL,
            );
            let s = p.shape.clone();
            feed.insert(
                p.name.clone(),
                (s.clone(), out[&format!("new.{}", p.name)].clone()),
            );
            if mu > 0.0 {
                close(
                    &format!("{tag} new.mom.{}", p.name),
                    &out[&format!("new.mom.{}", p.name)],
                    rb,
                    RTOL,
                );
                feed.insert(
                    format!("mom.{}", p.name),
                    (s, out[&format!("new.mom.{}", p.name)].clone()),
                );
            } else {
                assert!(!out.contains_key(&format!("new.mom.{}", p.name)));
            }
        }
    }
}

#[test]
fn sgd_plain() {
    sgd_three_steps(0.0, 0.0);
}

#[test]
fn sgd_momentum() {
    sgd_three_steps(0.9, 0.0);
}

#[test]
fn sgd_weight_decay() {
    sgd_three_steps(0.0, 0.01);
    sgd_three_steps(0.9, 0.01);
}

// ---------------------------------------------------------------------------------------------
