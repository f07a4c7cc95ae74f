//! Causal-LM rows: prompt + completion (+ EOS) token ids and each position's next-token
//! target, with the prompt masked unless the spec trains on inputs.

/// Joins `prompt` and `completion` ids (then `eos`), truncates to `max_len`, and returns the
/// ids and, per position `t`, the id at `t + 1`, or `ignore` where no loss applies: the
/// prompt's own tokens (unless `train_on_inputs`) and the last position.
pub fn lm_row(
    prompt: &[i64],
    completion: &[i64],
    eos: Option<i64>,
    max_len: usize,
    train_on_inputs: bool,
    ignore: i64,
) -> (Vec<i64>, Vec<i64>) {
    let mut ids: Vec<i64> = prompt.iter().chain(completion).copied().collect();
    ids.extend(eos);
    ids.truncate(max_len);
    let labels = (0..ids.len())
        .map(|t| match ids.get(t + 1) {
            Some(&next) if train_on_inputs || t + 1 >= prompt.len() => next,
            _ => ignore,
        })
        .collect();
    (ids, labels)
}

#[cfg(test)]
mod tests {
    use super::lm_row;

    #[test]
    fn prompt_is_masked_and_targets_are_shifted() {
        // BOS=1, prompt tokens 10 11, completion 20 21, EOS=2.
        let (ids, labels) = lm_row(&[1, 10, 11], &[20, 21], Some(2), 16, false, -100);
        assert_eq!(ids, vec![1, 10, 11, 20, 21, 2]);
        // Position 2 (the last prompt token) predicts the first completion token.
        assert_eq!(labels, vec![-100, -100, 20, 21, 2, -100]);
    }

    #[test]
    fn train_on_inputs_scores_the_prompt_too() {
        let (_, labels) = lm_row(&[1, 10, 11], &[20], None, 16, true, -7);
        assert_eq!(labels, vec![10, 11, 20, -7]);
    }

    #[test]
    fn truncation_keeps_targets_inside_the_window() {
        let (ids, labels) = lm_row(&[1, 10], &[20, 21, 22], Some(2), 4, false, -100);
        assert_eq!(ids, vec![1, 10, 20, 21]);
        assert_eq!(labels, vec![-100, 20, 21, -100]);
        // A prompt that fills the window leaves nothing to learn.
        let (_, labels) = lm_row(&[1, 10, 11, 12], &[20], None, 3, false, -100);
        assert!(labels.iter().all(|&l| l == -100));
    }
}
