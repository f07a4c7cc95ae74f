//! Subcommands of the `loraC` CLI. Exit codes: 0 ok (warnings allowed), 1 errors in the
//! input, 2 usage or I/O problems.

mod check;
mod compile;
mod explain;
mod infer;

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
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Colour.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Build the spec's graph (forward, loss, gradients), optimize it, and print or write it.
    Compile {
        /// Spec file.
        spec: PathBuf,
        /// What to write.
        #[arg(long, value_enum, default_value = "ir")]
        emit: compile::EmitKind,
        /// Print the graph after a pass: `after:build`, `after:simplify`, `after:cse`, `after:dce`, `after:all`.
        #[arg(long = "dump-ir")]
        dump_ir: Option<String>,
        /// Output file (default: stdout).
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        /// Sequences per batch to build for.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Tokens per sequence to build for.
        #[arg(long, default_value_t = 16)]
        seq: usize,
        /// Only the forward graph (no loss, no gradients).
        #[arg(long)]
        forward_only: bool,
        /// Colour.
        #[arg(long, value_enum, default_value = "auto")]
        color: Color,
    },
    /// Explain an error code (`loraC explain E0301`); without a code, list them all.
    Explain {
        /// The code.
        code: Option<String>,
    },
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
        Command::Explain { code } => explain::run(code.as_deref()),
        Command::Infer {
            spec,
            texts,
            emit,
            adapter,
            format,
            color,
        } => {
            let emit = match emit {
                EmitTensor::Hidden => lorac_runtime::infer::Emit::Hidden,
                EmitTensor::Pooled => lorac_runtime::infer::Emit::Pooled,
                EmitTensor::Logits => lorac_runtime::infer::Emit::Logits,
            };
            infer::run(&spec, &texts, emit, adapter.as_deref(), format, color)
        }
        Command::Compile {
            spec,
            emit,
            dump_ir,
            out,
            batch,
            seq,
            forward_only,
            color,
        } => {
            if batch == 0 || seq == 0 {
                eprintln!("error: --batch and --seq must be at least 1");
                return 2;
            }
            let o = compile::Options {
                emit,
                dump: dump_ir.as_deref(),
                out: out.as_deref(),
                geo: lorac_compiler::build::Geometry { batch, seq },
                forward_only,
            };
            compile::run(&spec, o, color)
        }
    });
    result.unwrap_or(2)
}
