//! Every kernel loraC generates for every example with a train block (gradient, evaluation and
//! update programs at batch 2 × 16 tokens) compiles with NVRTC to PTX for sm_80 and sm_90, and
//! `ptxas` assembles that PTX. No GPU is needed: CI installs NVIDIA's NVRTC and nvcc wheels
//! into `.cache/cuda` (scripts/test) and puts libnvrtc on `LD_LIBRARY_PATH`.
//!
//! Skipped, with a message, when libnvrtc cannot be loaded or the assets are missing. `ptxas`
//! is `$LORAC_PTXAS`, else `$LORAC_NVRTC_DIR/../../cuda_nvcc/bin/ptxas`, else the cached wheel's.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use lorac_compiler::build::{programs, Geometry};
use lorac_compiler::check::check_file;
use lorac_compiler::lower::cuda::{self, NVRTC_OPTIONS};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::TRAINABLE_EXAMPLES as EXAMPLES;

fn ptxas(root: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("LORAC_PTXAS") {
        return p.into();
    }
    if let Some(d) = std::env::var_os("LORAC_NVRTC_DIR") {
        return Path::new(&d).join("../../cuda_nvcc/bin/ptxas");
    }
    root.join(".cache/cuda/nvidia/cuda_nvcc/bin/ptxas")
}

#[test]
fn every_generated_kernel_compiles_with_nvrtc_and_ptxas() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !root.join("assets/minilm/model.safetensors").is_file() {
        eprintln!("skipped: run scripts/fetch-assets first");
        return;
    }
    // SAFETY: only tries to open the library.
    let nvrtc = std::panic::catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() });
    if !matches!(nvrtc, Ok(true)) {
        eprintln!(
            "skipped: libnvrtc.so.12 not loadable; run scripts/test (installs it into .cache/cuda) \
             or put CUDA 12's lib directory on LD_LIBRARY_PATH"
        );
        return;
    }
    let ptxas = ptxas(&root);
    assert!(
        ptxas.is_file(),
        "NVRTC loads but ptxas is missing at {} (set LORAC_PTXAS)",
        ptxas.display()
    );
    let tmp = std::env::temp_dir().join(format!("lorac-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let geo = Geometry { batch: 2, seq: 16 };
    let t0 = std::time::Instant::now();
    let (mut t_nvrtc, mut kernels, mut distinct) = (0f64, 0usize, 0usize);
    // ptxas runs in the background while NVRTC compiles the next module (at most one behind).
    let mut pending: Vec<(String, std::process::Child)> = vec![];
    let wait = |(what, c): (String, std::process::Child)| {
        let out = c.wait_with_output().expect("ptxas");
        assert!(
            out.status.success(),
            "{what}: ptxas failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for name in EXAMPLES {
        let spec = check_file(&root.join(format!("examples/{name}.lora")))
            .spec
            .unwrap_or_else(|| panic!("{name} checks clean"));
        let spec = lorac_runtime::alloc::resolved(&spec)
            .unwrap_or_else(|d| panic!("{name}: {}", d.message));
        let cfg = spec.train.as_ref().expect("train block");
        let t =
            programs::train_graphs(&spec, cfg, geo).unwrap_or_else(|e| panic!("{name}: {}", e.0));
        for (prog, g) in [("grad", &t.grad), ("eval", &t.eval), ("update", &t.update)] {
            let em =
                cuda::emit(g, "kernels.cu").unwrap_or_else(|e| panic!("{name}/{prog}: {}", e.0));
            kernels += em.plan.kernels.len();
            let mut f = em.function.clone();
            f.sort_unstable();
            f.dedup();
            distinct += f.len();
            for arch in ["sm_80", "sm_90"] {
                let t1 = std::time::Instant::now();
                let opts = CompileOptions {
                    arch: Some(arch),
                    options: NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                };
                let ptx = compile_ptx_with_opts(&em.source, opts)
                    .unwrap_or_else(|e| panic!("{name}/{prog} {arch}: NVRTC: {e}"));
                t_nvrtc += t1.elapsed().as_secs_f64();
                let file = tmp.join(format!("{name}-{prog}-{arch}.ptx"));
                std::fs::write(&file, ptx.to_src()).expect("write ptx");
                let child = Command::new(&ptxas)
                    .arg(format!("-arch={arch}"))
                    .arg(&file)
                    .arg("-o")
                    .arg(file.with_extension("cubin"))
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("run ptxas");
                if !pending.is_empty() {
                    wait(pending.remove(0));
                }
                pending.push((format!("{name}/{prog} {arch}"), child));
            }
        }
    }
    pending.into_iter().for_each(wait);
    eprintln!(
        "{kernels} kernels ({distinct} distinct functions; {} examples × 3 programs) for sm_80 and sm_90: NVRTC {t_nvrtc:.1} s, total with ptxas {:.1} s",
        EXAMPLES.len(),
        t0.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
