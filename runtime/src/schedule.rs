//! Learning-rate schedules (Hugging Face semantics: the factor for 0-based step t).

use lorac_compiler::check::train::{ScheduleConfig, ScheduleKind, Warmup};

/// The multiplier of the peak learning rate at step `t` of `total`.
pub fn factor(s: Option<&ScheduleConfig>, t: u64, total: u64) -> f64 {
    let Some(s) = s else { return 1.0 };
    let horizon = s.max_steps.unwrap_or(total).max(1);
    let w = match s.warmup {
        Warmup::Steps(n) => n,
        Warmup::Ratio(r) => (r * total as f64).ceil() as u64,
    };
    if t < w {
        return t as f64 / w.max(1) as f64;
    }
    match s.kind {
        ScheduleKind::Constant => 1.0,
        ScheduleKind::Linear => {
            (horizon.saturating_sub(t)) as f64 / (horizon.saturating_sub(w)).max(1) as f64
        }
        ScheduleKind::Cosine => {
            let p = (t - w) as f64 / (horizon.saturating_sub(w)).max(1) as f64;
            (0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos())).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: Warmup, max_steps: Option<u64>) -> ScheduleConfig {
        ScheduleConfig {
            kind,
            warmup,
            max_steps,
            selectors: vec![],
        }
    }

    #[test]
    fn warmup_then_linear_decay_matches_transformers() {
        let s = sched(ScheduleKind::Linear, Warmup::Steps(10), None);
        assert_eq!(factor(Some(&s), 0, 110), 0.0);
        assert_eq!(factor(Some(&s), 5, 110), 0.5);
        assert_eq!(factor(Some(&s), 10, 110), 1.0);
        assert_eq!(factor(Some(&s), 60, 110), 0.5);
        assert_eq!(factor(Some(&s), 110, 110), 0.0);
    }

    #[test]
    fn linear_with_decoupled_max_steps_ends_at_a_tenth() {
        // The Riemannian recipe: 2000 steps of a 2222-step linear decay end at ≈ 0.1×.
        let s = sched(ScheduleKind::Linear, Warmup::Steps(0), Some(2222));
        assert!((factor(Some(&s), 2000, 2000) - 222.0 / 2222.0).abs() < 1e-12);
    }

    #[test]
    fn cosine_with_ratio_warmup() {
        let s = sched(ScheduleKind::Cosine, Warmup::Ratio(0.1), None);
        assert_eq!(factor(Some(&s), 10, 100), 1.0);
        assert!((factor(Some(&s), 55, 100) - 0.5).abs() < 1e-12);
        assert!(factor(Some(&s), 100, 100).abs() < 1e-12);
        assert_eq!(factor(None, 7, 100), 1.0);
    }
}
