//! `LORAC_PROFILE_REPLAY` runs every CPU step twice in a row (to time it with its data in
//! cache); the values must be those of a normal run, bit for bit. Its own test binary: the
//! switches are process-wide environment variables.

use common::case::Case;
use lorac_runtime::exec::Backend;

mod common;

#[test]
fn replayed_runs_compute_what_normal_runs_do() {
    let mut c = Case::new(7);
    let x = c.input("x", &[50, 96], -2.0, 2.0);
    let w = c.input("w", &[96, 96], -0.2, 0.2);
    let h = c.g.linear(x, w, None).unwrap();
    let a = c.g.gelu(h).unwrap();
    let s = c.g.softmax(a).unwrap();
    let y = c.g.plus(s, h).unwrap();
    c.g.set_output("y", y);
    c.g.set_output("s", s);
    let normal = c.run_on(Backend::Cpu);
    // SAFETY (of the environment): this binary's only test, so no other thread reads it.
    unsafe {
        std::env::set_var("LORAC_PROFILE", "3");
        std::env::set_var("LORAC_PROFILE_REPLAY", "1");
    }
    let replayed = c.run_on(Backend::Cpu);
    unsafe {
        std::env::remove_var("LORAC_PROFILE");
        std::env::remove_var("LORAC_PROFILE_REPLAY");
    }
    for name in ["y", "s"] {
        assert_eq!(normal[name], replayed[name], "{name}");
    }
}
