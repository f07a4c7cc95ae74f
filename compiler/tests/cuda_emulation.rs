//! The generated CUDA C, compiled as host C++ through `tests/cuda/shim.h` (threads for CUDA
//! threads, a barrier-synchronised warp for `__shfl_down_sync`), computes what
//! `Kernel::eval_host` computes: every unary and binary op, every addressing mode, row and
//! column sums and maxima, fused thin products (`Inst::Dot`), at sizes 1, 3, 50 and 783, launched with 2 blocks of 64 threads so
//! grid-stride loops, several warps and several blocks all take part.
//!
//! Tolerance: |emulated − reference| ≤ tol · max(1, |reference|), tol = 1e-6 for maps (the same
//! libm), 1e-4 for reductions (the kernels sum in double, `eval_host` in f32). NaN must meet
//! NaN. Skipped, with a message, when `g++` is missing.

mod common;

use common::{BINARY, UNARY};
use lorac_compiler::ir::{BinaryOp, ReduceOp, UnaryOp};
use lorac_compiler::lower::cuda::source;
use lorac_compiler::lower::kernel::{Access, Form, Inst, Kernel};
use std::fmt::Write;
use std::path::Path;
use std::process::Command;

const SIZES: [usize; 4] = [1, 3, 50, 783];

/// A map with one output per unary op (of a full operand) and per binary op (against a
/// per-group row vector), plus a constant and a splat.
fn map_all(rows: usize, inner: usize, div: usize) -> Kernel {
    let mut body = vec![
        Inst::Load(0),
        Inst::Load(1),
        Inst::Load(2),
        Inst::Const(0.25),
    ];
    let mut outputs = vec![];
    for u in UNARY {
        body.push(Inst::Unary(u, 0));
        outputs.push(body.len() - 1);
    }
    for b in BINARY {
        body.push(Inst::Binary(b, 0, 1));
        outputs.push(body.len() - 1);
    }
    // x * splat + 0.25, and x == x rounded to a shared value (some equal pairs).
    body.push(Inst::Binary(BinaryOp::Mul, 0, 2));
    body.push(Inst::Binary(BinaryOp::Add, body.len() - 1, 3));
    outputs.push(body.len() - 1);
    body.push(Inst::Binary(BinaryOp::Eq, 2, 2));
    outputs.push(body.len() - 1);
    Kernel {
        name: String::new(),
        form: Form::Map,
        rows,
        inner,
        operands: vec![
            Access::Vec { div: 1 },
            Access::Vec { div },
            Access::Splat { div },
        ],
        body,
        outputs,
    }
}

/// A reduction of `exp(x) * y` (y a row vector per group, or a splat).
fn reduce(form: Form, rows: usize, inner: usize, div: usize, splat: bool) -> Kernel {
    let acc = if splat {
        Access::Splat { div }
    } else {
        Access::Vec { div }
    };
    Kernel {
        name: String::new(),
        form,
        rows,
        inner,
        operands: vec![Access::Vec { div: 1 }, acc],
        body: vec![
            Inst::Load(0),
            Inst::Unary(UnaryOp::Exp, 0),
            Inst::Load(1),
            Inst::Binary(BinaryOp::Mul, 1, 2),
        ],
        outputs: vec![3],
    }
}

/// A fused thin product `x + Σ_p a[r, p]·b[p, j]` (with the product itself as a second
/// output), as a map or summed over each row.
fn dot(form: Form, rows: usize, inner: usize, k: usize) -> Kernel {
    Kernel {
        name: String::new(),
        form,
        rows,
        inner,
        operands: vec![
            Access::Vec { div: 1 },
            Access::DotRows { k },
            Access::DotCols { k },
        ],
        body: vec![
            Inst::Load(0),
            Inst::Dot(1, 2),
            Inst::Binary(BinaryOp::Add, 0, 1),
        ],
        outputs: if form == Form::Map {
            vec![2, 1]
        } else {
            vec![2]
        },
    }
}

fn kernels() -> Vec<Kernel> {
    let mut ks = vec![];
    for &rows in &SIZES {
        for &inner in &SIZES {
            if rows * inner > 50 * 783 {
                continue;
            }
            let div = if rows % 3 == 0 { 3 } else { 1 };
            ks.push(map_all(rows, inner, div));
            for op in [ReduceOp::Sum, ReduceOp::Max] {
                ks.push(reduce(Form::RowReduce(op), rows, inner, div, false));
                ks.push(reduce(Form::ColReduce(op), rows, inner, div, true));
            }
            for k in [1, 3, 16] {
                ks.push(dot(Form::Map, rows, inner, k));
            }
            ks.push(dot(Form::RowReduce(ReduceOp::Sum), rows, inner, 8));
        }
    }
    for (i, k) in ks.iter_mut().enumerate() {
        k.name = format!("c{i}");
    }
    ks
}

/// Seeded values in [-2, 2), with a few exact repeats (for `Eq`).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if i % 7 == 3 {
                0.5
            } else {
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            }
        })
        .collect()
}

fn write_f32(p: &Path, v: &[f32]) {
    let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(p, b).expect("write input");
}

fn read_f32(p: &Path) -> Vec<f32> {
    std::fs::read(p)
        .expect("read output")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn generated_kernels_emulated_on_the_host_match_eval_host() {
    if Command::new("g++").arg("--version").output().is_err() {
        eprintln!("skipped: g++ not found");
        return;
    }
    let t0 = std::time::Instant::now();
    let dir = std::env::temp_dir().join(format!("lorac-cuda-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ks = kernels();
    let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda/shim.h");
    let mut src = format!("#include \"{}\"\n#include <cstdio>\n", shim.display());
    src += &source::prelude();
    let mut main = String::from(
        "static std::vector<float> rd(const char* d, const char* f, size_t n) {\n  std::vector<float> v(n ? n : 1);\n  char p[4096]; snprintf(p, sizeof p, \"%s/%s\", d, f);\n  FILE* h = fopen(p, \"rb\"); if (!h || fread(v.data(), 4, n, h) != n) { fprintf(stderr, \"read %s\\n\", p); exit(1); } fclose(h); return v;\n}\nstatic void wr(const char* d, const char* f, const std::vector<float>& v, size_t n) {\n  char p[4096]; snprintf(p, sizeof p, \"%s/%s\", d, f);\n  FILE* h = fopen(p, \"wb\"); fwrite(v.data(), 4, n, h); fclose(h);\n}\nint main(int, char** argv) {\n  const char* d = argv[1];\n",
    );
    let mut inputs = vec![];
    for (c, k) in ks.iter().enumerate() {
        src += &source::render(k);
        let ins: Vec<Vec<f32>> = (0..k.operands.len())
            .map(|q| values((c * 8 + q) as u64, k.operand_len(q)))
            .collect();
        let _ = writeln!(main, "  {{");
        for (q, v) in ins.iter().enumerate() {
            write_f32(&dir.join(format!("in{c}_{q}.bin")), v);
            let _ = writeln!(
                main,
                "    auto a{q} = rd(d, \"in{c}_{q}.bin\", {});",
                v.len()
            );
        }
        let n = k.output_len();
        let mut args: Vec<String> = (0..ins.len()).map(|q| format!("a{q}.data()")).collect();
        for o in 0..k.outputs.len() {
            let _ = writeln!(main, "    std::vector<float> o{o}({} + 1);", n);
            args.push(format!("o{o}.data()"));
        }
        // A real launch's grid, capped to 2 blocks of 64 threads: grid-stride loops cover the rest.
        let l = source::launch(k);
        let _ = writeln!(
            main,
            "    lorac_launch({}, 64, [&] {{ {}({}); }});",
            l.grid.min(2),
            k.name,
            args.join(", ")
        );
        for o in 0..k.outputs.len() {
            let _ = writeln!(main, "    wr(d, \"out{c}_{o}.bin\", o{o}, {n});");
        }
        let _ = writeln!(main, "  }}");
        inputs.push(ins);
    }
    main += "  return 0;\n}\n";
    src += &main;
    let cpp = dir.join("emu.cpp");
    std::fs::write(&cpp, &src).expect("write source");
    let exe = dir.join("emu");
    let cc = Command::new("g++")
        .args([
            "-std=c++17",
            "-O1",
            "-ffp-contract=off",
            "-pthread",
            "-w",
            "-o",
        ])
        .arg(&exe)
        .arg(&cpp)
        .output()
        .expect("run g++");
    assert!(
        cc.status.success(),
        "g++ failed:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let t_cc = t0.elapsed();
    let run = Command::new(&exe).arg(&dir).output().expect("run emulator");
    assert!(
        run.status.success(),
        "emulator failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let (mut worst_map, mut worst_red) = (0f32, 0f32);
    for (c, k) in ks.iter().enumerate() {
        let refs: Vec<&[f32]> = inputs[c].iter().map(|v| v.as_slice()).collect();
        let mut want = vec![vec![0f32; k.output_len()]; k.outputs.len()];
        k.eval_host(&refs, &mut want);
        let tol = if k.form == Form::Map { 1e-6 } else { 1e-4 };
        for (o, w) in want.iter().enumerate() {
            let got = read_f32(&dir.join(format!("out{c}_{o}.bin")));
            assert_eq!(got.len(), w.len(), "{} output {o}: length", k.name);
            for (i, (&g, &r)) in got.iter().zip(w).enumerate() {
                if r.is_nan() || g.is_nan() {
                    assert!(
                        r.is_nan() && g.is_nan(),
                        "{} ({:?} {}x{}) output {o}[{i}]: {g} vs {r}",
                        k.name,
                        k.form,
                        k.rows,
                        k.inner
                    );
                    continue;
                }
                let err = if r == g {
                    0.0
                } else {
                    (g - r).abs() / r.abs().max(1.0)
                };
                if k.form == Form::Map {
                    worst_map = worst_map.max(err);
                } else {
                    worst_red = worst_red.max(err);
                }
                assert!(
                    err <= tol,
                    "{} ({:?} {}x{}) output {o}[{i}]: {g} vs {r}",
                    k.name,
                    k.form,
                    k.rows,
                    k.inner
                );
            }
        }
    }
    eprintln!(
        "{} kernels emulated: g++ {:.1} s, total {:.1} s; max error {worst_map:.2e} (maps), {worst_red:.2e} (reductions)",
        ks.len(),
        t_cc.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
