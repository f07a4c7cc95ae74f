//! Renders diagnostics: miette's graphical report for people, JSON for tools.

use super::diagnostic::{Diagnostic, Severity};
use super::source::{SourceMap, Span};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use serde_json::{json, Value};

/// How to draw the graphical report.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// ANSI colours (terminals) or plain text (golden files, pipes).
    pub color: bool,
    /// Wrap width.
    pub width: usize,
}

impl Default for Style {
    fn default() -> Style {
        Style {
            color: false,
            width: 100,
        }
    }
}

/// A diagnostic bound to its source text, in the shape miette renders.
#[derive(Debug)]
struct Bound {
    message: String,
    code: String,
    severity: miette::Severity,
    help: Option<String>,
    labels: Vec<LabeledSpan>,
    source: Option<NamedSource<String>>,
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Bound {}

impl miette::Diagnostic for Bound {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(&self.code))
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(self.severity)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labels.iter().cloned()))
        }
    }
}

fn source_span(span: Span) -> SourceSpan {
    SourceSpan::new((span.start as usize).into(), span.len())
}

fn location(map: &SourceMap, span: Span) -> String {
    let (l, c) = map.line_col(span.file, span.start);
    format!("{}:{l}:{c}", map.get(span.file).name)
}

fn bind(map: &SourceMap, d: &Diagnostic) -> Bound {
    let mut labels = Vec::new();
    let mut notes = Vec::new();
    let file = d.primary.as_ref().map(|l| l.span.file);
    if let Some(p) = &d.primary {
        labels.push(LabeledSpan::new_primary_with_span(
            Some(p.message.clone()),
            source_span(p.span),
        ));
    }
    for s in &d.secondary {
        if Some(s.span.file) == file {
            labels.push(LabeledSpan::new_with_span(
                Some(s.message.clone()),
                source_span(s.span),
            ));
        } else {
            notes.push(format!("{} (at {})", s.message, location(map, s.span)));
        }
    }
    let mut message = d.message.clone();
    if d.primary.is_none() {
        if let Some(f) = &d.file {
            message = format!("{f}: {message}");
        }
    }
    let mut help = d.help.clone();
    if !notes.is_empty() {
        let joined = notes.join("; ");
        help = Some(match help {
            Some(h) => format!("{h}\nnote: {joined}"),
            None => format!("note: {joined}"),
        });
    }
    let source = file.map(|f| {
        let sf = map.get(f);
        NamedSource::new(sf.name.clone(), sf.text.clone())
    });
    Bound {
        message,
        code: d.code.0.to_string(),
        severity: match d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        },
        help,
        labels,
        source,
    }
}

/// Renders one diagnostic as miette's graphical report.
pub fn render(map: &SourceMap, d: &Diagnostic, style: Style) -> String {
    let theme = if style.color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(style.width)
        .with_links(false);
    let mut out = String::new();
    let bound = bind(map, d);
    if handler.render_report(&mut out, &bound).is_err() {
        out = format!("{}[{}]: {}\n", severity_word(d.severity), d.code, d.message);
    }
    out
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

fn span_json(map: &SourceMap, span: Span) -> (String, usize, usize, usize, usize) {
    let (line, column) = map.line_col(span.file, span.start);
    let (end_line, end_column) = map.line_col(span.file, span.end);
    (
        map.get(span.file).name.clone(),
        line,
        column,
        end_line,
        end_column,
    )
}

/// One diagnostic as a JSON object (`code`, `severity`, `message`, `file`, `line`, `column`, `labels`, `help`).
pub fn to_json(map: &SourceMap, d: &Diagnostic) -> Value {
    let (file, line, column, end_line, end_column) = match &d.primary {
        Some(p) => {
            let (f, l, c, el, ec) = span_json(map, p.span);
            (Some(f), Some(l), Some(c), Some(el), Some(ec))
        }
        None => (d.file.clone(), None, None, None, None),
    };
    let mut labels = Vec::new();
    for (primary, l) in d
        .primary
        .iter()
        .map(|l| (true, l))
        .chain(d.secondary.iter().map(|l| (false, l)))
    {
        let (f, line, column, end_line, end_column) = span_json(map, l.span);
        labels.push(json!({
            "message": l.message, "file": f, "line": line, "column": column,
            "end_line": end_line, "end_column": end_column, "primary": primary,
        }));
    }
    json!({
        "code": d.code.0,
        "severity": severity_word(d.severity),
        "message": d.message,
        "file": file,
        "line": line,
        "column": column,
        "end_line": end_line,
        "end_column": end_column,
        "labels": labels,
        "help": d.help,
    })
}

/// A one-line summary such as `error: 3 errors, 1 warning`.
pub fn summary(errors: usize, warnings: usize) -> String {
    fn plural(n: usize, w: &str) -> String {
        format!("{n} {w}{}", if n == 1 { "" } else { "s" })
    }
    format!(
        "{}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    )
}
