#!/usr/bin/env python3
"""loraC bench and the PyTorch peer on the same machine, one after the other, with a ratio
table (markdown) on stdout and the raw JSON in benches/results/.

    /opt/lorac-venv/bin/python benches/side_by_side.py [--steps 10] [--modes eager,compile]

Run it on an idle machine: it records the 1-minute load average before each measurement.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("lora_qv", "goat_all")


def load1():
    return os.getloadavg()[0]


def lorac(config, steps, warmup):
    exe = os.path.join(ROOT, "target", "release", "loraC")
    spec = os.path.join(ROOT, "benches", "specs", f"{config}.lora")
    before = load1()
    out = subprocess.run(
        [exe, "bench", spec, "--steps", str(steps), "--warmup", str(warmup),
         "--batch", "16", "--seq", "128", "--format", "json"],
        check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    r["loadavg_1m_before"] = before
    return r


def peer(config, mode, steps, warmup, threads):
    before = load1()
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benches", "peer", "bench.py"), "--config", config,
         "--mode", mode, "--steps", str(steps), "--warmup", str(warmup),
         "--threads", str(threads), "--format", "json"],
        check=True, capture_output=True, text=True).stdout
    r = json.loads(out)["results"][0]
    r["loadavg_1m_before"] = before
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="eager,compile")
    a = ap.parse_args()
    rows, raw = [], {"date": datetime.datetime.utcnow().isoformat() + "Z", "runs": []}
    for c in CONFIGS:
        lo = lorac(c, a.steps, a.warmup)
        raw["runs"].append({"side": "loraC", "config": c, **lo})
        peers = {}
        for m in a.modes.split(","):
            p = peer(c, m, min(a.steps, 5), a.warmup, a.threads)
            raw["runs"].append({"side": "pytorch", **p})
            peers[m] = p
        rows.append((c, lo, peers))
    print("| config | loraC step s | loraC tokens/s | loraC GFLOP/s (% of GEMM peak) | loraC peak RSS MB "
          "| loraC compile s | PyTorch eager step s | PyTorch compile step s | PyTorch peak RSS MB "
          "| speed-up vs eager | vs compile |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c, lo, peers in rows:
        e, k = peers.get("eager"), peers.get("compile")
        fmt = lambda p, key: f"{p[key]:.3f}" if p else "–"
        print(f"| {c} | {lo['median_step_s']:.3f} | {lo['tokens_per_s']:.0f} | "
              f"{lo['gflops']:.0f} ({100 * lo['peak_fraction']:.0f} %) | {lo['peak_rss_mb']:.0f} | "
              f"{lo['compile_s']:.2f} | {fmt(e, 'median_step_s')} (cpu/wall {e['cpu_per_wall']:.2f}) | "
              f"{fmt(k, 'median_step_s')} | {e['peak_rss_mb']:.0f} | "
              f"{e['median_step_s'] / lo['median_step_s']:.2f}× | "
              + (f"{k['median_step_s'] / lo['median_step_s']:.2f}×" if k else "–") + " |")
    os.makedirs(os.path.join(ROOT, "benches", "results"), exist_ok=True)
    path = os.path.join(ROOT, "benches", "results",
                        datetime.datetime.utcnow().strftime("%Y-%m-%dT%H%M") + "-side-by-side.json")
    with open(path, "w") as f:
        json.dump(raw, f, indent=1)
    print(f"\nraw: {os.path.relpath(path, ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
