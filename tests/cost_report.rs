//! The cost report (`analysis::cost`, `loraC compile --emit report`): parameter counts against
//! the MoLA paper, FLOPs of tiny configs computed by hand from the written-out conventions of
//! docs/cost-report.md, top-k counting, and the CLI's JSON shape and errors.

use lorac_compiler::analysis::cost::{cost, CostReport};
use lorac_compiler::build::Geometry;
use lorac_compiler::check::{check_file, check_source};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A config-only BERT: hidden 8, 2 heads of 4, FFN 16, one layer.
fn tiny_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lorac-cost-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 16,
            "num_hidden_layers": 1, "vocab_size": 10, "max_position_embeddings": 8,
            "type_vocab_size": 2}"#,
    )
    .unwrap();
    dir
}

fn tiny_report(tag: &str, body: &str, geo: Geometry) -> CostReport {
    let dir = tiny_dir(tag);
    let text = format!("model bert(config = \"config.json\")\n{body}\n");
    let c = check_source("tiny.lora", &dir.join("tiny.lora"), text);
    assert!(!c.diagnostics.has_errors(), "{:?}", c.diagnostics.sorted());
    cost(&c.spec.expect("checked spec"), geo).expect("costable")
}

const B1_L4: Geometry = Geometry { batch: 1, seq: 4 };

#[test]
fn mola_on_llama2_7b_costs_from_config_alone() {
    let c = check_file(&root().join("examples/llama-mola.lora"));
    assert!(!c.diagnostics.has_errors(), "{:?}", c.diagnostics.sorted());
    let spec = c.spec.expect("checked spec");
    assert!(
        spec.model.as_ref().unwrap().weights.is_none(),
        "config only"
    );
    let r = cost(&spec, Geometry { batch: 1, seq: 32 }).expect("costable");
    // methods.md §3.4: 160 experts per projection type (8 layers each of 2, 4, 6, 8 experts).
    assert_eq!(r.total.trainable_params, 105_635_840);
    // Routers Wg[E, n]: n = 4096 for six projections, 11008 for down_proj.
    assert_eq!(r.total.router_params, 160 * (6 * 4096 + 11008));
    // Experts: A[r, n] + B[m, r], r = 8; (m, n) per projection.
    let per_expert = 8 * (4 * (4096 + 4096) + (11008 + 4096) * 2 + (4096 + 11008));
    assert_eq!(r.total.adapter_params, 160 * per_expert);
    assert_eq!(r.total.head_params, 0);
    assert_eq!(r.modules.len(), 32 * 7);
    let last = r
        .modules
        .iter()
        .find(|m| m.name == "model.layers.31.mlp.down_proj")
        .unwrap();
    assert_eq!((last.experts, last.top_k, last.rank), (8, 2, 8));
    // No train block: AdamW is assumed, 2 moments of 4 bytes per trainable value.
    assert!(r.optimizer_assumed);
    assert_eq!(r.total.optimizer_bytes, 8 * 105_635_840);
}

#[test]
fn lora_on_a_tiny_bert_matches_the_hand_count() {
    let r = tiny_report(
        "lora",
        "import std.lora\nattach LoRA(r = 2) to encoder.layer.0.attention.self.{query, value}",
        B1_L4,
    );
    // T = batch·seq = 4 tokens; h = 8, FFN 16, H = 2 heads of d = 4, L = 4, r = 2.
    let (t, h, f, heads, d, l, r_) = (4.0, 8.0, 16.0, 2.0, 4.0, 4.0, 2.0);
    let mm = |a: f64, b: f64, c: f64| 2.0 * a * b * c;
    let qkvo = 4.0 * mm(t, h, h);
    let ffn = mm(t, h, f) + mm(t, f, h);
    let scores = heads * mm(l, d, l); // Q Kᵀ per head
    let values = heads * mm(l, l, d); // P V per head
    let lora = mm(t, h, r_) + mm(t, r_, h); // x Aᵀ, then (x Aᵀ) Bᵀ
    let base_fwd = qkvo + ffn + scores + values; // the pooler does not feed the loss
    let fwd = base_fwd + 2.0 * lora;
    // Backward, one product per operand that needs a gradient. Layer 0's input has none, so
    // the q, k, v base products cost 0; x Aᵀ needs dA only (1×), (x Aᵀ) Bᵀ both (2×).
    // Q Kᵀ: only Q carries gradient (1×); P V: both (2×); o, FFN: input gradients (1×).
    let lora_bwd = mm(t, h, r_) + 2.0 * mm(t, r_, h);
    let bwd = 2.0 * lora_bwd + scores + 2.0 * values + mm(t, h, h) + ffn;
    assert_eq!(r.total.base_flops_per_token_forward, base_fwd / t);
    assert_eq!(r.total.flops_per_token_forward, fwd / t);
    assert_eq!(r.total.flops_per_token_step, (fwd + bwd) / t);
    assert_eq!(r.total.flops_per_token_forward, 1280.0);
    assert_eq!(r.total.flops_per_token_step, 2304.0);
    // Parameters: A[2, 8] + B[8, 2] on two modules; AdamW assumed.
    assert_eq!(r.total.trainable_params, 2 * (2 * 8 + 8 * 2));
    assert_eq!(r.total.router_params, 0);
    assert_eq!(r.total.optimizer_bytes, 8 * 64);
    let q = &r.modules[0];
    assert_eq!(q.name, "encoder.layer.0.attention.self.query");
    assert_eq!((q.experts, q.top_k, q.rank, q.layer), (1, 1, 2, Some(0)));
    assert_eq!(q.flops_per_token_forward, lora / t);
    assert_eq!(q.flops_per_token_step, (lora + lora_bwd) / t);
    assert!(r.total.activation_bytes > 0.0);
}

#[test]
fn top_k_routing_counts_only_the_active_experts() {
    let run = |k: usize| {
        tiny_report(
            &format!("moe{k}"),
            &format!(
                "import std.molora\nattach MoLoRA(E = 4, k = {k}, r = 2) to encoder.layer.0.attention.self.query"
            ),
            B1_L4,
        )
    };
    // Per token, n = m = 8, E = 4, r = 2: the router x Wgᵀ costs 2·n·E in full; each of the
    // k experts a token visits costs 2·n·r + 2·r·m.
    let (n, m, e, r_) = (8.0, 8.0, 4.0, 2.0);
    let router = 2.0 * n * e;
    let expert = 2.0 * n * r_ + 2.0 * r_ * m;
    // Backward (layer 0's x needs no gradient): router dWg 1×; expert dA 1×, B product 2×.
    let router_bwd = 2.0 * n * e;
    let expert_bwd = 2.0 * n * r_ + 2.0 * (2.0 * r_ * m);
    let mut activations = Vec::new();
    for k in [1usize, 2, 4] {
        let rep = run(k);
        let q = &rep.modules[0];
        assert_eq!((q.experts, q.top_k, q.rank), (4, k, 2));
        assert_eq!(q.router_params, 4 * 8);
        assert_eq!(q.adapter_params, 4 * (2 * 8 + 8 * 2));
        let kf = k as f64;
        assert_eq!(q.flops_per_token_forward, router + kf * expert, "k = {k}");
        assert_eq!(
            q.flops_per_token_step,
            router + kf * expert + router_bwd + kf * expert_bwd,
            "k = {k}"
        );
        // The base model: 1152 FLOPs per token forward (see the LoRA test's formula).
        assert_eq!(rep.total.base_flops_per_token_forward, 1152.0);
        assert_eq!(
            rep.total.flops_per_token_forward,
            1152.0 + router + kf * expert
        );
        activations.push(rep.total.activation_bytes);
    }
    assert!(activations[0] < activations[1] && activations[1] < activations[2]);
}

#[test]
fn a_dense_softmax_mixture_counts_every_expert() {
    let r = tiny_report(
        "hydra",
        "import std.hydralora\nattach HydraLoRA(E = 3, r = 2) to encoder.layer.0.attention.self.query",
        B1_L4,
    );
    let q = &r.modules[0];
    assert_eq!((q.experts, q.top_k), (3, 3));
    // Router 2·n·E, shared A 2·n·r, three B heads 3·2·r·m, all per token.
    assert_eq!(
        q.flops_per_token_forward,
        2.0 * 8.0 * 3.0 + 32.0 + 3.0 * 32.0
    );
}

#[test]
fn attention_products_grow_with_the_square_of_the_sequence() {
    let body = "import std.lora\nattach LoRA(r = 2) to encoder.layer.0.attention.self.query";
    let short = tiny_report("seq4", body, B1_L4);
    let long = tiny_report("seq8", body, Geometry { batch: 1, seq: 8 });
    // Per token, only QKᵀ and PV depend on L: 2 · H · 2·L·d per token, H = 2, d = 4.
    let per_l = 2.0 * 2.0 * 2.0 * 4.0;
    assert_eq!(
        long.total.base_flops_per_token_forward - short.total.base_flops_per_token_forward,
        per_l * (8.0 - 4.0)
    );
}

fn lorac(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loraC"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run loraC");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_json_report_has_the_documented_keys() {
    let (code, out, err) = lorac(&[
        "compile",
        "examples/llama-mola.lora",
        "--emit",
        "report",
        "--format",
        "json",
        "--seq",
        "64",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let modules = v["modules"].as_array().expect("modules");
    assert_eq!(modules.len(), 224);
    for m in modules {
        for k in [
            "name",
            "layer",
            "experts",
            "top_k",
            "rank",
            "trainable_params",
        ] {
            assert!(m.get(k).is_some(), "module lacks `{k}`: {m}");
        }
    }
    let t = &v["total"];
    for k in [
        "trainable_params",
        "flops_per_token_forward",
        "flops_per_token_step",
        "activation_bytes",
        "optimizer_bytes",
    ] {
        assert!(t[k].is_number(), "total lacks `{k}`: {t}");
    }
    assert_eq!(t["trainable_params"], 105_635_840);
    assert_eq!(v["geometry"]["seq"], 64);
}

#[test]
fn cli_text_report_is_a_table_with_totals() {
    let (code, out, err) = lorac(&["compile", "examples/llama-mola.lora", "--emit", "report"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("model.layers.31.mlp.down_proj"), "{out}");
    assert!(out.contains("105,635,840"), "{out}");
    assert!(out.contains("step FLOP/token"), "{out}");
}

#[test]
fn cli_report_errors_are_coded() {
    let (code, _, err) = lorac(&[
        "compile",
        "examples/llama-mola.lora",
        "--emit",
        "report",
        "--seq",
        "5000",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("E0705") && err.contains("4096 positions"),
        "{err}"
    );
    let (code, _, err) = lorac(&["compile", "examples/lora.lora", "--format", "json"]);
    assert_eq!(code, 2, "{err}");
}
