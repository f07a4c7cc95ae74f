//! A run whose loss or gradients stop being finite ends with E0907 naming the step (and the
//! tensor, for gradients), and the last good checkpoint stays loadable.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn divergence_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let d = std::env::temp_dir().join(format!("lorac-diverge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    // A learning rate of 1e30 throws the parameters to ~1e30 after the first update, so the
    // second step's forward pass overflows.
    let spec = std::fs::read_to_string(root.join("examples/causal_lm.lora"))
        .unwrap()
        .replace(
            "../tests/fixtures",
            &root.join("tests/fixtures").to_string_lossy(),
        )
        .replace(
            "optimizer adamw(lr = 1e-2, weight_decay = 0.0)",
            "optimizer sgd(lr = 1e30)",
        )
        .replace("schedule cosine(warmup = 0.1)", "schedule constant");
    assert!(spec.contains("sgd(lr = 1e30)"));
    let spec_path = d.join("diverge.lora");
    std::fs::write(&spec_path, spec).unwrap();
    let out = d.join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_loraC"))
        .current_dir(&root)
        .args([
            "train",
            &spec_path.to_string_lossy(),
            "--checkpoint-every",
            "1",
            "--color",
            "never",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("E0907"), "{err}");
    let step = err
        .split("step ")
        .filter_map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .find(|_| true);
    let step = step.unwrap_or_else(|| panic!("no step named: {err}"));
    assert!(step >= 2, "the first step has a finite loss: {err}");
    assert!(
        err.contains("the loss is") || err.contains("the gradient of `"),
        "names the loss or the tensor: {err}"
    );
    // The checkpoint is the one of the last finite step.
    let meta = std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap();
    assert!(
        meta.contains(&format!("\"step\":{}", step - 1)),
        "{meta} vs step {step}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
