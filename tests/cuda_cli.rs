//! The CUDA backend from the CLI: `--emit cuda` writes kernels and launch plans for every
//! program, and `--backend cuda` on a machine without a GPU is diagnostic E0911, never a panic.

use std::path::Path;
use std::process::Command;

fn lorac(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loraC"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run loraC");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn have_assets() -> bool {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/minilm/model.safetensors")
        .is_file()
}

#[test]
fn emit_cuda_writes_kernels_and_launch_plans() {
    if !have_assets() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let dir = std::env::temp_dir().join(format!("lorac-emit-cuda-{}", std::process::id()));
    let d = dir.to_string_lossy().into_owned();
    let (code, err) = lorac(&["compile", "examples/lora.lora", "--emit", "cuda", "-o", &d]);
    assert_eq!(code, 0, "{err}");
    for prog in ["grad", "eval", "update"] {
        let src = std::fs::read_to_string(dir.join(prog).join("kernels.cu")).expect("kernels.cu");
        let plan: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(prog).join("launch_plan.json")).expect("plan"),
        )
        .expect("launch plan is JSON");
        let steps = plan["steps"].as_array().expect("steps");
        assert!(!steps.is_empty());
        for s in steps {
            if s["kind"] == "kernel" {
                let f = s["function"].as_str().expect("function");
                assert!(
                    src.contains(&format!("void {f}(")),
                    "{prog}: {f} not in kernels.cu"
                );
            }
        }
        if prog == "grad" {
            assert!(
                steps.iter().any(|s| s["kind"] == "gemm"),
                "grad has products"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (code, err) = lorac(&["compile", "examples/lora.lora", "--emit", "cuda"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn backend_cuda_without_a_gpu_is_a_coded_diagnostic() {
    if !have_assets() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    let (code, err) = lorac(&[
        "infer",
        "examples/lora.lora",
        "--text",
        "hello",
        "--backend",
        "cuda",
        "--color",
        "never",
    ]);
    // With a GPU and CUDA 12 the run may succeed; without, E0911 with a help line.
    if code != 0 {
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("E0911") && err.contains("help:"), "{err}");
    }
}
