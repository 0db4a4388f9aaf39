#!/usr/bin/env python3
"""The PyTorch peers of kvscope's GPU benchmarks, measured in the same call on the same card.

Runs on the GPU machine (bench/gpu/check.sh run). Each line printed is TSV:
    peer<TAB>name<TAB>shape<TAB>median_us<TAB>value<TAB>unit
and the same rows go to --json. Timing: CUDA events around each call, warm-up first,
median of --reps calls; inputs rotate among several copies so L2 (50 MB on the H100)
does not hold them. Random normal data, never zeros (METHOD.md).

Shapes follow issue 6 and ../shared/reference/performance.md:
  - copies: device->device 1 GiB (bytes read + written), pinned host->device 1 GiB;
  - decode attention: torch SDPA, 1 query token, bf16, 32 query / 8 KV heads, head_dim 128,
    batch x context 1x32768, 16x4096, 64x2048, 128x1024; bandwidth = KV bytes / time;
  - prefill attention: SDPA causal, batch 1, 32 heads, head_dim 128, L 2048 and 8192;
    FLOPs = half of 4 * heads * L^2 * head_dim;
  - decode-step weight GEMMs of Llama-2-7B (F.linear, bf16) at M = 1 and 32, and the
    weight-read floor = weight bytes / measured copy bandwidth;
  - optionally (--hf) Hugging Face transformers generate on a random Llama-2-7B-shaped
    bf16 model, batch 1 and 32.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROWS = []


def emit(name, shape, median_us, value, unit):
    ROWS.append(dict(peer="torch", name=name, shape=shape, median_us=median_us,
                     value=value, unit=unit))
    print(f"torch\t{name}\t{shape}\t{median_us:.1f}\t{value:.3f}\t{unit}", flush=True)


def time_us(fn, args_list, reps, warmup=3):
    """Median microseconds of fn(*args) over reps calls, rotating through args_list."""
    for i in range(warmup):
        fn(*args_list[i % len(args_list)])
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        args = args_list[i % len(args_list)]
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0)
    return statistics.median(times)


def copies(reps):
    n = 1 << 30
    src = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = time_us(lambda a, b: b.copy_(a), [(src, dst)], reps)
    d2d = 2 * n / (us * 1e-6) / 1e12
    emit("copy_d2d", "1GiB", us, d2d, "TB/s")
    host = torch.randint(0, 255, (n,), dtype=torch.uint8).pin_memory()
    us = time_us(lambda a, b: b.copy_(a, non_blocking=True), [(host, dst)], max(5, reps // 4))
    emit("copy_h2d_pinned", "1GiB", us, n / (us * 1e-6) / 1e9, "GB/s")
    del src, dst, host
    torch.cuda.empty_cache()
    return d2d


def decode_attention(reps):
    for batch, ctx in [(1, 32768), (16, 4096), (64, 2048), (128, 1024)]:
        kv_bytes = 2 * batch * 8 * ctx * 128 * 2
        copies_n = max(2, min(8, int(2e9 // kv_bytes)))
        sets = []
        for _ in range(copies_n):
            q = torch.randn(batch, 32, 1, 128, dtype=torch.bfloat16, device="cuda")
            k = torch.randn(batch, 8, ctx, 128, dtype=torch.bfloat16, device="cuda")
            v = torch.randn(batch, 8, ctx, 128, dtype=torch.bfloat16, device="cuda")
            sets.append((q, k, v))
        fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        us = time_us(fn, sets, reps)
        emit("decode_attention_sdpa", f"{batch}x{ctx}", us, kv_bytes / (us * 1e-6) / 1e12,
             "TB/s")
        del sets
        torch.cuda.empty_cache()


def prefill_attention(reps):
    for length in [2048, 8192]:
        q = torch.randn(1, 32, length, 128, dtype=torch.bfloat16, device="cuda")
        k = torch.randn_like(q)
        v = torch.randn_like(q)
        fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        us = time_us(fn, [(q, k, v)], reps)
        flops = 0.5 * 4 * 32 * length * length * 128
        emit("prefill_attention_sdpa", f"L{length}", us, flops / (us * 1e-6) / 1e12,
             "TFLOP/s")


def weight_gemms(reps, d2d_tbs):
    # Llama-2-7B: per layer qkv 12288x4096, o 4096x4096, gate_up 22016x4096, down 4096x11008;
    # LM head 32000x4096. Two full sets of weights rotate so L2 never holds them.
    shapes = [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)]
    layers = 32
    weight_bytes = (sum(o * i for o, i in shapes) * layers + 32000 * 4096 * 2) * 2
    # Floor counts every parameter read once per step (embedding row excluded).
    floor_ms = weight_bytes / (d2d_tbs * 1e12) * 1e3
    emit("weight_read_floor_llama2_7b", "bf16", floor_ms * 1e3, floor_ms, "ms/step")
    ws = [torch.randn(o, i, dtype=torch.bfloat16, device="cuda") for o, i in shapes]
    head = torch.randn(32000, 4096, dtype=torch.bfloat16, device="cuda")
    for m in [1, 32]:
        xs = {i: torch.randn(m, i, dtype=torch.bfloat16, device="cuda") for _, i in shapes}

        def step():
            for _ in range(layers):
                for w in ws:
                    F.linear(xs[w.shape[1]], w)
            F.linear(xs[4096], head)
        # One layer's weights reused 32 times would sit partly in L2 (50 MB vs 400 MB per
        # layer: no), so reuse is harmless here; time whole steps.
        us = time_us(step, [()], max(5, reps // 10))
        emit("decode_step_gemms_llama2_7b", f"M{m}", us, us / 1e3, "ms/step")
    del ws, head
    torch.cuda.empty_cache()


def hf_generate():
    """HF generate on a random Llama-2-7B-shaped bf16 model: whole-call tokens/s, and the
    decode step time = (time of n new tokens - time of 1 new token) / (n - 1), which takes
    the prefill out (the same shapes as kvscope's gpu_decode_bench)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                         max_position_embeddings=4096)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(default)

    def timed(ids, new):
        kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, **kwargs)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    for batch, prompt, new in [(1, 128, 64), (32, 512, 64)]:
        ids = torch.randint(3, 32000, (batch, prompt), device="cuda")
        timed(ids, 2)  # warm-up
        first = statistics.median(timed(ids, 1) for _ in range(3))
        total = statistics.median(timed(ids, new) for _ in range(3))
        emit("hf_generate_llama2_7b", f"b{batch}_p{prompt}_n{new}", total * 1e6,
             batch * new / total, "tok/s")
        step_ms = (total - first) / (new - 1) * 1e3
        emit("hf_decode_step_llama2_7b", f"b{batch}_p{prompt}", step_ms * 1e3, step_ms,
             "ms/step")
    del model
    torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--hf", action="store_true", help="also time HF transformers generate")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("torch_peers.py: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    d2d = copies(args.reps)
    decode_attention(args.reps)
    prefill_attention(args.reps)
    weight_gemms(args.reps, d2d)
    if args.hf:
        hf_generate()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                           rows=ROWS), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
