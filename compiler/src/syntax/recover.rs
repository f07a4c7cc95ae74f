//! Item-level error recovery: split a file into item chunks before parsing, so that
//! a file with three broken items reports three errors, and catch delimiter and
//! string problems with precise spans.

use crate::diag::{codes, Diagnostic, FileId, Span};

/// Keywords that start a top-level item.
pub const ITEM_KEYWORDS: &[&str] = &["import", "model", "adapter", "attach", "train"];

/// One item's text range, and whether its delimiters are sound.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// False when a delimiter or string problem was already reported for it.
    pub sound: bool,
}

/// Deepest bracket nesting one item may have. The parser, AST builder and checker recurse once
/// per level, so unbounded nesting would overflow the stack; deeper items are refused here.
pub const MAX_NESTING: usize = 64;

/// Most operators, brackets and expression keywords (`if`/`then`/`else`/`let`/`in`) one item
/// may hold: each can add a level to an expression tree (`1+1+…`, `- - -…`, `x^T^T…`,
/// `if … then if …`), which every later phase walks recursively. Sized so that even a debug
/// build on a 2 MiB thread does not overflow; real items hold well under 100.
pub const MAX_OPERATORS: usize = 512;

/// Refuses (once, making the chunk unsound so it is not parsed) an item past either limit.
fn too_complex(
    file: FileId,
    cur: &mut Option<Chunk>,
    at: usize,
    depth: usize,
    ops: usize,
    out: &mut Vec<Diagnostic>,
) {
    if depth <= MAX_NESTING && ops <= MAX_OPERATORS {
        return;
    }
    let Some(c) = cur.as_mut().filter(|c| c.sound) else {
        return;
    };
    c.sound = false;
    let msg = if depth > MAX_NESTING {
        format!("brackets nested more than {MAX_NESTING} deep")
    } else {
        format!("item has more than {MAX_OPERATORS} operators and brackets")
    };
    out.push(
        Diagnostic::error(codes::SYNTAX, msg)
            .at(Span::new(file, at, at + 1), "limit reached here")
            .help("split it up: name inner parts with `let`, or use several smaller items"),
    );
}

fn closer(open: u8) -> u8 {
    match open {
        b'(' => b')',
        b'[' => b']',
        _ => b'}',
    }
}

fn word_at(text: &[u8], i: usize) -> &str {
    let mut j = i;
    while j < text.len() && (text[j].is_ascii_alphanumeric() || text[j] == b'_') {
        j += 1;
    }
    std::str::from_utf8(&text[i..j]).unwrap_or("")
}

/// Splits `text` into item chunks and reports delimiter and string errors.
///
/// A new item starts at a line whose first token is an item keyword (at bracket depth 0,
/// or at column 0 at any depth), or at any word in column 0 at depth 0.
pub fn split(file: FileId, text: &str, out: &mut Vec<Diagnostic>) -> Vec<Chunk> {
    let b = text.as_bytes();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut stack: Vec<(u8, usize)> = Vec::new();
    let mut cur: Option<Chunk> = None;
    let mut line_start = true;
    let mut col0 = true;
    let mut i = 0;
    let mut ops = 0;
    let close_chunk = |cur: &mut Option<Chunk>,
                       stack: &mut Vec<(u8, usize)>,
                       chunks: &mut Vec<Chunk>,
                       end: usize,
                       out: &mut Vec<Diagnostic>| {
        if let Some(mut c) = cur.take() {
            if let Some(&(open, at)) = stack.first() {
                if c.sound {
                    let (o, at) = stack.last().copied().unwrap_or((open, at));
                    out.push(
                        Diagnostic::error(
                            codes::UNCLOSED_DELIMITER,
                            format!("unclosed `{}`", o as char),
                        )
                        .at(Span::new(file, at, at + 1), "opened here and never closed")
                        .help(format!(
                            "add the matching `{}` before the next item",
                            closer(o) as char
                        )),
                    );
                }
                c.sound = false;
            }
            c.end = end;
            chunks.push(c);
        }
        stack.clear();
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line_start = true;
                col0 = true;
                i += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' => {
                col0 = false;
                i += 1;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        let first_on_line = line_start;
        let at_col0 = col0;
        line_start = false;
        col0 = false;
        if c.is_ascii_alphabetic() || c == b'_' {
            let w = word_at(b, i);
            // `model.layers.*` on a continuation line is a module path, not the `model` keyword.
            let is_kw = ITEM_KEYWORDS.contains(&w) && b.get(i + w.len()) != Some(&b'.');
            let starts = cur.is_none()
                || (first_on_line && is_kw && (stack.is_empty() || at_col0))
                || (at_col0 && stack.is_empty() && b.get(i + w.len()) != Some(&b'.'));
            if starts {
                close_chunk(&mut cur, &mut stack, &mut chunks, i, out);
                cur = Some(Chunk {
                    start: i,
                    end: i,
                    sound: true,
                });
                ops = 0;
            }
            if matches!(w, "if" | "then" | "else" | "let" | "in") {
                ops += 1;
                too_complex(file, &mut cur, i, stack.len(), ops, out);
            }
            i += w.len().max(1);
            continue;
        }
        if cur.is_none() {
            cur = Some(Chunk {
                start: i,
                end: i,
                sound: true,
            });
            ops = 0;
        }
        if b"([{-+*/@<>!=^".contains(&c) {
            ops += 1;
            too_complex(file, &mut cur, i, stack.len(), ops, out);
        }
        match c {
            b'"' => {
                let start = i;
                i += 1;
                let mut closed = false;
                while i < b.len() && b[i] != b'\n' {
                    if b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'"' {
                        closed = true;
                        break;
                    }
                    i += 1;
                }
                if !closed {
                    out.push(
                        Diagnostic::error(codes::UNTERMINATED_STRING, "unterminated string")
                            .at(
                                Span::new(file, start, (i).min(b.len())),
                                "this string never ends",
                            )
                            .help("close the string with `\"` on the same line"),
                    );
                    if let Some(c) = cur.as_mut() {
                        c.sound = false;
                    }
                }
                i += 1;
                continue;
            }
            b'(' | b'[' | b'{' => {
                stack.push((c, i));
                too_complex(file, &mut cur, i, stack.len(), ops, out);
            }
            b')' | b']' | b'}' => match stack.pop() {
                Some((open, _)) if closer(open) == c => {}
                Some((open, at)) => {
                    out.push(
                        Diagnostic::error(
                            codes::UNEXPECTED_CLOSER,
                            format!("mismatched closing delimiter `{}`", c as char),
                        )
                        .at(
                            Span::new(file, i, i + 1),
                            format!("expected `{}` here", closer(open) as char),
                        )
                        .also(
                            Span::new(file, at, at + 1),
                            format!("`{}` opened here", open as char),
                        )
                        .help(format!(
                            "replace `{}` with `{}`",
                            c as char,
                            closer(open) as char
                        )),
                    );
                    // The mismatched closer still closes the innermost opener (already
                    // popped), so the enclosing `{ … }` stays balanced: no stray-`}` cascade.
                    if let Some(c) = cur.as_mut() {
                        c.sound = false;
                    }
                }
                None => {
                    out.push(
                        Diagnostic::error(
                            codes::UNEXPECTED_CLOSER,
                            format!("unexpected `{}`", c as char),
                        )
                        .at(Span::new(file, i, i + 1), "nothing is open here")
                        .help(format!("remove this `{}`", c as char)),
                    );
                    if let Some(c) = cur.as_mut() {
                        c.sound = false;
                    }
                }
            },
            _ => {}
        }
        // Advance by one whole character (the text may hold multi-byte UTF-8).
        i += text[i..]
            .chars()
            .next()
            .map(|ch| ch.len_utf8())
            .unwrap_or(1);
    }
    close_chunk(&mut cur, &mut stack, &mut chunks, b.len(), out);
    // Trim trailing whitespace/comments from each chunk's end for tidy spans.
    for c in &mut chunks {
        while c.end > c.start && b[c.end - 1].is_ascii_whitespace() {
            c.end -= 1;
        }
    }
    chunks
}
