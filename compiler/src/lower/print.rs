//! Text form of a lowered plan: one line per step, kernels with their SSA bodies.

use super::kernel::{Access, Inst, Kernel};
use super::memplan::MemPlan;
use super::plan::{Plan, Step, Storage};
use std::fmt::Write;

fn access(a: Access) -> String {
    match a {
        Access::Vec { div: 1 } => "full".into(),
        Access::Vec { div } => format!("row/{div}"),
        Access::Splat { div } => format!("splat/{div}"),
        Access::DotRows { k } => format!("rows/k{k}"),
        Access::DotCols { k } => format!("cols/k{k}"),
    }
}

/// One kernel: form, space, operand addressing and body.
pub fn kernel(k: &Kernel) -> String {
    let mut s = format!("{} {:?} {}x{}", k.name, k.form, k.rows, k.inner);
    let ops: Vec<String> = k.operands.iter().map(|a| access(*a)).collect();
    let _ = write!(s, " operands [{}]", ops.join(", "));
    for (i, inst) in k.body.iter().enumerate() {
        let _ = match inst {
            Inst::Load(q) => write!(s, "; v{i} = load {q}"),
            Inst::Const(c) => write!(s, "; v{i} = {c}"),
            Inst::Unary(u, a) => write!(s, "; v{i} = {u:?} v{a}"),
            Inst::Binary(b, x, y) => write!(s, "; v{i} = {b:?} v{x} v{y}"),
            Inst::Dot(a, b) => write!(s, "; v{i} = dot {a} {b}"),
        };
    }
    let outs: Vec<String> = k.outputs.iter().map(|o| format!("v{o}")).collect();
    let _ = write!(s, "; out {}", outs.join(", "));
    s
}

/// The whole plan, with the arena size when a memory plan is given.
pub fn plan(p: &Plan, mem: Option<&MemPlan>) -> String {
    let mut s = String::new();
    let name = |b: usize| match &p.bufs[b].storage {
        Storage::Input(n) => n.clone(),
        Storage::Const(_) => format!("const{b}"),
        Storage::Temp => format!("t{b}"),
    };
    for st in &p.steps {
        let _ = match st {
            Step::Kernel {
                kernel: ki,
                ins,
                outs,
            } => {
                let i: Vec<String> = ins.iter().map(|&b| name(b)).collect();
                let o: Vec<String> = outs.iter().map(|&b| name(b)).collect();
                writeln!(
                    s,
                    "{} = {}({})",
                    o.join(", "),
                    kernel(&p.kernels[*ki]),
                    i.join(", ")
                )
            }
            Step::MatMul {
                a,
                b,
                out,
                out_view,
                batch,
                m,
                k,
                n,
            } => writeln!(
                s,
                "{}{} = matmul {batch}x[{m}x{k}]x[{k}x{n}] {}{} {}{}",
                name(*out),
                view(out_view),
                name(a.buf),
                mat_mark(a),
                name(b.buf),
                mat_mark(b)
            ),
            Step::Host {
                op,
                ins,
                out,
                shape,
            } => {
                let i: Vec<String> = ins.iter().map(|(b, _)| name(*b)).collect();
                writeln!(
                    s,
                    "{} = {}({}) : {shape:?}",
                    name(*out),
                    op.name(),
                    i.join(", ")
                )
            }
        };
    }
    let _ = writeln!(
        s,
        "# {} steps, {} kernels{}",
        p.steps.len(),
        p.kernels.len(),
        mem.map(|m| format!(", arena {} bytes", m.peak))
            .unwrap_or_default()
    );
    s
}

/// `ᵀ` for a transposed operand, its strides for a permuted view.
fn mat_mark(m: &crate::lower::plan::Mat) -> String {
    if m.trans {
        "ᵀ".into()
    } else {
        view(&m.view)
    }
}

/// A strided view as `{b0:s0,b1:s1|row,col}`, or nothing.
fn view(v: &Option<crate::lower::plan::Strides>) -> String {
    match v {
        Some(v) => format!(
            "{{{}:{},{}:{}|{},{}}}",
            v.batch[0].0, v.batch[0].1, v.batch[1].0, v.batch[1].1, v.row, v.col
        ),
        None => String::new(),
    }
}
