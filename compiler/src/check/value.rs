//! Compile-time values the checker computes: scalars, symbolic tensor shapes, allocations.

use std::fmt;

/// One tensor dimension.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    /// The token dimension of `x` (batch × sequence, flattened).
    Tokens,
    /// A known size.
    N(i64),
    /// A size not known in generic checking (for example `n` before attach).
    Sym(String),
}

impl Dim {
    /// True when the two dims are (or may be) equal.
    pub fn compatible(&self, other: &Dim) -> bool {
        match (self, other) {
            (Dim::N(a), Dim::N(b)) => a == b,
            (Dim::Tokens, Dim::Tokens) => true,
            (Dim::Sym(a), Dim::Sym(b)) => a == b || a == "?" || b == "?",
            (Dim::Sym(_), Dim::N(_)) | (Dim::N(_), Dim::Sym(_)) => true,
            _ => false,
        }
    }
    /// True for a literal 1.
    pub fn is_one(&self) -> bool {
        *self == Dim::N(1)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Tokens => f.write_str("T"),
            Dim::N(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// Router provenance of a tensor: what `balance` needs to know.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    /// Number of experts (last dim).
    pub experts: Dim,
    /// `Some(k)` for a top-k gate, `None` for a dense softmax gate.
    pub top_k: Option<i64>,
}

/// A tensor type.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Shape.
    pub dims: Vec<Dim>,
    /// Set when this tensor is a router gate.
    pub gate: Option<Gate>,
}

impl Tensor {
    /// A plain tensor of this shape.
    pub fn of(dims: Vec<Dim>) -> Tensor {
        Tensor { dims, gate: None }
    }
    /// Shape as `[T, 384]`.
    pub fn shape(&self) -> String {
        shape_str(&self.dims)
    }
}

/// `[a, b]` rendering of a shape.
pub fn shape_str(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// A per-layer allocation rule (attach arguments only).
#[derive(Clone, Debug, PartialEq)]
pub enum Alloc {
    /// One value per layer.
    List(Vec<i64>),
    /// MoLA groups: consecutive equal groups of layers.
    Groups(Vec<i64>),
    /// AlphaLoRA: resolved from the weights' spectra at build time.
    AlphaHill {
        /// Total experts over all layers.
        budget: i64,
        /// Exponent β.
        beta: f64,
        /// `exact` or `largest_remainder`.
        mode: String,
        /// Lower bound per layer.
        min_experts: i64,
    },
}

/// A compile-time value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// Integer not known in generic checking.
    SomeInt,
    /// Float not known in generic checking.
    SomeFloat,
    /// String.
    Str(String),
    /// Boolean.
    Bool(bool),
    /// A tensor.
    Tensor(Tensor),
    /// A per-expert tensor `A` (index it with the expert variable).
    Experts { count: Dim, elem: Tensor },
    /// An expert index variable bound to `count` experts.
    ExpertVar { name: String, count: Dim },
    /// Result of a pair initializer: (A, B).
    Pair(Tensor, Tensor),
    /// `[a, b]`.
    List(Vec<Value>),
    /// `(a, b)`.
    Tuple(Vec<Value>),
    /// A name used as a symbol (train block selectors, pairs).
    Symbol(String),
    /// Allocation rule.
    Alloc(Alloc),
    /// A function literal (not a first-class value anywhere yet).
    Lambda,
    /// An error was already reported; suppresses follow-on errors.
    Poison,
}

impl Value {
    /// A short description for messages: `int`, `float`, `tensor [T, 384]`.
    pub fn describe(&self) -> String {
        match self {
            Value::Int(_) | Value::SomeInt => "int".into(),
            Value::Float(_) | Value::SomeFloat => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bool(_) => "bool".into(),
            Value::Tensor(t) => format!("tensor {}", t.shape()),
            Value::Experts { count, elem } => {
                format!("per-expert tensor ({count} × {})", elem.shape())
            }
            Value::ExpertVar { .. } => "expert index".into(),
            Value::Pair(..) => "pair of tensors".into(),
            Value::List(_) => "list".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::Symbol(_) => "name".into(),
            Value::Alloc(_) => "per-layer allocation".into(),
            Value::Lambda => "function".into(),
            Value::Poison => "error".into(),
        }
    }
    /// True for int-valued scalars (known or not).
    pub fn is_int(&self) -> bool {
        matches!(self, Value::Int(_) | Value::SomeInt)
    }
    /// True for numeric scalars.
    pub fn is_num(&self) -> bool {
        matches!(
            self,
            Value::Int(_) | Value::Float(_) | Value::SomeInt | Value::SomeFloat
        )
    }
    /// The value as f64 when known.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
    /// The value as i64 when it is a known int.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// Converts a known int to a dimension; unknown ints become symbolic.
    pub fn as_dim(&self, sym: &str) -> Option<Dim> {
        match self {
            Value::Int(i) => Some(Dim::N(*i)),
            Value::SomeInt => Some(Dim::Sym(sym.to_string())),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            other => f.write_str(&other.describe()),
        }
    }
}
