//! The diagnostic value every phase reports, and the sink that collects them.

use super::codes::Code;
use super::source::Span;

/// Error or warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Stops compilation.
    Error,
    /// Reported, compilation goes on.
    Warning,
}

/// A message attached to a span.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// Where.
    pub span: Span,
    /// What to say there.
    pub message: String,
}

/// One reported problem: a stable code, a message, labels and a concrete fix.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Stable code (`E0301`).
    pub code: Code,
    /// Error or warning.
    pub severity: Severity,
    /// One-line summary.
    pub message: String,
    /// The exact token the problem is at (absent for problems with no source text).
    pub primary: Option<Label>,
    /// The other side of a conflict.
    pub secondary: Vec<Label>,
    /// A concrete fix.
    pub help: Option<String>,
    /// A file the problem is about when there is no span (a weight file, a data file).
    pub file: Option<String>,
}

impl Diagnostic {
    /// A new error.
    pub fn error(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            primary: None,
            secondary: Vec::new(),
            help: None,
            file: None,
        }
    }
    /// A new warning.
    pub fn warning(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }
    /// Sets the primary label.
    pub fn at(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.primary = Some(Label {
            span,
            message: label.into(),
        });
        self
    }
    /// Adds a secondary label.
    pub fn also(mut self, span: Span, label: impl Into<String>) -> Diagnostic {
        self.secondary.push(Label {
            span,
            message: label.into(),
        });
        self
    }
    /// Sets the help line.
    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
    /// Names the file a span-less diagnostic is about.
    pub fn in_file(mut self, file: impl Into<String>) -> Diagnostic {
        self.file = Some(file.into());
        self
    }
    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Collects diagnostics from every phase; duplicates (same code, message and span) are dropped.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// An empty sink.
    pub fn new() -> Diagnostics {
        Diagnostics::default()
    }
    /// Reports one diagnostic. A second report of the same code at the same token is dropped
    /// (an adapter checked for several modules reports each problem once, from the first).
    pub fn push(&mut self, d: Diagnostic) {
        let dup = self.items.iter().any(|o| {
            o.code == d.code
                && match (&o.primary, &d.primary) {
                    (Some(a), Some(b)) => a.span == b.span,
                    (None, None) => o.message == d.message,
                    _ => false,
                }
        });
        if !dup {
            self.items.push(d);
        }
    }
    /// Number of errors so far.
    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }
    /// True when any error was reported.
    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }
    /// All diagnostics, sorted by file and position (errors without spans last).
    pub fn sorted(&self) -> Vec<Diagnostic> {
        let mut v = self.items.clone();
        v.sort_by_key(|d| match &d.primary {
            Some(l) => (0, l.span.file, l.span.start, l.span.end),
            None => (1, 0, 0, 0),
        });
        v
    }
    /// Diagnostics in report order.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }
    /// Number of diagnostics.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// True when nothing was reported.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Names close to `wanted` among `candidates`, best first (for "did you mean").
pub fn did_you_mean<'a>(
    wanted: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let wl = wanted.to_ascii_lowercase();
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        if c == wanted {
            continue;
        }
        let cl = c.to_ascii_lowercase();
        let score = if cl == wl {
            1.0
        } else {
            strsim::jaro_winkler(&wl, &cl)
        };
        let dist = strsim::levenshtein(&wl, &cl);
        let close = score >= 0.84 || dist <= (wanted.len().max(2) / 3).max(1);
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// "did you mean `x`?" as a help line, or the fallback.
pub fn suggest<'a>(
    wanted: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    fallback: impl Into<String>,
) -> String {
    match did_you_mean(wanted, candidates) {
        Some(c) => format!("did you mean `{c}`?"),
        None => fallback.into(),
    }
}
