//! pest → AST. Each item chunk (see [`super::recover`]) is parsed on its own.

use super::ast::*;
use super::recover::{self, ITEM_KEYWORDS};
use crate::diag::{codes, suggest, Diagnostic, FileId, Span};
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "../../grammar/lora.pest"]
struct LoraParser;

pub use self::Rule as GrammarRule;

fn pratt() -> &'static PrattParser<Rule> {
    static P: OnceLock<PrattParser<Rule>> = OnceLock::new();
    P.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::op_eq, Assoc::Left)
                | Op::infix(Rule::op_ne, Assoc::Left)
                | Op::infix(Rule::op_lt, Assoc::Left)
                | Op::infix(Rule::op_le, Assoc::Left)
                | Op::infix(Rule::op_gt, Assoc::Left)
                | Op::infix(Rule::op_ge, Assoc::Left))
            .op(Op::infix(Rule::op_add, Assoc::Left) | Op::infix(Rule::op_sub, Assoc::Left))
            .op(Op::infix(Rule::op_mul, Assoc::Left)
                | Op::infix(Rule::op_div, Assoc::Left)
                | Op::infix(Rule::op_floordiv, Assoc::Left)
                | Op::infix(Rule::op_matmul, Assoc::Left))
            .op(Op::prefix(Rule::neg))
            .op(Op::infix(Rule::op_pow, Assoc::Right))
    })
}

/// Parses a whole file with item-level recovery; errors go to `out`.
pub fn parse_file(file: FileId, text: &str, out: &mut Vec<Diagnostic>) -> File {
    let chunks = recover::split(file, text, out);
    let mut items = Vec::new();
    for c in chunks {
        if !c.sound {
            continue;
        }
        let src = &text[c.start..c.end];
        if src.trim().is_empty() {
            continue;
        }
        if let Some(d) = unknown_item(file, src, c.start) {
            out.push(d);
            continue;
        }
        match LoraParser::parse(Rule::item_only, src) {
            Ok(mut pairs) => {
                let b = Builder {
                    file,
                    base: c.start,
                };
                let top = pairs.next().and_then(|p| p.into_inner().next());
                match top.map(|p| b.item(p)) {
                    Some(Ok(item)) => items.push(item),
                    Some(Err(d)) => out.push(*d),
                    None => {}
                }
            }
            Err(e) => out.push(syntax_error(file, src, c.start, &e)),
        }
    }
    File { items }
}

fn unknown_item(file: FileId, src: &str, base: usize) -> Option<Diagnostic> {
    let word: String = src
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if word.is_empty() || ITEM_KEYWORDS.contains(&word.as_str()) {
        return None;
    }
    let help = suggest(
        &word,
        ITEM_KEYWORDS.iter().copied(),
        "a file holds only `import`, `model`, `adapter`, `attach` and `train` items; indent lines that continue an item",
    );
    Some(
        Diagnostic::error(
            codes::UNKNOWN_ITEM,
            format!("expected an item, found `{word}`"),
        )
        .at(
            Span::new(file, base, base + word.len()),
            "not an item keyword",
        )
        .help(help),
    )
}

fn rule_name(r: &Rule) -> Option<&'static str> {
    Some(match r {
        Rule::ident | Rule::word => "a name",
        Rule::expr | Rule::binary | Rule::postfix | Rule::call | Rule::paren | Rule::list => {
            "an expression"
        }
        Rule::number | Rule::int | Rule::float => "a number",
        Rule::string => "a string",
        Rule::call_args | Rule::param_list => "`(`",
        Rule::block => "`{`",
        Rule::base_dims | Rule::dims => "`[`",
        Rule::kw_on => "`on`",
        Rule::kw_to => "`to`",
        Rule::kw_in => "`in`",
        Rule::pattern | Rule::pat_seg | Rule::pat_text | Rule::pat_alt => "a module pattern",
        Rule::let_stmt
        | Rule::param_stmt
        | Rule::experts_stmt
        | Rule::init_stmt
        | Rule::out_stmt
        | Rule::aux_stmt => "a statement (`let`, `param`, `experts`, `init`, `out`, `aux`)",
        Rule::init_op => "`-=`, `+=` or `=`",
        Rule::train_entry | Rule::train_args | Rule::train_value => "a train setting",
        Rule::param_decl => "a parameter `name: type`",
        Rule::param_target => "a tensor `NAME[dims]`",
        Rule::import_item
        | Rule::model_item
        | Rule::adapter_item
        | Rule::attach_item
        | Rule::train_item => "an item",
        Rule::EOI => "the end of the item",
        Rule::bin_op
        | Rule::op_add
        | Rule::op_sub
        | Rule::op_mul
        | Rule::op_div
        | Rule::op_matmul => "an operator",
        Rule::transpose => "`^T`",
        Rule::index => "`[`",
        Rule::module_path => "a module path",
        Rule::arg | Rule::named_arg => "an argument",
        _ => return None,
    })
}

fn found_token(src: &str, pos: usize) -> (String, usize) {
    let rest = &src[pos.min(src.len())..];
    let Some(c) = rest.chars().next() else {
        return ("end of item".into(), 0);
    };
    if c.is_ascii_alphanumeric() || c == '_' {
        let w: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        let len = w.len();
        (format!("`{w}`"), len)
    } else {
        (format!("`{c}`"), c.len_utf8())
    }
}

fn syntax_error(file: FileId, src: &str, base: usize, e: &pest::error::Error<Rule>) -> Diagnostic {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    let mut expected: Vec<&str> = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            positives.iter().filter_map(rule_name).collect()
        }
        pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
    };
    expected.sort();
    expected.dedup();
    let (found, len) = found_token(src, pos);
    let exp = match expected.len() {
        0 => "something else".to_string(),
        1 => expected[0].to_string(),
        _ => {
            let (last, init) = expected.split_last().unwrap_or((&"", &[]));
            format!("{} or {last}", init.join(", "))
        }
    };
    let len = len.max(1);
    let end = (base + pos + len).min(base + src.len()).max(base + pos);
    let help = if found == "end of item" {
        "the item ends too early; complete it, or check the line above for a missing part"
            .to_string()
    } else if found.starts_with("`=`") && expected.contains(&"`(`") {
        "named arguments go inside the parentheses: `f(name = value)`".to_string()
    } else {
        format!("write {exp} here")
    };
    Diagnostic::error(codes::SYNTAX, format!("expected {exp}, found {found}"))
        .at(Span::new(file, base + pos, end), format!("expected {exp}"))
        .help(help)
}

type R<T> = Result<T, Box<Diagnostic>>;

struct Builder {
    file: FileId,
    base: usize,
}

fn inner(p: Pair<'_, Rule>) -> impl Iterator<Item = Pair<'_, Rule>> {
    p.into_inner()
}

impl Builder {
    fn span(&self, p: &Pair<'_, Rule>) -> Span {
        let s = p.as_span();
        // Implicit whitespace after an optional tail (`param A[r, n]` + newline) is part of
        // the pair; labels must end at the last token, not on the next line.
        let len = s.as_str().trim_end().len();
        Span::new(
            self.file,
            self.base + s.start(),
            self.base + s.start() + len,
        )
    }

    fn ident(&self, p: Pair<'_, Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }

    fn item(&self, p: Pair<'_, Rule>) -> R<Item> {
        let span = self.span(&p);
        Ok(match p.as_rule() {
            Rule::import_item => {
                let t = inner(p).nth(1).expect("grammar: import target");
                let target_span = self.span(&t);
                let target = if t.as_rule() == Rule::string {
                    ImportTarget::Path(unescape(t.as_str()))
                } else {
                    ImportTarget::Module(t.as_str().to_string())
                };
                Item::Import(Import {
                    target,
                    target_span,
                    span,
                })
            }
            Rule::model_item => {
                let mut it = inner(p).skip(1);
                let family = self.ident(it.next().expect("grammar: family"));
                let args = self.args(it.next().expect("grammar: args"))?;
                Item::Model(ModelDecl { family, args, span })
            }
            Rule::adapter_item => self.adapter(p, span)?,
            Rule::attach_item => {
                let mut it = inner(p).skip(1).peekable();
                let adapter = self.ident(it.next().expect("grammar: adapter"));
                let mut args = Vec::new();
                if it.peek().map(|p| p.as_rule()) == Some(Rule::call_args) {
                    args = self.args(it.next().expect("peeked"))?;
                }
                let patterns = it
                    .filter(|p| p.as_rule() == Rule::pattern)
                    .map(|p| Pattern {
                        text: p.as_str().chars().filter(|c| !c.is_whitespace()).collect(),
                        span: self.span(&p),
                    })
                    .collect();
                Item::Attach(Attach {
                    adapter,
                    args,
                    patterns,
                    span,
                })
            }
            Rule::train_item => {
                let entries = inner(p)
                    .skip(1)
                    .map(|e| self.train_entry(e))
                    .collect::<R<Vec<_>>>()?;
                Item::Train(TrainBlock { entries, span })
            }
            r => unreachable!("grammar: unexpected item {r:?}"),
        })
    }

    fn adapter(&self, p: Pair<'_, Rule>, span: Span) -> R<Item> {
        let mut it = inner(p).skip(1);
        let name = self.ident(it.next().expect("grammar: name"));
        let params = inner(it.next().expect("grammar: params"))
            .map(|d| {
                let mut d = inner(d);
                let name = self.ident(d.next().expect("grammar: param name"));
                let ty = self.ident(d.next().expect("grammar: param type"));
                let default = d.next().map(|e| self.expr(e)).transpose()?;
                Ok(ParamDecl { name, ty, default })
            })
            .collect::<R<Vec<_>>>()?;
        let _on = it.next();
        let base = self.ident(it.next().expect("grammar: base"));
        let dims = it.next().expect("grammar: dims");
        let dims_span = self.span(&dims);
        let base_dims = inner(dims).map(|d| self.ident(d)).collect();
        let body = self.block(it.next().expect("grammar: block"))?;
        Ok(Item::Adapter(AdapterDef {
            name,
            params,
            base,
            base_dims,
            body,
            dims_span,
            span,
        }))
    }

    fn block(&self, p: Pair<'_, Rule>) -> R<Vec<Stmt>> {
        inner(p).map(|s| self.stmt(s)).collect()
    }

    fn stmt(&self, p: Pair<'_, Rule>) -> R<Stmt> {
        let span = self.span(&p);
        let rule = p.as_rule();
        let mut it = inner(p).skip(1);
        Ok(match rule {
            Rule::let_stmt => {
                let name = self.ident(it.next().expect("grammar: let name"));
                let value = self.expr(it.next().expect("grammar: let value"))?;
                Stmt::Let { name, value, span }
            }
            Rule::param_stmt => {
                let mut targets = Vec::new();
                let mut init = None;
                for q in it {
                    if q.as_rule() == Rule::param_target {
                        let tspan = self.span(&q);
                        let mut t = inner(q);
                        let name = self.ident(t.next().expect("grammar: param target"));
                        let mut expert = None;
                        let mut dims = Vec::new();
                        for x in t {
                            match x.as_rule() {
                                Rule::expert_index => {
                                    expert = inner(x).next().map(|i| self.ident(i))
                                }
                                _ => {
                                    dims = inner(x).map(|e| self.expr(e)).collect::<R<Vec<_>>>()?
                                }
                            }
                        }
                        targets.push(ParamTarget {
                            name,
                            expert,
                            dims,
                            span: tspan,
                        });
                    } else {
                        init = Some(self.expr(q)?);
                    }
                }
                Stmt::Param {
                    targets,
                    init,
                    span,
                }
            }
            Rule::experts_stmt => {
                let var = self.ident(it.next().expect("grammar: experts var"));
                let _in = it.next();
                let lo = self.expr(it.next().expect("grammar: lo"))?;
                let hi = self.expr(it.next().expect("grammar: hi"))?;
                let body = self.block(it.next().expect("grammar: body"))?;
                Stmt::Experts {
                    var,
                    lo,
                    hi,
                    body,
                    span,
                }
            }
            Rule::init_stmt => {
                let target = self.ident(it.next().expect("grammar: init target"));
                let op = match it.next().map(|o| o.as_str().to_string()).as_deref() {
                    Some("-=") => InitOp::Sub,
                    Some("+=") => InitOp::Add,
                    _ => InitOp::Set,
                };
                let value = self.expr(it.next().expect("grammar: init value"))?;
                Stmt::Init {
                    target,
                    op,
                    value,
                    span,
                }
            }
            Rule::out_stmt => Stmt::Out {
                value: self.expr(it.next().expect("grammar: out"))?,
                span,
            },
            Rule::aux_stmt => Stmt::Aux {
                value: self.expr(it.next().expect("grammar: aux"))?,
                span,
            },
            r => unreachable!("grammar: unexpected statement {r:?}"),
        })
    }

    fn train_entry(&self, p: Pair<'_, Rule>) -> R<TrainEntry> {
        let span = self.span(&p);
        let mut it = inner(p);
        let key = self.ident(it.next().expect("grammar: key"));
        let mut e = TrainEntry {
            key,
            args: None,
            value: None,
            precondition: None,
            selectors: Vec::new(),
            span,
        };
        for q in it {
            match q.as_rule() {
                Rule::train_args => {
                    e.args = Some(self.args(inner(q).next().expect("grammar: args"))?)
                }
                Rule::train_value => {
                    e.value = Some(self.expr(inner(q).next().expect("grammar: value"))?)
                }
                Rule::precondition => {
                    e.precondition =
                        Some(self.expr(inner(q).nth(1).expect("grammar: precondition"))?)
                }
                Rule::for_clause => e.selectors = inner(q).skip(1).map(|w| self.ident(w)).collect(),
                _ => {}
            }
        }
        Ok(e)
    }

    fn args(&self, p: Pair<'_, Rule>) -> R<Vec<Arg>> {
        inner(p)
            .map(|a| {
                let span = self.span(&a);
                let q = inner(a).next().expect("grammar: arg");
                if q.as_rule() == Rule::named_arg {
                    let mut n = inner(q);
                    let name = self.ident(n.next().expect("grammar: arg name"));
                    let value = self.expr(n.next().expect("grammar: arg value"))?;
                    Ok(Arg {
                        name: Some(name),
                        value,
                        span,
                    })
                } else {
                    Ok(Arg {
                        name: None,
                        value: self.expr(q)?,
                        span,
                    })
                }
            })
            .collect()
    }

    fn expr(&self, p: Pair<'_, Rule>) -> R<Expr> {
        let span = self.span(&p);
        let q = if p.as_rule() == Rule::expr {
            inner(p).next().expect("grammar: expr")
        } else {
            p
        };
        match q.as_rule() {
            Rule::lambda => {
                let mut it = inner(q);
                let param = self.ident(it.next().expect("grammar: lambda param"));
                let body = Box::new(self.expr(it.next().expect("grammar: lambda body"))?);
                Ok(Expr {
                    kind: ExprKind::Lambda { param, body },
                    span,
                })
            }
            Rule::if_expr => {
                let mut it = inner(q).filter(|x| x.as_rule() == Rule::expr);
                let cond = Box::new(self.expr(it.next().expect("grammar: cond"))?);
                let then = Box::new(self.expr(it.next().expect("grammar: then"))?);
                let otherwise = Box::new(self.expr(it.next().expect("grammar: else"))?);
                Ok(Expr {
                    kind: ExprKind::If {
                        cond,
                        then,
                        otherwise,
                    },
                    span,
                })
            }
            Rule::let_in => {
                let mut it =
                    inner(q).filter(|x| x.as_rule() != Rule::kw_let && x.as_rule() != Rule::kw_in);
                let name = self.ident(it.next().expect("grammar: name"));
                let value = Box::new(self.expr(it.next().expect("grammar: value"))?);
                let body = Box::new(self.expr(it.next().expect("grammar: body"))?);
                Ok(Expr {
                    kind: ExprKind::LetIn { name, value, body },
                    span,
                })
            }
            Rule::binary => self.binary(q),
            _ => self.postfix(q),
        }
    }

    fn binary(&self, p: Pair<'_, Rule>) -> R<Expr> {
        pratt()
            .map_primary(|q| self.postfix(q))
            .map_prefix(|op, rhs| {
                let rhs = rhs?;
                let span = self.span(&op).to(rhs.span);
                Ok(Expr {
                    kind: ExprKind::Neg(Box::new(rhs)),
                    span,
                })
            })
            .map_infix(|lhs, op, rhs| {
                let (lhs, rhs) = (lhs?, rhs?);
                let bop = match op.as_rule() {
                    Rule::op_add => BinOp::Add,
                    Rule::op_sub => BinOp::Sub,
                    Rule::op_mul => BinOp::Mul,
                    Rule::op_div => BinOp::Div,
                    Rule::op_floordiv => BinOp::FloorDiv,
                    Rule::op_matmul => BinOp::MatMul,
                    Rule::op_pow => BinOp::Pow,
                    Rule::op_eq => BinOp::Eq,
                    Rule::op_ne => BinOp::Ne,
                    Rule::op_lt => BinOp::Lt,
                    Rule::op_le => BinOp::Le,
                    Rule::op_gt => BinOp::Gt,
                    _ => BinOp::Ge,
                };
                let span = lhs.span.to(rhs.span);
                Ok(Expr {
                    kind: ExprKind::Binary {
                        op: bop,
                        op_span: self.span(&op),
                        lhs: Box::new(lhs),
                        rhs: Box::new(rhs),
                    },
                    span,
                })
            })
            .parse(inner(p))
    }

    fn postfix(&self, p: Pair<'_, Rule>) -> R<Expr> {
        if p.as_rule() != Rule::postfix {
            return self.primary(p);
        }
        let mut it = inner(p);
        let mut e = self.primary(it.next().expect("grammar: primary"))?;
        for s in it {
            let span = e.span.to(self.span(&s));
            e = match s.as_rule() {
                Rule::transpose => Expr {
                    kind: ExprKind::Transpose(Box::new(e)),
                    span,
                },
                _ => {
                    let index = self.expr(inner(s).next().expect("grammar: index"))?;
                    Expr {
                        kind: ExprKind::Index {
                            base: Box::new(e),
                            index: Box::new(index),
                        },
                        span,
                    }
                }
            };
        }
        Ok(e)
    }

    fn primary(&self, p: Pair<'_, Rule>) -> R<Expr> {
        let span = self.span(&p);
        let kind = match p.as_rule() {
            Rule::number => {
                let s = p.as_str();
                let q = inner(p).next().expect("grammar: number");
                if q.as_rule() == Rule::int {
                    match s.parse::<i64>() {
                        Ok(v) => ExprKind::Int(v),
                        Err(_) => {
                            return Err(Box::new(
                                Diagnostic::error(
                                    codes::BAD_NUMBER,
                                    format!("integer `{s}` is too large"),
                                )
                                .at(span, "does not fit in 64 bits")
                                .help("use a smaller integer, or a float such as `1e20`"),
                            ))
                        }
                    }
                } else {
                    match s.parse::<f64>() {
                        Ok(v) if v.is_finite() => ExprKind::Float(v),
                        _ => {
                            return Err(Box::new(
                                Diagnostic::error(
                                    codes::BAD_NUMBER,
                                    format!("number `{s}` is not a finite float"),
                                )
                                .at(span, "out of range")
                                .help("use a value between about -1.8e308 and 1.8e308"),
                            ))
                        }
                    }
                }
            }
            Rule::string => ExprKind::Str(unescape(p.as_str())),
            Rule::kw_true => ExprKind::Bool(true),
            Rule::kw_false => ExprKind::Bool(false),
            Rule::ident => ExprKind::Name(p.as_str().to_string()),
            Rule::call => {
                let mut it = inner(p);
                let func = self.ident(it.next().expect("grammar: func"));
                let args = self.args(it.next().expect("grammar: args"))?;
                ExprKind::Call { func, args }
            }
            Rule::paren => {
                let mut items = inner(p).map(|e| self.expr(e)).collect::<R<Vec<_>>>()?;
                if items.len() == 1 && !span_has_trailing_comma(&span, self, &items) {
                    let mut e = items.remove(0);
                    e.span = span;
                    return Ok(e);
                }
                ExprKind::Tuple(items)
            }
            Rule::list => ExprKind::List(inner(p).map(|e| self.expr(e)).collect::<R<Vec<_>>>()?),
            _ => return self.expr(p),
        };
        Ok(Expr { kind, span })
    }
}

fn span_has_trailing_comma(_span: &Span, _b: &Builder, _items: &[Expr]) -> bool {
    // `(a,)` is written so rarely in specs that a one-element tuple is just parentheses.
    false
}

/// Removes the quotes and resolves `\"`, `\\`, `\n`, `\t`.
fn unescape(s: &str) -> String {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses a whole text with the `file` rule, without recovery (for tests and tools).
pub fn parse_strict(text: &str) -> Result<(), String> {
    LoraParser::parse(Rule::file, text)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
