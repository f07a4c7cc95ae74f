//! The abstract syntax tree: owned, span-carrying, free of pest lifetimes.

use crate::diag::Span;

/// A name with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The name.
    pub name: String,
    /// Where it is written.
    pub span: Span,
}

/// One parsed `.lora` file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct File {
    /// Items in source order (items that failed to parse are absent).
    pub items: Vec<Item>,
}

/// A top-level item.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `import std.goat` / `import "my.lora"`.
    Import(Import),
    /// `model bert("dir")`.
    Model(ModelDecl),
    /// `adapter NAME(params) on W0[m, n] { … }`.
    Adapter(AdapterDef),
    /// `attach NAME(args) to PATTERN, …`.
    Attach(Attach),
    /// `train { … }`.
    Train(TrainBlock),
}

impl Item {
    /// Span of the whole item.
    pub fn span(&self) -> Span {
        match self {
            Item::Import(i) => i.span,
            Item::Model(i) => i.span,
            Item::Adapter(i) => i.span,
            Item::Attach(i) => i.span,
            Item::Train(i) => i.span,
        }
    }
}

/// What an import names.
#[derive(Clone, Debug, PartialEq)]
pub enum ImportTarget {
    /// A dotted module path: `std.goat` is the standard library's `goat.lora`.
    Module(String),
    /// A file path relative to the importing file.
    Path(String),
}

/// `import …`.
#[derive(Clone, Debug, PartialEq)]
pub struct Import {
    /// What is imported.
    pub target: ImportTarget,
    /// The target's span.
    pub target_span: Span,
    /// The whole item.
    pub span: Span,
}

/// `model FAMILY(args)`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDecl {
    /// `bert`, `llama`.
    pub family: Ident,
    /// Directory and options.
    pub args: Vec<Arg>,
    /// The whole item.
    pub span: Span,
}

/// A declared adapter parameter `name: type = default`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDecl {
    /// Parameter name.
    pub name: Ident,
    /// `int`, `float`, `str`, `bool`.
    pub ty: Ident,
    /// Default value.
    pub default: Option<Expr>,
}

/// `adapter NAME(params) on W0[m, n] { body }`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterDef {
    /// Adapter name.
    pub name: Ident,
    /// Declared parameters.
    pub params: Vec<ParamDecl>,
    /// Name bound to the frozen base weight.
    pub base: Ident,
    /// Names bound to the base weight's dimensions `[out, in]`.
    pub base_dims: Vec<Ident>,
    /// Statements.
    pub body: Vec<Stmt>,
    /// Span of `[m, n]`.
    pub dims_span: Span,
    /// The whole item.
    pub span: Span,
}

/// `A[e][d, n]`: one tensor declared by a `param` statement.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamTarget {
    /// Tensor name.
    pub name: Ident,
    /// Expert index variable for per-expert tensors.
    pub expert: Option<Ident>,
    /// Shape expressions.
    pub dims: Vec<Expr>,
    /// Span of the whole target.
    pub span: Span,
}

/// How `init` rewrites the base weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitOp {
    /// `-=`
    Sub,
    /// `+=`
    Add,
    /// `=`
    Set,
}

/// A statement in an adapter body.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `let name = value`.
    Let {
        name: Ident,
        value: Expr,
        span: Span,
    },
    /// `param A[..], B[..] = init`.
    Param {
        targets: Vec<ParamTarget>,
        init: Option<Expr>,
        span: Span,
    },
    /// `experts e in lo..hi { … }`.
    Experts {
        var: Ident,
        lo: Expr,
        hi: Expr,
        body: Vec<Stmt>,
        span: Span,
    },
    /// `init W0 -= value`.
    Init {
        target: Ident,
        op: InitOp,
        value: Expr,
        span: Span,
    },
    /// `out = value`.
    Out { value: Expr, span: Span },
    /// `aux value`.
    Aux { value: Expr, span: Span },
}

impl Stmt {
    /// Span of the statement.
    pub fn span(&self) -> Span {
        match self {
            Stmt::Let { span, .. }
            | Stmt::Param { span, .. }
            | Stmt::Experts { span, .. }
            | Stmt::Init { span, .. }
            | Stmt::Out { span, .. }
            | Stmt::Aux { span, .. } => *span,
        }
    }
}

/// A module pattern as written.
#[derive(Clone, Debug, PartialEq)]
pub struct Pattern {
    /// The pattern text, whitespace inside braces removed.
    pub text: String,
    /// Where it is written.
    pub span: Span,
}

/// `attach NAME(args) to PATTERN, …`.
#[derive(Clone, Debug, PartialEq)]
pub struct Attach {
    /// Adapter name.
    pub adapter: Ident,
    /// Arguments (may use `layer` and allocation rules).
    pub args: Vec<Arg>,
    /// Module patterns.
    pub patterns: Vec<Pattern>,
    /// The whole item.
    pub span: Span,
}

/// One line of a `train` block: `key (args)? value? precondition …? for …?`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainEntry {
    /// Setting name.
    pub key: Ident,
    /// `data(train = …)`-style arguments.
    pub args: Option<Vec<Arg>>,
    /// `batch 16`, `optimizer adamw(…)`.
    pub value: Option<Expr>,
    /// `precondition riemannian(…)`.
    pub precondition: Option<Expr>,
    /// `for experts, Wg`.
    pub selectors: Vec<Ident>,
    /// The whole entry.
    pub span: Span,
}

/// `train { … }`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainBlock {
    /// Entries in order.
    pub entries: Vec<TrainEntry>,
    /// The whole item.
    pub span: Span,
}

/// A call argument, positional or named.
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// `name =` for named arguments.
    pub name: Option<Ident>,
    /// The value.
    pub value: Expr,
    /// The whole argument.
    pub span: Span,
}

/// The argument named `name`, else the `pos`-th positional one (how calls bind parameters).
pub fn find_arg<'e>(args: &'e [Arg], pos: usize, name: &str) -> Option<&'e Expr> {
    args.iter()
        .find(|a| a.name.as_ref().is_some_and(|n| n.name == name))
        .map(|a| &a.value)
        .or_else(|| {
            args.iter()
                .filter(|a| a.name.is_none())
                .nth(pos)
                .map(|a| &a.value)
        })
}

/// Binary operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `//`
    FloorDiv,
    /// `@`
    MatMul,
    /// `**`
    Pow,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::MatMul => "@",
            BinOp::Pow => "**",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
        }
    }
}

/// An expression with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it is written.
    pub span: Span,
}

/// Expression forms.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// `8`
    Int(i64),
    /// `1e-3`
    Float(f64),
    /// `"goat"`
    Str(String),
    /// `true`
    Bool(bool),
    /// `x`
    Name(String),
    /// `f(a, k = b)`
    Call { func: Ident, args: Vec<Arg> },
    /// `a + b`
    Binary {
        op: BinOp,
        op_span: Span,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `-a`
    Neg(Box<Expr>),
    /// `a^T`
    Transpose(Box<Expr>),
    /// `a[i]`
    Index { base: Box<Expr>, index: Box<Expr> },
    /// `[a, b]`
    List(Vec<Expr>),
    /// `(a, b)`
    Tuple(Vec<Expr>),
    /// `if c then a else b`
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    /// `let n = v in body`
    LetIn {
        name: Ident,
        value: Box<Expr>,
        body: Box<Expr>,
    },
    /// `n => body`
    Lambda { param: Ident, body: Box<Expr> },
}
