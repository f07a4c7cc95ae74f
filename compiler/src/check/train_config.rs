//! The checked `train` block: data, task, optimizers, schedules and run settings.

use crate::diag::Span;
use std::path::PathBuf;

/// Where the examples come from.
#[derive(Clone, Debug, PartialEq)]
pub struct DataConfig {
    /// Training file.
    pub train: PathBuf,
    /// Dev file.
    pub dev: Option<PathBuf>,
    /// Test file.
    pub test: Option<PathBuf>,
    /// Input field: the text, or the number list of a `linear` model (`text` or `input`).
    pub text: String,
    /// Label field.
    pub label: String,
}

/// What is learned.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// Sequence classification with a head on the pooled output.
    Classification {
        /// Number of classes.
        labels: usize,
        /// What the head reads: `pooler` (BERT's pooler output, as BertForSequenceClassification),
        /// `cls` (first token), `mean` (masked mean), `last` (last non-padding token).
        pooling: String,
    },
    /// Scalar regression.
    Regression,
    /// Next-token prediction.
    CausalLm {
        prompt: String,
        completion: String,
        train_on_inputs: bool,
        ignore_index: i64,
    },
}

/// Optimizer update rule.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerKind {
    /// AdamW with decoupled weight decay.
    AdamW {
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
        bias_correction: bool,
    },
    /// SGD with optional momentum.
    Sgd { momentum: f64, weight_decay: f64 },
}

/// Riemannian preconditioning of (A, B) pairs (methods.md §4.1).
#[derive(Clone, Debug, PartialEq)]
pub struct Riemannian {
    /// Names of the paired factors.
    pub pairs: (String, String),
    /// Damping δ.
    pub damping: f64,
}

/// One optimizer and the tensors it updates.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerConfig {
    /// Rule.
    pub kind: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Preconditioning.
    pub precondition: Option<Riemannian>,
    /// Selected tensors; empty = the default optimizer.
    pub selectors: Vec<String>,
    /// Where written.
    pub span: Span,
}

/// Learning-rate schedule.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleKind {
    /// Constant after warmup.
    Constant,
    /// Linear decay to 0 at `max_steps`.
    Linear,
    /// Cosine decay to 0.
    Cosine,
}

/// Warmup length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Warmup {
    /// Fraction of the total steps.
    Ratio(f64),
    /// Fixed steps.
    Steps(u64),
}

/// A schedule and the tensors it applies to.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleConfig {
    /// Shape of the curve.
    pub kind: ScheduleKind,
    /// Warmup.
    pub warmup: Warmup,
    /// Decay horizon (defaults to the run's steps).
    pub max_steps: Option<u64>,
    /// Selected tensors; empty = default.
    pub selectors: Vec<String>,
}

/// How long to train.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Duration {
    /// Optimizer steps.
    Steps(u64),
    /// Passes over the training data.
    Epochs(u64),
}

/// Evaluation cadence.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalConfig {
    /// Every N steps.
    pub every: u64,
    /// Metric name.
    pub metric: String,
}

/// A checked `train` block.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Data.
    pub data: DataConfig,
    /// Task.
    pub task: Task,
    /// Optimizers.
    pub optimizers: Vec<OptimizerConfig>,
    /// Schedules.
    pub schedules: Vec<ScheduleConfig>,
    /// Examples per step.
    pub batch: u64,
    /// Tokens per example.
    pub max_len: u64,
    /// Length of the run.
    pub duration: Duration,
    /// RNG seed.
    pub seed: u64,
    /// Gradient accumulation steps.
    pub accumulate: u64,
    /// Gradient-norm clipping: (max norm, selectors).
    pub clip: Vec<(f64, Vec<String>)>,
    /// Evaluation.
    pub eval: Option<EvalConfig>,
    /// Log every N steps.
    pub log_every: u64,
}
