//! Robustness: no input may make loraC panic.
//!
//! Every `examples/*.lora` is (a) truncated at every 7th byte and (b) mutated with 1–4 random
//! byte flips (200 deterministic variants per example); each variant is checked with
//! `check_source` *as if it lived at the example's real path* (so `../assets/minilm` resolves
//! when the assets are present, and is simply reported missing when they are not), and every
//! diagnostic is rendered both graphically and as JSON. Asserted for each input:
//!
//! * neither checking nor rendering panics (each input runs under `catch_unwind`, and the
//!   failure message quotes the offending input);
//! * an input that yields no spec has at least one *error* diagnostic with a code;
//! * every diagnostic's code looks like `E0123`/`W0123` and its labels lie inside their file,
//!   on character boundaries.
//!
//! `regressions` replays inputs that once crashed loraC and hostile edge values;
//! `deep_nesting_is_refused_not_overflowed` covers the stack overflows found while fuzzing
//! (`fuzz/`, see `docs/fuzzing.md`).
//! `fuzz_in_process` (ignored) is a time-boxed in-process fuzzer: `LORAC_FUZZ_SECS=600 cargo
//! test --test robustness -- --ignored fuzz_in_process`.

use lorac_compiler::check::{check_source, Checked};
use lorac_compiler::diag::render::{render, to_json, Style};
use lorac_compiler::diag::Diagnostic;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True when `scripts/fetch-assets` has put MiniLM where the examples expect it.
fn assets_present() -> bool {
    root().join("assets/minilm/config.json").is_file()
}

/// Every `*.lora` file in `dir` (relative to the repository root), sorted, with its text.
fn lora_files(dir: &str) -> Vec<(PathBuf, String)> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}/ is readable: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "lora"))
        .collect();
    v.sort();
    v.into_iter()
        .map(|p| {
            let t = std::fs::read_to_string(&p).expect("readable example");
            (p, t)
        })
        .collect()
}

fn examples() -> Vec<(PathBuf, String)> {
    let v = lora_files("examples");
    assert!(!v.is_empty(), "no examples/*.lora found");
    v
}

/// Checks that one diagnostic is well formed against the sources it points into.
fn well_formed(checked: &Checked, d: &Diagnostic) -> Result<(), String> {
    let code = d.code.0;
    let b = code.as_bytes();
    if b.len() != 5 || !(b[0] == b'E' || b[0] == b'W') || !b[1..].iter().all(u8::is_ascii_digit) {
        return Err(format!("malformed code {code:?} on {:?}", d.message));
    }
    for l in d.primary.iter().chain(d.secondary.iter()) {
        let s = l.span;
        if s.start > s.end {
            return Err(format!("{code}: span {s:?} is reversed"));
        }
        let text = &checked.sources.get(s.file).text;
        let (a, z) = (s.start as usize, s.end as usize);
        if z > text.len() || !text.is_char_boundary(a) || !text.is_char_boundary(z) {
            return Err(format!(
                "{code}: span {a}..{z} is not inside file {} ({} bytes) on char boundaries",
                s.file,
                text.len()
            ));
        }
    }
    Ok(())
}

/// Checks `text` as the file at `path` and renders every diagnostic; `Err` says what went wrong.
fn check_one(path: &Path, text: &str) -> Result<(), String> {
    let name = path
        .strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string();
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let checked = check_source(&name, path, text.to_string());
        for d in checked.diagnostics.sorted() {
            well_formed(&checked, &d)?;
            let g = render(&checked.sources, &d, Style::default());
            let c = render(
                &checked.sources,
                &d,
                Style {
                    color: true,
                    width: 60,
                },
            );
            if g.is_empty() || c.is_empty() {
                return Err(format!("{}: empty rendering", d.code));
            }
            let j = to_json(&checked.sources, &d);
            if j.get("code").and_then(|c| c.as_str()) != Some(d.code.0) {
                return Err(format!("{}: JSON has no matching code: {j}", d.code));
            }
            serde_json::to_string(&j).map_err(|e| format!("JSON does not serialize: {e}"))?;
        }
        if checked.spec.is_none()
            && !checked
                .diagnostics
                .iter()
                .any(|d| d.is_error() && !d.code.0.is_empty())
        {
            return Err("no spec, yet no error diagnostic with a code".into());
        }
        Ok(())
    }));
    match result {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "<non-string panic payload>".into());
            Err(format!("PANIC: {msg}"))
        }
    }
}

/// Runs `check_one` over many inputs and fails with the first few offenders quoted.
fn run_all(label: &str, cases: impl IntoIterator<Item = (PathBuf, String, String)>) -> usize {
    let mut failures = Vec::new();
    let mut n = 0;
    for (path, what, text) in cases {
        n += 1;
        if let Err(e) = check_one(&path, &text) {
            failures.push(format!(
                "{} ({what}): {e}\n  input: {text:?}",
                path.strip_prefix(root()).unwrap_or(&path).display()
            ));
        }
    }
    if !failures.is_empty() {
        let shown: Vec<_> = failures.iter().take(10).cloned().collect();
        panic!(
            "{label}: {} of {n} inputs failed; first {}:\n{}",
            failures.len(),
            shown.len(),
            shown.join("\n")
        );
    }
    n
}

/// xorshift64* — a tiny deterministic PRNG, so failures reproduce without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Flips 1–4 random bytes of `src` to random printable ASCII or random bytes (lossy UTF-8).
fn mutate(rng: &mut Rng, src: &str) -> String {
    let mut bytes = src.as_bytes().to_vec();
    if bytes.is_empty() {
        return String::new();
    }
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len());
        bytes[at] = if rng.below(2) == 0 {
            0x20 + rng.below(0x5f) as u8
        } else {
            rng.next() as u8
        };
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn examples_check_cleanly_with_assets() {
    if !assets_present() {
        eprintln!("assets/minilm missing (run scripts/fetch-assets): skipping clean-check test");
        return;
    }
    let mut failures = Vec::new();
    for (path, text) in examples() {
        check_one(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path
            .strip_prefix(root())
            .unwrap_or(&path)
            .display()
            .to_string();
        let checked = check_source(&name, &path, text);
        for d in checked.diagnostics.sorted().iter().filter(|d| d.is_error()) {
            failures.push(render(&checked.sources, d, Style::default()));
        }
    }
    assert!(
        failures.is_empty(),
        "examples have errors:\n{}",
        failures.join("\n")
    );
}

#[test]
fn truncated_examples_do_not_panic() {
    let start = std::time::Instant::now();
    let mut cases = Vec::new();
    for (path, text) in examples() {
        for cut in (0..text.len()).step_by(7) {
            // Cuts inside a multi-byte character are moved back to its start.
            let mut at = cut;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            cases.push((path.clone(), format!("cut at {at}"), text[..at].to_string()));
        }
    }
    let n = run_all("truncation", cases);
    eprintln!("truncation: {n} inputs in {:.1?}", start.elapsed());
}

#[test]
fn mutated_examples_do_not_panic() {
    const VARIANTS: usize = 200;
    let start = std::time::Instant::now();
    let mut cases = Vec::new();
    for (i, (path, text)) in examples().into_iter().enumerate() {
        let mut rng = Rng::new(0x10_4AC0 + i as u64);
        for v in 0..VARIANTS {
            cases.push((
                path.clone(),
                format!("variant {v}"),
                mutate(&mut rng, &text),
            ));
        }
    }
    let n = run_all("byte flips", cases);
    eprintln!("byte flips: {n} inputs in {:.1?}", start.elapsed());
}

/// Inputs that once made loraC panic or crash, and hostile values near the edges, checked as
/// if they were `examples/regression.lora`.
const REGRESSIONS: &[&str] = &[
    "",
    "\u{feff}",
    "\0\0\0",
    "\u{fffd}\u{fffd}(\u{fffd}",
    "model",
    "model bert(",
    "model bert(\"",
    "model bert(\"../assets/minilm\")\nattach",
    "import std.",
    "import \"\"",
    "import \"regression.lora\"",
    "import \"/\"",
    "adapter A() on W0[] {}",
    "adapter A(r: int = 4) on W0[m, n] { out = x @ W0^T }\nadapter A(r: int = 4) on W0[m, n] { out = x }",
    "adapter A(E: int = 4) on W0[m, n] {\n  experts e in 0..E { experts f in 0..e { param P[f][m, n] = zeros } }\n  out = x @ W0^T\n}",
    "adapter A(r: int = 4) on W0[m, n] {\n  param B[m, r] = zeros\n  param A[r, n] = zeros\n  out = x @ W0^T + x @ A^T[0] @ B^T^T^T\n}",
    "import std.lora\nmodel bert(\"../assets/minilm\")\nattach LoRA(r = 99999999999999999999) to encoder.layer.*.output.dense",
    "import std.lora\nmodel bert(\"../assets/minilm\")\nattach LoRA(r = 2 ** 64) to encoder.layer.*.output.dense",
    "import std.lora\nmodel bert(\"../assets/minilm\")\nattach LoRA(r = 1 // 0, alpha = 1.0 / 0.0) to encoder.layer.*.output.dense",
    "import std.lora\nmodel bert(\"../assets/minilm\")\nattach LoRA(r = -9223372036854775808, alpha = 1e999) to encoder.layer.*.output.dense",
    "import std.lora\nmodel bert(\"../assets/minilm\")\nattach LoRA(r = 1000000000000) to encoder.layer.*.output.dense",
    "import std.lora\nmodel bert(\"../assets/minilm\")\nattach LoRA(r = 0) to encoder.layer.99999999999999999999.output.dense",
    "import std.lora\nmodel bert(\"../assets/minilm\")\nattach LoRA(r = [1, 2]) to encoder.layer.{}.{,}.*.output.dense",
    "import std.goat\nmodel bert(\"../assets/minilm\")\nattach Goat(E = 1000000000, k = 1000000001) to encoder.layer.*.output.dense",
    "import std.molora\nmodel bert(\"../assets/minilm\")\nattach MoLoRA(E = 0, k = -1) to encoder.layer.*.output.dense",
    "model bert(\"../assets/minilm\")\ntrain {\n  batch 0\n  steps -1\n  max_len 99999999999999999999\n  seed 1e400\n  eval(every = 0)\n}",
    "model bert(\"../assets/minilm\")\ntrain { data(train = \"\", dev = \"/\"); task classification(labels = 0) }",
    "model bert(\"/dev/null\")",
    "model bert(\"/\")",
    "model bert(\"../assets/minilm/model.safetensors\")",
    "model llama(\"configs/llama2-7b.json\")",
    "é\n\u{10ffff}model é(\"é\")\nattach é(é = \"é\") to é.é",
];

#[test]
fn regressions() {
    let path = root().join("examples/regression.lora");
    let cases = REGRESSIONS
        .iter()
        .enumerate()
        .map(|(i, t)| (path.clone(), format!("regression {i}"), t.to_string()));
    run_all("regressions", cases);
}

/// Deep nesting and long operator chains once overflowed the stack (an abort, not even a
/// panic: the parser, AST builder, checker and `Drop` all recurse once per level). They are now
/// refused up front (`syntax::recover`: at most 64 nested brackets and 512 operators per item)
/// with `E0001`. Run on a 2 MiB thread, the default for spawned threads, in debug builds too.
#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let head = "import std.lora\nmodel bert(\"../assets/minilm\")\n";
    let attach =
        |r: String| format!("{head}attach LoRA(r = {r}) to encoder.layer.*.output.dense\n");
    let body = |e: String| format!("adapter A(r: int = 4) on W0[m, n] {{\n  out = {e}\n}}\n");
    let n = 100_000;
    let deep = vec![
        attach(format!("{}8{}", "(".repeat(n), ")".repeat(n))),
        attach(format!("{}8{}", "[".repeat(n), "]".repeat(n))),
        attach(format!("{}8", "-".repeat(n))),
        attach(format!("{}2", "2**".repeat(n))),
        attach(format!("{}1", "1+".repeat(n))),
        attach(format!(
            "{}1{}",
            "if true then ".repeat(n),
            " else 2".repeat(n)
        )),
        attach(format!("{}8", "let a = 1 in ".repeat(n))),
        attach(format!("{}8", "a => ".repeat(n))),
        body(format!("{}x{} @ W0^T", "(".repeat(n), ")".repeat(n))),
        body(format!("x{} @ W0^T", "^T".repeat(n))),
        body(format!("x @ W0^T{}", " + x @ W0^T".repeat(n))),
        format!("{head}train {{\n  steps {}1\n}}\n", "1+".repeat(n)),
        format!("{head}train {}", "{".repeat(n)),
        "(".repeat(n),
    ];
    // Just under the limits: still accepted (no E0001), and still no overflow.
    let near = [
        attach(format!("{}8{}", "(".repeat(60), ")".repeat(60))),
        attach(format!("{}1", "1+".repeat(500))),
        attach(format!(
            "{}{}1{}",
            "(".repeat(60),
            "1+".repeat(440),
            ")".repeat(60)
        )),
        attach(format!(
            "{}1{}",
            "if true then ".repeat(160),
            " else 2".repeat(160)
        )),
        body(format!("x{} @ W0^T", "^T".repeat(500))),
    ];
    let path = root().join("examples/regression.lora");
    let worker = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for (i, text) in deep.iter().enumerate() {
                check_one(&path, text).unwrap_or_else(|e| panic!("deep input {i}: {e}"));
                let c = check_source("regression.lora", &path, text.clone());
                assert!(
                    c.diagnostics.iter().any(|d| d.code.0 == "E0001"),
                    "deep input {i} was not refused with E0001"
                );
            }
            for (i, text) in near.iter().enumerate() {
                check_one(&path, text).unwrap_or_else(|e| panic!("near-limit input {i}: {e}"));
                let c = check_source("regression.lora", &path, text.clone());
                assert!(
                    !c.diagnostics.iter().any(|d| d.code.0 == "E0001"),
                    "near-limit input {i} was refused: {:?}",
                    c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>()
                );
            }
        })
        .expect("spawn");
    worker.join().expect("deep nesting test thread");
}

/// A time-boxed in-process fuzzer (no cargo-fuzz needed): mutates examples and std files with
/// flips, inserts, deletes and splices for `LORAC_FUZZ_SECS` seconds (default 10).
#[test]
#[ignore]
fn fuzz_in_process() {
    let secs: u64 = std::env::var("LORAC_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("LORAC_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut corpus: Vec<String> = examples().into_iter().map(|(_, t)| t).collect();
    corpus.extend(lora_files("std").into_iter().map(|(_, t)| t));
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        ",",
        ";",
        "\"",
        "=",
        "@",
        "^T",
        "..",
        "*",
        "**",
        "//",
        "-",
        "0",
        "1e99",
        "-1",
        "99999999999999999999",
        "0.0",
        "model",
        "adapter",
        "attach",
        "train",
        "import",
        "experts",
        "param",
        "let",
        "init",
        "out",
        "W0",
        "x",
        "layer",
        "to",
        "for",
        "on",
        "e",
        "\n",
        "#",
        "é",
        "\u{0}",
    ];
    let path = root().join("examples/fuzz.lora");
    let mut rng = Rng::new(seed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let (mut n, mut failures) = (0u64, Vec::new());
    while std::time::Instant::now() < deadline {
        let mut bytes = corpus[rng.below(corpus.len())].clone().into_bytes();
        for _ in 0..1 + rng.below(6) {
            let at = rng.below(bytes.len() + 1);
            match rng.below(5) {
                0 if at < bytes.len() => bytes[at] = rng.next() as u8,
                1 if at < bytes.len() => bytes[at] = 0x20 + rng.below(0x5f) as u8,
                2 => {
                    let t = TOKENS[rng.below(TOKENS.len())];
                    bytes.splice(at..at, t.bytes());
                }
                3 if at < bytes.len() => {
                    let z = (at + 1 + rng.below(16)).min(bytes.len());
                    bytes.drain(at..z);
                }
                _ => {
                    // Splice in a chunk of another corpus file.
                    let other = corpus[rng.below(corpus.len())].as_bytes();
                    let a = rng.below(other.len());
                    let z = (a + rng.below(64)).min(other.len());
                    bytes.splice(at..at, other[a..z].iter().copied());
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        n += 1;
        if let Err(e) = check_one(&path, &text) {
            failures.push(format!("{e}\n  input: {text:?}"));
            if failures.len() >= 20 {
                break;
            }
        }
    }
    eprintln!(
        "fuzz_in_process: {n} executions in {secs} s, {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
