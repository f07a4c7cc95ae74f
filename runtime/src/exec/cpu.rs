//! The CPU executor: runs a lowered plan over one arena placed by the memory planner,
//! calling Cranelift kernels (rows split across threads), gemm for matrix products and the
//! host ops for the rest.

use super::arena::Arena;
use super::awake;
use super::bound::{self, Bound};
use super::host::{self, In, Out};
use lorac_compiler::ir::ops::thin;
use lorac_compiler::ir::ReduceOp;
use lorac_compiler::ir::{DType, Graph, Tensor};
use lorac_compiler::lower::cpu::{compile, CpuKernels};
use lorac_compiler::lower::kernel::{identity, Form};
use lorac_compiler::lower::memplan::{self, MemPlan};
use lorac_compiler::lower::plan::{lower_with, LowerOptions, Mat, Plan, Step, Storage, Strides};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

/// A compiled program for the CPU backend.
pub struct CpuProgram {
    /// The lowered plan.
    pub plan: Plan,
    /// Where each temporary lives.
    pub mem: MemPlan,
    kernels: CpuKernels,
    arena: Mutex<Arena>,
    /// Seconds in the run, seconds re-run at once (with [`CpuProgram::replay`]) and calls per
    /// step kind, when `LORAC_PROFILE` is set (a developer switch).
    profile: Option<Mutex<Profile>>,
    /// `LORAC_PROFILE_REPLAY` (with `LORAC_PROFILE`): every step runs twice in a row and the
    /// profile shows both times, so the second (its data now in cache) tells how much of the
    /// first was spent waiting for memory. Maps then write no output over an operand (so a
    /// second run reads what the first did); a replayed run computes the same values.
    replay: bool,
    /// Keep the other pool threads polling through a run ([`awake`]); `LORAC_NO_KEEP` (a
    /// developer switch for A/B runs) lets them sleep.
    keep_awake: bool,
    /// Row-major copies of transposed frozen weights ([`CpuProgram::bind_frozen`]); copy `i`
    /// is buffer `plan.bufs.len() + i`.
    bound: Vec<Bound>,
}

/// A step kind's profile: seconds in the run, seconds replayed, calls.
type Timing = (f64, f64, usize);

/// The profile of a program's runs. The first run is timed apart: it takes the page faults
/// of the arena's first touch (huge pages zeroed), which inflated every step kind's time
/// several-fold and, counted in, made steady steps look memory-bound (a goat_all step took
/// 1.77 s in its first run and 0.64 s in its second, profiled).
#[derive(Default)]
struct Profile {
    /// Step kinds of every run but the first.
    kinds: HashMap<String, Timing>,
    /// Runs so far.
    runs: usize,
    /// Seconds of the first run's steps.
    first: f64,
}

/// Raw base pointers shared with worker threads: a kernel's operands and outputs, or a
/// run's resolved buffers (handed to the pool thread that runs the steps).
struct Ptrs<'a, T>(&'a [*mut T]);
impl<T> Clone for Ptrs<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Ptrs<'_, T> {}
// SAFETY: steps run one after another, and a step hands each thread a disjoint row range of
// its outputs; operands are only read.
unsafe impl<T> Send for Ptrs<'_, T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Ptrs<'_, T> {}

/// Transposed product operands up to this many elements are copied row-major first.
const SMALL_T: usize = 1 << 16;

/// Elements below which a kernel runs on one thread.
const PAR_MIN: usize = 1 << 15;

impl CpuProgram {
    /// Lowers, plans memory and JIT-compiles a graph.
    pub fn new(g: &Graph) -> Result<CpuProgram, String> {
        CpuProgram::with_lowering(g, LowerOptions::default())
    }

    /// [`CpuProgram::new`] with explicit lowering choices (tests compare them).
    pub fn with_lowering(g: &Graph, opt: LowerOptions) -> Result<CpuProgram, String> {
        let plan = lower_with(g, opt).map_err(|e| e.0)?;
        let profile = std::env::var_os("LORAC_PROFILE").map(|_| Mutex::new(Profile::default()));
        let replay = profile.is_some() && std::env::var_os("LORAC_PROFILE_REPLAY").is_some();
        // Hand-overs are legal here: kernels read every operand at a point before storing
        // there (`lower::cpu`).
        let mem = memplan::plan(&plan, !replay);
        memplan::verify(&plan, &mem)?;
        let kernels = compile(&plan.kernels)?;
        Ok(CpuProgram {
            profile,
            replay,
            keep_awake: std::env::var_os("LORAC_NO_KEEP").is_none(),
            arena: Mutex::new(Arena::new(
                mem.peak,
                std::env::var_os("LORAC_NO_HUGE").is_none(),
            )?),
            plan,
            mem,
            kernels,
            bound: vec![],
        })
    }

    /// Lets the products that read a frozen weight transposed read a row-major copy made
    /// now (shared through `shared` with the session's other programs). The weights must not
    /// change afterwards ([`bound`]); binds once, later calls do nothing.
    pub fn bind_frozen(&mut self, frozen: &HashMap<String, Tensor>, shared: &mut bound::Shared) {
        if self.bound.is_empty() {
            self.bound = bound::bind(&mut self.plan, frozen, shared);
        }
    }

    /// Bytes the executor allocated for temporaries (the memory plan's peak).
    pub fn arena_len_bytes(&self) -> usize {
        self.arena.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// Runs the program; inputs are looked up by name in the maps, in order.
    pub fn run(
        &self,
        inputs: &[&HashMap<String, Tensor>],
    ) -> Result<HashMap<String, Tensor>, String> {
        let arena = self
            .arena
            .lock()
            .map_err(|_| "a previous run of this program panicked".to_string())?;
        let base = arena.as_mut_ptr();
        let mut ptr: Vec<*mut u8> = Vec::with_capacity(self.plan.bufs.len());
        for (b, buf) in self.plan.bufs.iter().enumerate() {
            ptr.push(match &buf.storage {
                Storage::Input(name) => {
                    let t = inputs
                        .iter()
                        .find_map(|m| m.get(name))
                        .ok_or_else(|| format!("no value for input `{name}`"))?;
                    let ok = t.len() == buf.len
                        && matches!(
                            (&t.data, buf.dtype),
                            (lorac_compiler::ir::Data::F32(_), DType::F32)
                                | (lorac_compiler::ir::Data::I64(_), DType::I64)
                        );
                    if !ok {
                        return Err(format!(
                            "input `{name}` expects {:?} with {} values, got {:?}",
                            buf.dtype, buf.len, t.shape
                        ));
                    }
                    match &t.data {
                        lorac_compiler::ir::Data::F32(v) => v.as_ptr() as *mut u8,
                        lorac_compiler::ir::Data::I64(v) => v.as_ptr() as *mut u8,
                    }
                }
                Storage::Const(d) => d.as_ptr() as *mut u8,
                Storage::Temp => match self.mem.offset[b] {
                    // SAFETY: the planner placed this buffer inside the arena.
                    Some(o) => unsafe { base.add(o) },
                    None => std::ptr::null_mut(),
                },
            });
        }
        // A run given another tensor than the one bound gets its own copy.
        let mut fresh: Vec<Vec<f32>> = vec![];
        for bd in &self.bound {
            if ptr[bd.src] as usize == bd.at {
                ptr.push(bd.data.as_ptr() as *mut u8);
            } else {
                // SAFETY: the input was checked above to hold the weight's `rows × cols`.
                let w = unsafe {
                    std::slice::from_raw_parts(ptr[bd.src] as *const f32, bd.rows * bd.cols)
                };
                let t = bound::transpose(w, bd.rows, bd.cols);
                ptr.push(t.as_ptr() as *mut u8);
                fresh.push(t);
            }
        }
        // The whole run executes on a pool thread: its parallel steps then fork from a
        // worker (the idle one steals) instead of injecting into the pool from outside and
        // parking this thread on every one of them; the other pool threads poll for work
        // meanwhile ([`awake`]).
        let shared = Ptrs(&ptr);
        awake::run(self.keep_awake, || self.steps(shared))?;
        let mut out = HashMap::new();
        for (name, b, shape, dtype) in &self.plan.outputs {
            let len = self.plan.bufs[*b].len;
            // SAFETY: as above; outputs live to the end of the run.
            let t = unsafe {
                match dtype {
                    DType::F32 => Tensor::f32(
                        shape.clone(),
                        std::slice::from_raw_parts(ptr[*b] as *const f32, len).to_vec(),
                    ),
                    DType::I64 => Tensor::i64(
                        shape.clone(),
                        std::slice::from_raw_parts(ptr[*b] as *const i64, len).to_vec(),
                    ),
                }
            };
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    /// Runs every step in order over the resolved buffer pointers.
    fn steps(&self, ptr: Ptrs<'_, u8>) -> Result<(), String> {
        let first = self.profile.as_ref().is_some_and(|p| {
            p.lock().is_ok_and(|mut p| {
                p.runs += 1;
                p.runs == 1
            })
        });
        for step in &self.plan.steps {
            let t = self.profile.as_ref().map(|_| std::time::Instant::now());
            // SAFETY: every pointer addresses a buffer of the planned length, and the memory
            // plan (verified at build time) keeps live temporaries disjoint.
            unsafe { self.step(step, ptr.0)? };
            if let (Some(p), Some(t)) = (&self.profile, t) {
                let t = t.elapsed().as_secs_f64();
                let again = std::time::Instant::now();
                if self.replay {
                    // SAFETY: as above; without hand-overs every step is idempotent.
                    unsafe { self.step(step, ptr.0)? };
                }
                let again = again.elapsed().as_secs_f64();
                let key = match step {
                    Step::Kernel { kernel, .. } => {
                        let k = &self.plan.kernels[*kernel];
                        let ops: Vec<String> = k
                            .body
                            .iter()
                            .filter_map(|i| match i {
                                lorac_compiler::lower::Inst::Unary(u, _) => Some(format!("{u:?}")),
                                lorac_compiler::lower::Inst::Binary(b, ..) => {
                                    Some(format!("{b:?}"))
                                }
                                lorac_compiler::lower::Inst::Dot(..) => Some("Dot".into()),
                                _ => None,
                            })
                            .collect();
                        format!(
                            "kernel {:?} {}x{} [{}]",
                            k.form,
                            k.rows,
                            k.inner,
                            ops.join(" ")
                        )
                    }
                    Step::MatMul {
                        a,
                        b,
                        batch,
                        m,
                        k,
                        n,
                        ..
                    } => format!(
                        "matmul {batch}x[{m}x{k}]{}@[{k}x{n}]{}",
                        if a.trans {
                            "T"
                        } else if a.view.is_some() {
                            "S"
                        } else {
                            ""
                        },
                        if b.trans {
                            "T"
                        } else if b.view.is_some() {
                            "S"
                        } else {
                            ""
                        }
                    ),
                    Step::Host { op, shape, .. } => format!("host {} {shape:?}", op.name()),
                };
                if let Ok(mut m) = p.lock() {
                    if first {
                        m.first += t;
                    } else {
                        let e = m.kinds.entry(key).or_insert((0.0, 0.0, 0));
                        e.0 += t;
                        e.1 += again;
                        e.2 += 1;
                    }
                }
            }
        }
        Ok(())
    }

    unsafe fn step(&self, step: &Step, ptr: &[*mut u8]) -> Result<(), String> {
        match step {
            Step::Kernel { kernel, ins, outs } => {
                let k = &self.plan.kernels[*kernel];
                let f = self.kernels.fns[*kernel];
                let mut ps: Vec<*mut f32> = ins
                    .iter()
                    .chain(outs)
                    .map(|&b| ptr[b] as *mut f32)
                    .collect();
                let rows = k.rows as i64;
                match k.form {
                    Form::ColReduce(ReduceOp::Sum) => {
                        // The reference's f64 sum (`ops::reduce::sum_f64`): rows of the whole
                        // groups of four into four partial rows, combined pairwise, then the
                        // last rows one by one.
                        let inner = k.inner;
                        let full = rows / 4 * 4;
                        let mut acc = vec![-0.0f64; 4 * inner];
                        ps.push(acc.as_mut_ptr() as *mut f32);
                        f(ps.as_ptr(), 0, full);
                        let mut tail = vec![-0.0f64; 4 * inner];
                        *ps.last_mut().expect("scratch pushed") = tail.as_mut_ptr() as *mut f32;
                        f(ps.as_ptr(), full, rows);
                        let o = std::slice::from_raw_parts_mut(ps[ins.len()], inner);
                        for (j, o) in o.iter_mut().enumerate() {
                            let s = &acc;
                            let mut t =
                                (s[j] + s[inner + j]) + (s[2 * inner + j] + s[3 * inner + j]);
                            for slot in 0..(rows - full) as usize {
                                t += tail[slot * inner + j];
                            }
                            *o = t as f32;
                        }
                    }
                    Form::ColReduce(op) => {
                        let o = std::slice::from_raw_parts_mut(ps[ins.len()], k.inner);
                        o.iter_mut().for_each(|v| *v = identity(op));
                        f(ps.as_ptr(), 0, rows);
                    }
                    _ if k.rows * k.inner < PAR_MIN || k.rows < 2 => f(ps.as_ptr(), 0, rows),
                    _ => {
                        let chunks = (rayon::current_num_threads() * 4).min(k.rows) as i64;
                        let shared = Ptrs(&ps);
                        (0..chunks).into_par_iter().for_each(|c| {
                            let s = shared;
                            let (r0, r1) = (rows * c / chunks, rows * (c + 1) / chunks);
                            // SAFETY: row ranges are disjoint; each writes only its rows.
                            unsafe { f(s.0.as_ptr(), r0, r1) };
                        });
                    }
                }
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
            } => matmul(ptr, *a, *b, *out, *out_view, *batch, *m, *k, *n),
            Step::Host {
                op,
                ins,
                out,
                shape,
            } => {
                let views: Vec<In<'_>> = ins
                    .iter()
                    .map(|(b, s)| {
                        let len = s.iter().product();
                        match self.plan.bufs[*b].dtype {
                            DType::F32 => In::F(
                                std::slice::from_raw_parts(ptr[*b] as *const f32, len),
                                s.as_slice(),
                            ),
                            DType::I64 => In::I(
                                std::slice::from_raw_parts(ptr[*b] as *const i64, len),
                                s.as_slice(),
                            ),
                        }
                    })
                    .collect();
                let len = self.plan.bufs[*out].len;
                let mut o = match self.plan.bufs[*out].dtype {
                    DType::F32 => {
                        Out::F(std::slice::from_raw_parts_mut(ptr[*out] as *mut f32, len))
                    }
                    DType::I64 => {
                        Out::I(std::slice::from_raw_parts_mut(ptr[*out] as *mut i64, len))
                    }
                };
                host::run(op, &views, &mut o, shape).map_err(|e| format!("{} : {e}", op.name()))?;
            }
        }
        Ok(())
    }
}

/// Where the matrices of a batched operand or result live: row and column strides, and the
/// strided view that places each batch (contiguous `rows × cols` blocks when `None`).
#[derive(Clone, Copy)]
struct Layout {
    rs: isize,
    cs: isize,
    view: Option<Strides>,
    block: usize,
}

impl Layout {
    fn of(t: Mat, rows: usize, cols: usize) -> Layout {
        match t.view {
            Some(v) => Layout::strided(v),
            None if t.trans => Layout {
                rs: 1,
                cs: rows as isize,
                view: None,
                block: rows * cols,
            },
            None => Layout::dense(rows, cols),
        }
    }
    fn dense(rows: usize, cols: usize) -> Layout {
        Layout {
            rs: cols as isize,
            cs: 1,
            view: None,
            block: rows * cols,
        }
    }
    fn strided(v: Strides) -> Layout {
        Layout {
            rs: v.row as isize,
            cs: v.col as isize,
            view: Some(v),
            block: 0,
        }
    }
    /// Element offset of batch `i`.
    fn offset(&self, i: usize) -> usize {
        match self.view {
            Some(v) => v.batch_offset(i),
            None => i * self.block,
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    ptr: &[*mut u8],
    a: Mat,
    b: Mat,
    out: usize,
    out_view: Option<Strides>,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
) {
    // gemm's blocking (and so its rounding) can depend on operand layout for thin shapes:
    // small transposed operands are copied row-major first, exactly as the reference
    // interpreter materialises them, so results stay bit-identical. Large ones (frozen
    // weights) and permuted views (attention heads) are read through strides: measured
    // identical, and a copy would cost more.
    let mut copies: [Vec<f32>; 2] = [vec![], vec![]];
    let mut operand = |mt: Mat, rows: usize, cols: usize, slot: usize| -> (Layout, usize) {
        let len = batch * rows * cols;
        if mt.view.is_some() || !mt.trans || len > SMALL_T {
            return (Layout::of(mt, rows, cols), ptr[mt.buf] as usize);
        }
        let src = std::slice::from_raw_parts(ptr[mt.buf] as *const f32, len);
        let v = &mut copies[slot];
        v.resize(len, 0.0);
        for bi in 0..batch {
            let (s, d) = (&src[bi * rows * cols..], &mut v[bi * rows * cols..]);
            for i in 0..rows {
                for j in 0..cols {
                    d[i * cols + j] = s[j * rows + i];
                }
            }
        }
        (Layout::dense(rows, cols), v.as_ptr() as usize)
    };
    let (la, pa) = operand(a, m, k, 0);
    let (lb, pb) = operand(b, k, n, 1);
    let lo = match out_view {
        Some(v) => Layout::strided(v),
        None => Layout::dense(m, n),
    };
    let po = ptr[out] as usize;
    let one = |i: usize, par: gemm::Parallelism| {
        let (pa, pb, po) = (pa as *const f32, pb as *const f32, po as *mut f32);
        // SAFETY: batch `i` addresses its own `m×k`, `k×n` and `m×n` blocks (views place
        // them inside their buffers; distinct batches of a result never overlap).
        unsafe {
            let dst = po.add(lo.offset(i));
            if k == 0 {
                for r in 0..m {
                    for c in 0..n {
                        *dst.offset(r as isize * lo.rs + c as isize * lo.cs) = 0.0;
                    }
                }
                return;
            }
            // Thin products (a LoRA rank side or inner dimension) take the reference's own
            // kernel, which defines their rounding and writes a contiguous result: a strided
            // destination gets it through a small copy.
            if thin::defines(m, k, n) {
                let view = |p: *const f32, l: Layout| thin::View {
                    ptr: p.add(l.offset(i)),
                    rs: l.rs,
                    cs: l.cs,
                };
                let (a, b) = (view(pa, la), view(pb, lb));
                let par = matches!(par, gemm::Parallelism::Rayon(_));
                if lo.view.is_none() {
                    thin::matmul(m, k, n, a, b, dst, par);
                } else {
                    let mut tmp = vec![0f32; m * n];
                    thin::matmul(m, k, n, a, b, tmp.as_mut_ptr(), par);
                    for r in 0..m {
                        for c in 0..n {
                            *dst.offset(r as isize * lo.rs + c as isize * lo.cs) = tmp[r * n + c];
                        }
                    }
                }
                return;
            }
            gemm::gemm(
                m,
                n,
                k,
                dst,
                lo.cs,
                lo.rs,
                false,
                pa.add(la.offset(i)),
                la.cs,
                la.rs,
                pb.add(lb.offset(i)),
                lb.cs,
                lb.rs,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    };
    if m == 0 || n == 0 {
        return;
    }
    let work = m * n * k;
    if batch == 1 || work >= 1 << 20 {
        let par = if work >= 1 << 18 {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        (0..batch).for_each(|i| one(i, par));
    } else {
        (0..batch)
            .into_par_iter()
            .for_each(|i| one(i, gemm::Parallelism::None));
    }
}

impl Drop for CpuProgram {
    fn drop(&mut self) {
        if let Some(Ok(m)) = self.profile.as_ref().map(|p| p.lock()) {
            let mut v: Vec<_> = m.kinds.iter().collect();
            v.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
            let total: f64 = v.iter().map(|e| e.1 .0).sum();
            eprintln!(
                "profile: {total:.3} s in {} step kinds over {} runs after the first (which took \
                 {:.3} s, page faults included, and is left out)",
                v.len(),
                m.runs.saturating_sub(1),
                m.first
            );
            // `LORAC_PROFILE=N` lists the N costliest kinds (25 by default).
            let top = std::env::var("LORAC_PROFILE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(25);
            if self.replay {
                let hot: f64 = v.iter().map(|e| e.1 .1).sum();
                eprintln!("  (replayed at once: {hot:.3} s; columns: in the run, replayed)");
            }
            for (k, (s, h, n)) in v.iter().take(top) {
                if self.replay {
                    eprintln!("{s:9.4} s {h:9.4} s {n:6} × {k}");
                } else {
                    eprintln!("{s:9.4} s {n:6} × {k}");
                }
            }
        }
    }
}
