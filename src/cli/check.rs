//! `loraC check FILE...`.

use super::{Color, Format};
use lorac_compiler::check::{check_file, Checked};
use lorac_compiler::diag::render::{render, summary, to_json, Style};
use lorac_compiler::diag::{codes, Severity};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Whether stderr gets colour.
pub fn use_color(c: Color) -> bool {
    match c {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

/// Prints a checked spec's diagnostics; returns (errors, warnings, io_error).
pub fn report(
    checked: &Checked,
    format: Format,
    color: bool,
    json: &mut Vec<serde_json::Value>,
) -> (usize, usize, bool) {
    let mut errors = 0;
    let mut warnings = 0;
    let mut io = false;
    for d in checked.diagnostics.sorted() {
        match d.severity {
            Severity::Error => errors += 1,
            Severity::Warning => warnings += 1,
        }
        io |= d.code == codes::IO;
        match format {
            Format::Json => json.push(to_json(&checked.sources, &d)),
            Format::Text => eprint!(
                "{}",
                render(&checked.sources, &d, Style { color, width: 100 })
            ),
        }
    }
    (errors, warnings, io)
}

/// Runs the check command.
pub fn run(files: &[PathBuf], format: Format, color: crate::cli::Color) -> i32 {
    let color = use_color(color);
    let mut json = Vec::new();
    let (mut any_err, mut any_io) = (false, false);
    for f in files {
        let checked = check_file(f);
        let (e, w, io) = report(&checked, format, color, &mut json);
        any_err |= e > 0;
        any_io |= io;
        if format == Format::Text {
            let modules = checked
                .spec
                .as_ref()
                .map(|s| s.attachments.len())
                .unwrap_or(0);
            if e == 0 {
                eprintln!(
                    "ok: {} ({modules} modules adapted; {})",
                    f.display(),
                    summary(e, w)
                );
            } else {
                eprintln!("failed: {} ({})", f.display(), summary(e, w));
            }
        }
    }
    if format == Format::Json {
        super::out(&(serde_json::to_string_pretty(&json).unwrap_or_else(|_| "[]".into()) + "\n"));
    }
    if any_io {
        2
    } else if any_err {
        1
    } else {
        0
    }
}

/// Checks a spec and prints its diagnostics; the spec when it has no errors, else the exit code
/// (1 for errors in the input, 2 when a file could not be read).
pub fn checked_spec(path: &Path, color: bool) -> Result<lorac_compiler::check::Spec, i32> {
    let c = check_file(path);
    let mut sink = Vec::new();
    let (errors, _, io) = report(&c, Format::Text, color, &mut sink);
    c.spec.filter(|_| errors == 0).ok_or(if io { 2 } else { 1 })
}

/// Prints a diagnostic that has no source text (runtime errors); returns the exit code.
pub fn show_error(d: &lorac_compiler::diag::Diagnostic, format: Format, color: bool) -> i32 {
    let map = lorac_compiler::diag::SourceMap::new();
    match format {
        Format::Json => eprintln!("{}", serde_json::Value::Array(vec![to_json(&map, d)])),
        Format::Text => eprint!("{}", render(&map, d, Style { color, width: 100 })),
    }
    if d.code == codes::IO {
        2
    } else {
        1
    }
}
