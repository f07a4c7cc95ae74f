//! Subcommands of the `loraC` CLI. Exit codes: 0 ok (warnings allowed), 1 errors in the
//! input, 2 usage or I/O problems.

mod bench;
mod check;
mod compile;
mod emit_cuda;
mod explain;
mod export;
mod infer;
mod inspect;
mod report;
mod train;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Output format of diagnostics and reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable.
    Text,
    /// Machine-readable JSON.
    Json,
}

/// Which backend executes programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Fused Cranelift kernels and gemm (the default).
    Cpu,
    /// The reference interpreter (slow; the oracle the other backends are tested against).
    Reference,
    /// NVIDIA GPU: NVRTC-compiled kernels and cuBLAS (needs the driver and CUDA 12 libraries).
    Cuda,
}

impl From<BackendArg> for lorac_runtime::exec::Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Cpu => lorac_runtime::exec::Backend::Cpu,
            BackendArg::Reference => lorac_runtime::exec::Backend::Reference,
            BackendArg::Cuda => lorac_runtime::exec::Backend::Cuda,
        }
    }
}

/// When to colour output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Color {
    /// When stderr is a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Tensor printed by `infer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmitTensor {
    /// Last hidden state `[batch, seq, hidden]`.
    Hidden,
    /// Pooler output `[batch, hidden]`.
    Pooled,
    /// Task head output.
    Logits,
}

#[derive(Parser)]
#[command(
    name = "loraC",
    version,
    about = "A compiler for adapter architectures (LoRA, Mixture-of-LoRA-Experts)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check specs against their base models; print every diagnostic.
    Check {
        /// Spec files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Diagnostics format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Colour.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Run the forward pass on texts and print a tensor.
    Infer {
        /// Spec file.
        spec: PathBuf,
        /// Input text (repeat for a batch).
        #[arg(long = "text", required = true)]
        texts: Vec<String>,
        /// Which tensor.
        #[arg(long, value_enum, default_value = "pooled")]
        emit: EmitTensor,
        /// Trained adapter directory (holds adapter.safetensors).
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// Execution backend.
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Colour.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Build the spec's graph (forward, loss, gradients), optimize it, and print or write it;
    /// or (`--emit report`) report its parameters, FLOPs and memory.
    Compile {
        /// Spec file.
        spec: PathBuf,
        /// What to write.
        #[arg(long, value_enum, default_value = "ir")]
        emit: compile::EmitKind,
        /// Format of `--emit report`.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Print the graph after a pass: `after:build`, `after:simplify`, `after:reassoc`, `after:hoist_scale`, `after:cse`, `after:dce`, `after:all`.
        #[arg(long = "dump-ir")]
        dump_ir: Option<String>,
        /// Output file (default: stdout).
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// Sequences per batch to build for (default 2; a report: the train block's `batch`, else 1).
        #[arg(long)]
        batch: Option<usize>,
        /// Tokens per sequence to build for (default 16; a report: the train block's `max_len`, else 512).
        #[arg(long)]
        seq: Option<usize>,
        /// Only the forward graph (no loss, no gradients).
        #[arg(long)]
        forward_only: bool,
        /// Colour.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Train the spec: writes DIR/metrics.jsonl, DIR/loss.svg, DIR/adapter/, DIR/checkpoint/.
    Train {
        /// Spec file.
        spec: PathBuf,
        /// Output directory (default: runs/<spec name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the spec's length of training.
        #[arg(long)]
        steps: Option<u64>,
        /// Write a checkpoint every N steps (always at the end).
        #[arg(long = "checkpoint-every")]
        checkpoint_every: Option<u64>,
        /// Continue the run whose --out was DIR, to the same final step.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Execution backend.
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        /// Colour.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Evaluate a trained adapter: accuracy and F1 (classification) and loss.
    Eval {
        /// Spec file.
        spec: PathBuf,
        /// The adapter directory (DIR/adapter of a run).
        #[arg(long)]
        adapter: PathBuf,
        /// Evaluate on this file instead of the spec's dev set.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Execution backend.
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Colour.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Export a trained adapter to PEFT (adapter_model.safetensors + adapter_config.json).
    Export {
        /// The run's --out directory, or its adapter/ folder.
        dir: PathBuf,
        /// Output directory for PEFT's files.
        #[arg(long, required = true)]
        peft: PathBuf,
        /// The spec the adapter was trained with (default: the one adapter.json records).
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Colour.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Time whole training steps on full-length random sequences: median step, tokens/s,
    /// GFLOP/s (cost-report FLOPs), peak RSS, compile time.
    Bench {
        /// Spec file (needs a train block).
        spec: PathBuf,
        /// Timed steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Sequences per step.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Execution backend.
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Colour.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Explain an error code (`loraC explain E0301`); without a code, list them all.
    Explain {
        /// The code.
        code: Option<String>,
    },
    /// Summarise a base model, or (`--alpha`) compute AlphaLoRA's PL_Alpha_Hill of its weights.
    Inspect {
        /// Model directory (config.json, model.safetensors).
        model_dir: PathBuf,
        /// PL_Alpha_Hill per linear module and per layer.
        #[arg(long)]
        alpha: bool,
        /// Corrected Fix-finger lower bound 0.95·xmin2 (default: the released code's quirk).
        #[arg(long, requires = "alpha")]
        corrected: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Colour.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
}

/// Writes to stdout; a closed pipe (`loraC … | head`) ends output quietly instead of panicking.
pub fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Runs the CLI and returns the process exit code.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    // A panic is a compiler bug; report it as such instead of exiting 101.
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "internal compiler error: {info}\nplease report this with the input that caused it"
        );
    }));
    let result = std::panic::catch_unwind(|| match cli.command {
        Command::Check {
            files,
            format,
            color,
        } => check::run(&files, format, color),
        Command::Export {
            dir,
            peft,
            spec,
            format,
            color,
        } => export::run(&dir, &peft, spec.as_deref(), format, color),
        Command::Bench {
            spec,
            steps,
            warmup,
            batch,
            seq,
            backend,
            format,
            color,
        } => bench::run(
            &spec,
            lorac_runtime::bench::BenchOptions {
                steps,
                warmup,
                batch,
                seq,
                backend: backend.into(),
            },
            format,
            color,
        ),
        Command::Explain { code } => explain::run(code.as_deref()),
        Command::Train {
            spec,
            out,
            steps,
            checkpoint_every,
            resume,
            backend,
            color,
        } => train::run_train(
            &spec,
            train::RunOptions {
                out: out.as_deref(),
                steps,
                checkpoint_every,
                resume: resume.as_deref(),
                backend: backend.into(),
            },
            color,
        ),
        Command::Eval {
            spec,
            adapter,
            data,
            backend,
            format,
            color,
        } => train::run_eval(
            &spec,
            &adapter,
            data.as_deref(),
            backend.into(),
            format,
            color,
        ),
        Command::Inspect {
            model_dir,
            alpha,
            corrected,
            format,
            color,
        } => inspect::run(
            &model_dir,
            inspect::Options {
                alpha,
                corrected,
                format,
                color,
            },
        ),
        Command::Infer {
            spec,
            texts,
            emit,
            adapter,
            backend,
            format,
            color,
        } => {
            let emit = match emit {
                EmitTensor::Hidden => lorac_runtime::infer::Emit::Hidden,
                EmitTensor::Pooled => lorac_runtime::infer::Emit::Pooled,
                EmitTensor::Logits => lorac_runtime::infer::Emit::Logits,
            };
            infer::run(
                &spec,
                &texts,
                emit,
                adapter.as_deref(),
                backend.into(),
                format,
                color,
            )
        }
        Command::Compile {
            spec,
            emit,
            format,
            dump_ir,
            out,
            batch,
            seq,
            forward_only,
            color,
        } => {
            if batch == Some(0) || seq == Some(0) {
                eprintln!("error: --batch and --seq must be at least 1");
                return 2;
            }
            let report = emit == compile::EmitKind::Report;
            if format == Format::Json && !report {
                eprintln!("error: --format json applies to --emit report only");
                return 2;
            }
            if report && (dump_ir.is_some() || forward_only) {
                eprintln!("error: --dump-ir and --forward-only do not apply to --emit report");
                return 2;
            }
            let o = compile::Options {
                emit,
                format,
                dump: dump_ir.as_deref(),
                out: out.as_deref(),
                batch,
                seq,
                forward_only,
            };
            compile::run(&spec, o, color)
        }
    });
    result.unwrap_or(2)
}
