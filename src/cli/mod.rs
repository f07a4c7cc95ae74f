//! Subcommands of the `loraC` CLI. Exit codes: 0 ok (warnings allowed), 1 errors in the
//! input, 2 usage or I/O problems.

mod check;
mod explain;

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
    });
    result.unwrap_or(2)
}
