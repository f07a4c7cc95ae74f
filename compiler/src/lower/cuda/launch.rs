//! The launch plan: a lowered program's steps in order as JSON, for a CUDA executor (or a
//! reader). Kernels name their function, grid/block and buffer spans; matrix products become
//! cuBLAS calls; the remaining ops are recorded as host ops.
//!
//! cuBLAS is column-major and the plan is row-major. A row-major `m×n` product `C = A·B` is
//! the column-major product `Cᵀ = Bᵀ·Aᵀ`, and a row-major buffer read column-major *is* its
//! transpose. So each step calls `sgemm(opB, opA, n, m, k, B, ldb, A, lda, C, ldc = n)` with
//! the operands swapped: an untransposed `B` (`[k, n]` row-major) is passed with op `N` and
//! `ld = n`, a transposed one (stored `[n, k]`) with op `T` and `ld = k`; likewise `A`
//! (`N`, `ld = k` or `T`, `ld = m`). Batches step by `m·k`, `k·n` and `m·n` elements.

use super::{source, NVRTC_OPTIONS};
use crate::ir::{DType, Op};
use crate::lower::kernel::Form;
use crate::lower::memplan::{bytes, MemPlan};
use crate::lower::plan::reduce_name;
use crate::lower::plan::{Mat, Plan, Step, Storage};
use serde_json::{json, Value};

fn dtype(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::I64 => "i64",
    }
}

/// Where a buffer lives, as the executor must resolve it.
fn buffer(p: &Plan, m: &MemPlan, b: usize) -> Value {
    let buf = &p.bufs[b];
    let mut v = match &buf.storage {
        Storage::Input(name) => json!({"kind": "input", "name": name}),
        // A uniform constant (a fill) is one number; others list their values.
        Storage::Const(d) => match d.first() {
            Some(&f) if d.iter().all(|&x| x.to_bits() == f.to_bits()) => {
                json!({"kind": "const", "fill": f})
            }
            _ => json!({"kind": "const", "values": d.as_slice()}),
        },
        Storage::Temp => json!({
            "kind": "temp",
            "offset": m.offset[b],
            "bytes": bytes(buf.dtype, buf.len),
        }),
    };
    v["id"] = json!(b);
    v["dtype"] = json!(dtype(buf.dtype));
    v["len"] = json!(buf.len);
    v
}

/// A kernel or gemm argument: the buffer and the span the step touches.
fn arg(p: &Plan, m: &MemPlan, b: usize, len: usize) -> Value {
    json!({"buf": b, "arena_offset": m.offset[b], "len": len.min(p.bufs[b].len)})
}

/// The cuBLAS call of a matrix product (see the module docs for the mapping).
#[allow(clippy::too_many_arguments)]
fn gemm(
    p: &Plan,
    mp: &MemPlan,
    a: Mat,
    b: Mat,
    out: usize,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
) -> Value {
    let op = |t: bool| if t { "T" } else { "N" };
    let ldb = if b.trans { k } else { n };
    let lda = if a.trans { m } else { k };
    json!({
        "kind": "gemm",
        "call": if batch == 1 { "cublasSgemm" } else { "cublasSgemmStridedBatched" },
        "row_major": {"m": m, "k": k, "n": n, "a_trans": a.trans, "b_trans": b.trans},
        "transa": op(b.trans),
        "transb": op(a.trans),
        "m": n, "n": m, "k": k,
        "alpha": 1.0, "beta": 0.0,
        "A": arg(p, mp, b.buf, batch * k * n), "lda": ldb.max(1), "strideA": k * n,
        "B": arg(p, mp, a.buf, batch * m * k), "ldb": lda.max(1), "strideB": m * k,
        "C": arg(p, mp, out, batch * m * n), "ldc": n.max(1), "strideC": m * n,
        "batchCount": batch,
    })
}

/// Host ops whose inputs or output a full GPU run would move across the bus each step until
/// they get device kernels (today: every host op).
pub fn needs_device_kernel(op: &Op) -> bool {
    !matches!(op, Op::Input { .. })
}

/// The launch plan of a lowered program; `function` names each kernel's function (see
/// [`super::module`]) and `module` the `.cu` file holding them.
pub fn plan_json(p: &Plan, m: &MemPlan, function: &[String], module: &str) -> Value {
    let steps: Vec<Value> = p
        .steps
        .iter()
        .map(|s| match s {
            Step::Kernel { kernel, ins, outs } => {
                let k = &p.kernels[*kernel];
                let l = source::launch(k);
                let form = match k.form {
                    Form::Map => "map".to_string(),
                    Form::RowReduce(op) => format!("row_{}", reduce_name(op)),
                    Form::ColReduce(op) => format!("col_{}", reduce_name(op)),
                };
                let args: Vec<Value> = ins
                    .iter()
                    .enumerate()
                    .map(|(q, &b)| arg(p, m, b, k.operand_len(q)))
                    .chain(outs.iter().map(|&b| arg(p, m, b, k.output_len())))
                    .collect();
                json!({
                    "kind": "kernel", "name": k.name, "function": function.get(*kernel), "form": form,
                    "rows": k.rows, "inner": k.inner,
                    "grid": [l.grid, 1, 1], "block": [l.block, 1, 1], "shared_bytes": 0,
                    "args": args,
                })
            }
            Step::MatMul { a, b, out, batch, m: mm, k, n, .. } => {
                gemm(p, m, *a, *b, *out, *batch, *mm, *k, *n)
            }
            Step::Host { op, ins, out, shape } => json!({
                "kind": "host", "op": op.name(),
                "ins": ins.iter().map(|(b, s)| json!({"buf": b, "shape": s})).collect::<Vec<_>>(),
                "out": arg(p, m, *out, p.bufs[*out].len), "shape": shape,
                "needs_device_kernel": needs_device_kernel(op),
            }),
        })
        .collect();
    let mut host_ops: Vec<String> = p
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Host { op, .. } if needs_device_kernel(op) => Some(op.name()),
            _ => None,
        })
        .collect();
    host_ops.sort_unstable();
    host_ops.dedup();
    json!({
        "format": "lorac-cuda-launch-plan",
        "version": 1,
        "module": module,
        "nvrtc_options": NVRTC_OPTIONS,
        "arena_bytes": m.peak,
        "buffers": (0..p.bufs.len()).map(|b| buffer(p, m, b)).collect::<Vec<_>>(),
        "steps": steps,
        "outputs": p.outputs.iter().map(|(n, b, s, d)| json!({"name": n, "buf": b, "shape": s, "dtype": dtype(*d)})).collect::<Vec<_>>(),
        "host_ops_needing_device_kernels": host_ops,
    })
}
