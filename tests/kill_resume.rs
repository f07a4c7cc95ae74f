//! A real `loraC train` process killed (SIGKILL) at random instants never leaves a checkpoint
//! that cannot be resumed, and `--resume` then ends bit-identical to an uninterrupted run:
//! the same adapter bytes and the same logged losses, learning rates and eval metrics.
//! Checkpoints are written after every step, so kills also land inside checkpoint writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const SPEC: &str = "examples/causal_lm.lora";
const STEPS: &str = "60";

fn train(out: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loraC"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["train", SPEC, "--steps", STEPS, "--checkpoint-every", "1"])
        .arg(if resume { "--resume" } else { "--out" })
        .arg(out)
        .args(["--color", "never"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run(mut c: Command) {
    let o = c.output().expect("run loraC");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The metrics log without the wall-clock field.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v
        })
        .collect()
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lorac-kill-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn killed_runs_resume_bit_identical() {
    let full = tmp("full");
    let t0 = Instant::now();
    run(train(&full, false));
    let span = t0.elapsed().as_secs_f64();
    let want_adapter = std::fs::read(full.join("adapter/adapter.safetensors")).unwrap();
    let want_metrics = metrics(&full);
    // Kill instants spread over the run, from a time-derived seed printed for reproduction.
    let mut x = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill seed {x}, uninterrupted run {span:.2} s");
    for trial in 0..5 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let frac = 0.1 + 0.8 * (x % 1000) as f64 / 1000.0;
        let part = tmp(&format!("part{trial}"));
        let mut child = train(&part, false).spawn().unwrap();
        std::thread::sleep(Duration::from_secs_f64(span * frac));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let ckpt = part.join("checkpoint");
        let step = lorac_runtime::checkpoint::load(&ckpt)
            .unwrap_or_else(|e| panic!("trial {trial} ({frac:.2}): corrupt checkpoint: {e}"))
            .map(|(_, m)| m.step);
        eprintln!(
            "trial {trial}: killed at {frac:.2} of the run ({status}), checkpoint step {step:?}"
        );
        run(train(&part, true));
        let got = std::fs::read(part.join("adapter/adapter.safetensors")).unwrap();
        assert!(got == want_adapter, "trial {trial}: adapter bytes differ");
        assert_eq!(
            metrics(&part),
            want_metrics,
            "trial {trial}: metrics differ"
        );
        let _ = std::fs::remove_dir_all(&part);
    }
    let _ = std::fs::remove_dir_all(&full);
}
