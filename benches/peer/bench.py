#!/usr/bin/env python3
"""PyTorch peer for loraC's bench specs (benches/specs/*.lora).

Builds the two bench configurations the way PyTorch users write them and times
training steps on random full-length batches:

  lora_qv   peft LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
            lora_dropout=0.05) on BertModel (assets/minilm), a Linear(384, 2) head on
            the pooler output, AdamW(lr=1e-4, weight_decay=0).
  goat_all  GOAT (Fan et al., ICML 2025) as its official layer does it: every
            nn.Linear of every layer (query, key, value, attention.output.dense,
            intermediate.dense, output.dense) gets a top-2-of-8 router and 8 rank-1
            LoRA experts with SVD-segment init, scale s = sqrt(3 n eta / d) and weight
            alignment; tokens go to experts in a Python loop over experts
            (torch.where, index_select, index_add_); balance loss E * sum(f_i P_i),
            summed over modules, weight 1e-3. Same head and optimizer.

One training step = forward + cross-entropy (+ balance loss) + backward +
AdamW step + zero_grad. Every (config, mode) runs in its own subprocess, so peak
RSS and the torch.compile caches do not bleed from one measurement to the next.

Run with the venv that has torch, transformers and peft:

  /opt/lorac-venv/bin/python benches/peer/bench.py --config all --mode all \
      --steps 5 --warmup 2 --threads 2 --format json

This script is a measuring tool, not part of the build or of CI.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "assets" / "minilm"
CONFIGS = ("lora_qv", "goat_all")
MODES = ("eager", "compile")
MARK = "@@BENCH_RESULT@@ "

# The six linears of a BERT layer that goat_all adapts (names relative to the layer).
GOAT_TARGETS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


# --------------------------------------------------------------------------- models


def load_bert(torch):
    """MiniLM-L6 as a transformers BertModel, with the pooler, in fp32.

    The base model's own dropouts (hidden 0.1, attention 0.1) are set to 0: the base is
    frozen, and loraC's BERT graph has no base-model dropout, so both sides compute the
    same thing. Adapter dropout (0.05) stays on, as in the specs.
    """
    from transformers import BertModel

    model = BertModel.from_pretrained(
        str(MODEL_DIR),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        add_pooling_layer=True,
        dtype=torch.float32,
    )
    return model


def make_goat_linear(torch, base, E=8, k=2, r=8, eta=1.0, rho=10.0, p_drop=0.05,
                     dispatch="index_add"):
    """A GOAT MoE-LoRA layer wrapping the frozen nn.Linear `base` (methods.md §2).

    dispatch = "index_add": per expert, torch.where over the top-k selection, then
    index_select of its tokens, the rank-d expert, the gate weight, and index_add_ into
    the output (the loop of GOAT's TopKGOATLayer, written with index_select/index_add_).
    dispatch = "official": the same loop with the official layer's two extra costs: the
    output buffer is sized by running expert 0 on every token (zeros_like(expert0(x))),
    and tokens are gathered/scattered by advanced indexing (x[idx], out[idx] += ...).
    """
    nn = torch.nn
    F = torch.nn.functional

    class GoatLinear(nn.Module):
        def __init__(self):
            super().__init__()
            m, n = base.out_features, base.in_features
            d = r // E
            assert d > 0 and r % E == 0
            self.m, self.n, self.E, self.k = m, n, E, k
            self.s = math.sqrt(3.0 * eta * n / d)
            self.base = base
            # Router: Linear(n, E, bias=False), PyTorch's default kaiming-uniform(a=sqrt(5)).
            self.router = nn.Linear(n, E, bias=False)
            self.lora_A = nn.ModuleList(nn.Linear(n, d, bias=False) for _ in range(E))
            self.lora_B = nn.ModuleList(nn.Linear(d, m, bias=False) for _ in range(E))
            self.drop = nn.ModuleList(nn.Dropout(p_drop) for _ in range(E))
            self.dispatch = dispatch
            self.aux = None
            with torch.no_grad():
                # SVD-segment init ("goat"): expert j takes the first d singular triplets of
                # segment j (segment length t = h // E), singular values divided by s * rho,
                # so s * B_j A_j = (1 / rho) U_j S_j V_j^T.
                W = base.weight.float()
                U, S, Vh = torch.linalg.svd(W, full_matrices=False)
                t = S.numel() // E
                acc = torch.zeros_like(W)
                for j in range(E):
                    lo, hi = j * t, j * t + d
                    sq = torch.sqrt(S[lo:hi] / (self.s * rho))
                    A = sq[:, None] * Vh[lo:hi, :]          # [d, n]
                    B = U[:, lo:hi] * sq[None, :]           # [m, d]
                    self.lora_A[j].weight.copy_(A)
                    self.lora_B[j].weight.copy_(B)
                    acc += B @ A
                # Weight alignment (Thm 3.4, init_cof = 1/E): W0 -= (s / E) sum_j B_j A_j.
                base.weight -= (self.s / E) * acc

        def expert(self, j, xs):
            return self.lora_B[j](self.lora_A[j](self.drop[j](xs))) * self.s

        def forward(self, x):
            y = self.base(x)
            xf = x.reshape(-1, self.n)
            T = xf.shape[0]
            probs = F.softmax(self.router(xf), dim=-1)                 # [T, E]
            w, sel = torch.topk(probs, self.k, dim=-1)                 # [T, k]
            w = w / w.sum(dim=-1, keepdim=True)
            if self.dispatch == "official":
                out = torch.zeros_like(self.expert(0, xf))
                for j in range(self.E):
                    tok, slot = torch.where(sel == j)
                    out[tok] += w[tok, slot, None] * self.expert(j, xf[tok])
            else:
                out = xf.new_zeros(T, self.m)
                for j in range(self.E):
                    tok, slot = torch.where(sel == j)
                    ye = self.expert(j, xf.index_select(0, tok))
                    out.index_add_(0, tok, ye * w[tok, slot].unsqueeze(-1))
            # GOAT's balance loss: E * sum_i (count_i / T) * mean_t p_ti.
            counts = torch.bincount(sel.reshape(-1), minlength=self.E)
            self.aux = self.E * torch.sum((counts / T) * probs.mean(dim=0))
            return y + out.view(*x.shape[:-1], self.m)

    return GoatLinear()


def build(torch, config, goat_dispatch):
    """The model to train, as a module whose forward returns the training loss."""
    nn = torch.nn
    F = torch.nn.functional
    bert = load_bert(torch)
    hidden = bert.config.hidden_size
    goat_layers = []
    if config == "lora_qv":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                         target_modules=["query", "value"], bias="none")
        body = get_peft_model(bert, cfg)
    elif config == "goat_all":
        for p in bert.parameters():
            p.requires_grad_(False)
        for layer in bert.encoder.layer:
            for name in GOAT_TARGETS:
                parent_name, leaf = name.rsplit(".", 1)
                parent = layer.get_submodule(parent_name)
                g = make_goat_linear(torch, getattr(parent, leaf), dispatch=goat_dispatch)
                setattr(parent, leaf, g)
                goat_layers.append(g)
        body = bert
    else:
        raise ValueError(config)

    class Trainee(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = body
            self.head = nn.Linear(hidden, 2)
            self.goat = goat_layers  # plain list: not registered twice

        def forward(self, input_ids, attention_mask, token_type_ids, labels):
            pooled = self.body(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).pooler_output
            loss = F.cross_entropy(self.head(pooled), labels)
            if self.goat:
                loss = loss + 1e-3 * sum(g.aux for g in self.goat)
            return loss

    return Trainee()


# --------------------------------------------------------------------------- worker


def peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(args):
    import torch

    torch.set_num_threads(args.threads)
    import transformers  # noqa: F401  (imported here so the baseline RSS counts it)
    import peft  # noqa: F401

    rss_after_imports = peak_rss_mb()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build(torch, args.config, args.goat_dispatch)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    setup_s = time.perf_counter() - t0

    fn = model
    if args.mode == "compile":
        fn = torch.compile(model)

    B, L = args.batch, args.seq
    vocab = model.body.config.vocab_size if hasattr(model.body, "config") else 30522
    gen = torch.Generator().manual_seed(1234)
    n_batches = 1 + args.warmup + args.steps + args.profile
    batches = [
        (
            torch.randint(0, vocab, (B, L), generator=gen),
            torch.ones(B, L, dtype=torch.long),
            torch.zeros(B, L, dtype=torch.long),
            torch.randint(0, 2, (B,), generator=gen),
        )
        for _ in range(n_batches)
    ]

    def step(bt):
        loss = fn(*bt)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    it = iter(batches)
    t0 = time.perf_counter()
    first_loss = float(step(next(it)))
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        step(next(it))
    times, cpu = [], []
    load_before = os.getloadavg()
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(next(it))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    load_after = os.getloadavg()
    last_loss = float(loss)

    med = statistics.median(times)
    res = {
        "config": args.config,
        "mode": args.mode,
        "median_step_s": med,
        "tokens_per_s": B * L / med,
        "peak_rss_mb": None,  # filled below, after everything has run
        "compile_s": compile_s,
        "min_step_s": min(times),
        # Median CPU seconds of this process per step. With --threads 1 this is close to
        # the step time on an idle core, even when other work shares the machine.
        "median_cpu_s": statistics.median(cpu),
        "step_times_s": times,
        # CPU seconds per wall second over the timed steps: about `threads` when the
        # process had its cores, lower when other work on the machine took them.
        "cpu_per_wall": sum(cpu) / sum(times),
        # 1-minute load average before and after the timed steps (includes this process).
        "loadavg_1m": [load_before[0], load_after[0]],
        "setup_s": setup_s,
        "rss_after_imports_mb": rss_after_imports,
        "trainable_params": n_train,
        "batch": B,
        "seq": L,
        "threads": args.threads,
        "warmup": args.warmup,
        "loss_first": first_loss,
        "loss_last": last_loss,
    }
    if args.config == "goat_all":
        res["goat_dispatch"] = args.goat_dispatch
    if args.mode == "compile":
        from torch._dynamo.utils import counters

        res["graph_breaks"] = sum(counters["graph_break"].values())
        res["unique_graphs"] = counters["stats"].get("unique_graphs", None)
        res["graph_break_reasons"] = sorted(
            {str(k).splitlines()[0][:160] for k in counters["graph_break"]})[:10]

    if args.profile:
        res["profile"] = profile(torch, step, it, args.profile)

    res["peak_rss_mb"] = peak_rss_mb()
    print(MARK + json.dumps(res), flush=True)


def profile(torch, step, it, n):
    """Self CPU time per op over n steps, the top ops, and a coarse grouping."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step(next(it))
    rows = []
    for ev in prof.key_averages():
        rows.append((ev.key, ev.self_cpu_time_total / 1e6 / n, ev.count // n))
    total = sum(r[1] for r in rows)
    rows.sort(key=lambda r: -r[1])
    groups = {
        "matmul (mm/addmm/bmm/linear)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul",
                                         "aten::linear", "aten::_addmm_activation"),
        "attention (sdpa)": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
        "dispatch (where/nonzero/index*/bincount/topk)": (
            "aten::nonzero", "aten::where", "aten::index_select", "aten::index_add",
            "aten::index", "aten::index_put", "aten::_index_put", "aten::bincount",
            "aten::topk", "aten::masked_select", "aten::scatter", "aten::gather"),
        "optimizer (adamw)": ("aten::_fused_adamw", "aten::_foreach", "Optimizer.step"),
    }
    grouped = {g: 0.0 for g in groups}
    grouped["other"] = 0.0
    for key, t, _ in rows:
        for g, prefixes in groups.items():
            if key.startswith(prefixes):
                grouped[g] += t
                break
        else:
            grouped["other"] += t
    return {
        "steps": n,
        "self_cpu_s_per_step": total,
        "groups_s_per_step": grouped,
        "top_ops": [{"op": k, "self_s_per_step": t, "calls_per_step": c} for k, t, c in rows[:25]],
        "ops_per_step": sum(r[2] for r in rows),
    }


# --------------------------------------------------------------------------- driver


def run_one(args, config, mode):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker",
           "--config", config, "--mode", mode, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--batch", str(args.batch), "--seq", str(args.seq),
           "--goat-dispatch", args.goat_dispatch, "--profile", str(args.profile)]
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(args.threads)
    env["MKL_NUM_THREADS"] = str(args.threads)
    # Cold, private inductor cache per run (the first-run compile time a user sees), and
    # compile on one thread: no pool of compile workers next to the measured process.
    cache = tempfile.mkdtemp(prefix="lorac-peer-inductor-")
    env["TORCHINDUCTOR_CACHE_DIR"] = cache
    env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        rc = "timeout"
    wall = time.perf_counter() - t0
    subprocess.run(["rm", "-rf", cache])
    for line in out.splitlines():
        if line.startswith(MARK):
            res = json.loads(line[len(MARK):])
            res["process_wall_s"] = wall
            return res
    return {"config": config, "mode": mode, "error": f"worker exit {rc} after {wall:.0f}s",
            "stderr_tail": err[-3000:], "median_step_s": None, "tokens_per_s": None,
            "peak_rss_mb": None, "compile_s": None, "process_wall_s": wall}


def meta(threads):
    import importlib.metadata as md

    def ver(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            txt = f.read()
        for line in txt.splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        avx512 = " avx512f " in txt.replace("\n", " ")
    except OSError:
        avx512 = None
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "torch": ver("torch"),
        "transformers": ver("transformers"),
        "peft": ver("peft"),
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "avx512f": avx512,
        "threads": threads,
    }


def print_table(results):
    hdr = (f"{'config':<10} {'mode':<8} {'median step s':>13} {'min step s':>10} {'tokens/s':>9} "
           f"{'peak RSS MB':>11} {'compile/first s':>15} {'cpu/wall':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        if r.get("error"):
            print(f"{r['config']:<10} {r['mode']:<8} {r['error']}")
            continue
        print(f"{r['config']:<10} {r['mode']:<8} {r['median_step_s']:>13.3f} {r['min_step_s']:>10.3f} "
              f"{r['tokens_per_s']:>9.0f} {r['peak_rss_mb']:>11.0f} {r['compile_s']:>15.1f} "
              f"{r['cpu_per_wall']:>8.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=CONFIGS + ("all",), default="all")
    ap.add_argument("--mode", choices=MODES + ("all",), default="all")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median is reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps after the first one")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--format", choices=("table", "json"), default="table")
    ap.add_argument("--goat-dispatch", choices=("index_add", "official"), default="index_add",
                    help="goat_all's expert loop: index_select/index_add_ (default), or the "
                         "official layer's advanced indexing plus its extra expert-0 pass")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the timed steps, profile N more steps (op breakdown in JSON)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per (config, mode) run")
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        worker(args)
        return

    configs = CONFIGS if args.config == "all" else (args.config,)
    modes = MODES if args.mode == "all" else (args.mode,)
    results = []
    for c in configs:
        for m in modes:
            print(f"[bench] {c} / {m} ...", file=sys.stderr, flush=True)
            r = run_one(args, c, m)
            results.append(r)
            if r.get("error"):
                print(f"[bench]   failed: {r['error']}", file=sys.stderr, flush=True)
            else:
                print(f"[bench]   median {r['median_step_s']:.3f} s/step, "
                      f"first step {r['compile_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                      f"cpu/wall {r['cpu_per_wall']:.2f}, load {r['loadavg_1m'][0]:.1f}",
                      file=sys.stderr, flush=True)
    if args.format == "json":
        print(json.dumps({"meta": meta(args.threads), "results": results}, indent=2))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
