#!/usr/bin/env python3
"""Lossy-strategy comparison (issue 4's table, docs/benchmarks.md).

For each model and each strategy at kv_budget 1.0, 0.5, 0.2 and 0.1, runs one
`kvscope bench` under the same seeded offline load and a fixed KV memory, and prints a
Markdown table: KV held, sequences running at once, output tokens/s, host-to-device bytes
per generated token, and quality against the full cache (mean KL, top-1 agreement,
perplexity of a text). `paged` at the same memory is the lossless reference row.

Usage:
  python3 bench/strategy_table.py --kvscope build/cli/kvscope --work /tmp/strategies
      [--shared ../shared] [--repeats 3] [--quick]

Each cell is the median over --repeats runs (tokens/s varies between runs; memory and
quality do not, since the load and the strategies are deterministic). Needs only the
kvscope binary and Python 3's standard library.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

STRATEGIES = ["h2o", "streaming", "infinigen"]
BUDGETS = [1.0, 0.5, 0.2, 0.1]


def models(shared):
    """(label, --model, extra flags, KV memory, text for perplexity or None)."""
    tiny = os.path.join(shared, "models", "tinystories-656k")
    stories = os.path.join(shared, "data", "stories.txt")
    out = []
    if os.path.isdir(tiny):
        # 1 KiB of KV per token (2 layers x 4 KV heads x 16 dims x K,V x fp32): 128 KiB holds
        # 128 tokens, i.e. one full-cache sequence of 64 + 32 tokens.
        out.append(("TinyStories-656K", tiny,
                    ["--dataset", "text", "--text", stories], "128KiB", stories))
    else:
        print(f"skipping TinyStories: {tiny} not found", file=sys.stderr)
    # llama-tiny: 4 layers x 4 KV heads x 16 dims x K,V x fp32 = 2 KiB per token; 256 KiB
    # holds one full-cache sequence (and InfiniGen's prefetch buffers at kv_budget 1.0).
    out.append(("llama-tiny preset", "preset:llama-tiny", [], "256KiB", None))
    return out


def run_one(kvscope, work, label, model, extra, kv_memory, text, strategy, budget, params, rep,
            quick):
    tag = "-".join(p.replace("=", "") for p in params)
    name = f"{label.split()[0]}-{strategy}{tag}-{budget}-{rep}".replace("/", "_")
    out_dir = os.path.join(work, name)
    cmd = [kvscope, "bench", "--model", model, "--strategy", strategy,
           "--kv-memory", kv_memory, "--num-requests", "8" if quick else "32",
           "--request-rate", "inf", "--input-len", "64", "--output-len", "32",
           "--seed", "1", "--out", out_dir] + extra
    if strategy != "paged":
        cmd += ["--strategy-param", f"kv_budget={budget}"]
    for p in params:
        cmd += ["--strategy-param", p]
    if text:
        cmd += ["--perplexity-text", text]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        # Shown in the table (e.g. a strategy that needs more memory than the row's budget).
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no message"
        return {"error": f"exit {proc.returncode}: {last}"}
    with open(os.path.join(out_dir, "result.json")) as f:
        return json.load(f)


def peak_running(result):
    steps = result.get("timelines", {}).get("steps", [])
    return max((s.get("running", 0) for s in steps), default=0)


def fmt(value, spec):
    return "—" if value is None else format(value, spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kvscope", default="build/cli/kvscope")
    parser.add_argument("--work", default="/tmp/kvscope-strategy-table")
    parser.add_argument("--shared", default=os.environ.get("KVSCOPE_SHARED_DIR", "../shared"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 requests instead of 32")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)

    for label, model, extra, kv_memory, text in models(args.shared):
        print(f"\n### {label}, KV memory {kv_memory}\n")
        print("| strategy | kv_budget | peak KV held | peak seqs running | output tok/s "
              "| h2d bytes/token | mean KL | top-1 agreement | perplexity (full) |")
        print("|---|---|---|---|---|---|---|---|---|")
        rows = [("paged", 1.0, [])] + [(s, b, []) for s in STRATEGIES for b in BUDGETS]
        if label.startswith("TinyStories"):
            # Its 2 layers are both dense under InfiniGen's default (layers 0 and 1 read their
            # full KV): also show it with only layer 0 dense.
            rows += [("infinigen", b, ["dense_layers=1"]) for b in BUDGETS]
        for strategy, budget, params in rows:
            results = [run_one(args.kvscope, args.work, label, model, extra, kv_memory, text,
                               strategy, budget, params, r, args.quick)
                       for r in range(args.repeats)]
            name = strategy + "".join(f" ({p})" for p in params)
            if "error" in results[0]:
                print(f"| {name} | {budget} | {results[0]['error']} |||||||")
                continue
            s = results[0]["summary"]
            tok_s = statistics.median(r["summary"]["output_throughput"] for r in results)
            ppl = s.get("quality_perplexity")
            ppl_full = s.get("quality_perplexity_full")
            ppl_text = "—" if ppl is None else f"{ppl:.3f} ({ppl_full:.3f})"
            print(f"| {name} | {budget if strategy != 'paged' else '—'} "
                  f"| {s['peak_kv_used_bytes'] / 1024:.1f} KiB | {peak_running(results[0])} "
                  f"| {tok_s:,.0f} | {fmt(s.get('h2d_bytes_per_token'), ',.0f')} "
                  f"| {fmt(s.get('quality_mean_kl'), '.4f')} "
                  f"| {fmt(s.get('quality_top1_agreement'), '.3f')} | {ppl_text} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
