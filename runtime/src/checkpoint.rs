//! Checkpoints: all trainable state and optimizer moments in one safetensors file whose header
//! also records the step, the run's horizon and its loss history, so one atomic rename
//! publishes all of it; and, on resume, the metrics log cut back to that step.

use crate::weights;
use lorac_compiler::ir::Tensor;
use std::collections::HashMap;
use std::path::Path;

/// The header key holding [`Meta`] as JSON.
const KEY: &str = "lorac.checkpoint";

/// A checkpoint's tensors by input name.
pub type State = HashMap<String, Tensor>;

/// Where a run stood when its checkpoint was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    /// Optimizer steps done.
    pub step: u64,
    /// The run's final step (the schedule's horizon).
    pub total: u64,
    /// The spec's seed.
    pub seed: u64,
    /// The spec file.
    pub spec: String,
    /// Training loss after every step so far (for the plot).
    pub history: Vec<(u64, f64)>,
    /// Eval losses so far.
    pub eval_history: Vec<(u64, f64)>,
}

impl Meta {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"step": self.step, "total": self.total, "seed": self.seed,
            "spec": self.spec, "history": self.history, "eval_history": self.eval_history})
    }

    fn from_json(v: &serde_json::Value) -> Option<Meta> {
        let pairs = |k: &str| -> Option<Vec<(u64, f64)>> {
            v.get(k)?
                .as_array()?
                .iter()
                .map(|p| Some((p.get(0)?.as_u64()?, p.get(1)?.as_f64()?)))
                .collect()
        };
        Some(Meta {
            step: v.get("step")?.as_u64()?,
            total: v.get("total")?.as_u64()?,
            seed: v.get("seed")?.as_u64()?,
            spec: v.get("spec")?.as_str()?.to_string(),
            history: pairs("history")?,
            eval_history: pairs("eval_history")?,
        })
    }
}

/// Writes `dir/state.safetensors` (state + meta, atomically) and then `dir/state.json`, a
/// readable summary that resuming does not depend on.
pub fn save(dir: &Path, state: &HashMap<String, Tensor>, meta: &Meta) -> Result<(), String> {
    let header = HashMap::from([(KEY.to_string(), meta.json().to_string())]);
    weights::save_atomic_meta(&dir.join("state.safetensors"), state, Some(header))?;
    let summary = serde_json::json!({"step": meta.step, "total": meta.total,
        "seed": meta.seed, "spec": meta.spec});
    weights::write_atomic(&dir.join("state.json"), summary.to_string().as_bytes())
}

/// The checkpoint in `dir`, or `None` when the run never wrote one.
pub fn load(dir: &Path) -> Result<Option<(State, Meta)>, String> {
    let file = dir.join("state.safetensors");
    if !file.exists() {
        return Ok(None);
    }
    let (state, header) = weights::load_with_meta(&file)?;
    let meta = header
        .get(KEY)
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| Meta::from_json(&v))
        .ok_or_else(|| format!("{}: no readable `{KEY}` header entry", file.display()))?;
    Ok(Some((state, meta)))
}

/// Keeps the lines of `metrics.jsonl` up to `step`: a killed run may have logged steps past
/// its last checkpoint, or died in the middle of a line; the resumed run logs them again.
pub fn trim_metrics(path: &Path, step: u64) -> Result<(), String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step")?.as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    weights::write_atomic(path, kept.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_through_the_header_and_metrics_are_cut_back() {
        let dir = std::env::temp_dir().join(format!("lorac-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let meta = Meta {
            step: 3,
            total: 9,
            seed: 42,
            spec: "x.lora".into(),
            history: vec![(1, 0.1 + 0.2), (2, 1.0 / 3.0), (3, 2.5e-7)],
            eval_history: vec![(3, 0.75)],
        };
        let state = HashMap::from([("a.A".to_string(), Tensor::f32(vec![2], vec![1.5, -2.0]))]);
        save(&dir, &state, &meta).unwrap();
        let (st, back) = load(&dir).unwrap().unwrap();
        assert_eq!(back, meta, "f64 losses survive JSON exactly");
        assert_eq!(st["a.A"].f(), &[1.5, -2.0]);
        assert!(load(&dir.join("none")).unwrap().is_none());

        let m = dir.join("metrics.jsonl");
        std::fs::write(
            &m,
            "{\"step\":2,\"loss\":1}\n{\"step\":3,\"eval_loss\":2}\n{\"step\":4,\"loss\":3}\n{\"step\":5,\"lo",
        )
        .unwrap();
        trim_metrics(&m, 3).unwrap();
        assert_eq!(
            std::fs::read_to_string(&m).unwrap(),
            "{\"step\":2,\"loss\":1}\n{\"step\":3,\"eval_loss\":2}\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
