#!/usr/bin/env bash
# bench/gpu/strategies.sh BUNDLE_DIR OUT_DIR: each KV strategy's throughput and memory at
# kv_budget 1.0, 0.5 and 0.2 on the GPU engine (issue 6), through `kvscope bench` with
# `backend: cuda`, on one preset with synthetic bf16 weights, under one seeded load.
#
#   model     STRAT_MODEL (default llama-3.2-1b: 16 layers, 8 KV heads of 64)
#   load      32 requests at t=0, 1024-token prompts, 128 output tokens, ignore_eos
#             (STRAT_NUM, STRAT_INPUT, STRAT_OUTPUT)
#   budgets   lossy strategies (h2o, streaming, infinigen): strategy kv_budget = B, with a
#             KV memory that holds the whole load; lossless (paged, contiguous): the KV
#             memory is B x what the whole load needs (float32 bytes per token, as
#             memory.kv_bytes counts them), so lower budgets queue or preempt
#   quality   off (--quality-sample-rate 0): the checks (on the GPU, two engines per
#             request) would not fit the call with every budget; quality is measured by the
#             CPU sweeps and by gpu_quality_test
# Prints TSV rows `strategy<TAB>name<TAB>kv_budget<TAB>output_tok_s<TAB>median_tpot_ms<TAB>
# peak_kv_used_MiB<TAB>peak_host_kv_MiB<TAB>device_kv_pool_MiB<TAB>pinned_MiB<TAB>h2d_MiB`
# (used/host KV as the strategy accounts it, float32; pool, pinned and h2d as the GPU engine
# reports them, in its storage type) and keeps every run's
# result.json and log under OUT_DIR/strategies/. A strategy the engine refuses shows its
# first error line instead of numbers. STRAT_BUDGETS and STRAT_NAMES override the lists.
set -uo pipefail
bundle=${1:?bundle folder}; out=${2:?out folder}
model=${STRAT_MODEL:-llama-3.2-1b}
names=${STRAT_NAMES:-paged contiguous h2o streaming infinigen}
budgets=${STRAT_BUDGETS:-1.0 0.5 0.2}
dir="$out/strategies"; mkdir -p "$dir"
num=${STRAT_NUM:-32}; input=${STRAT_INPUT:-1024}; output=${STRAT_OUTPUT:-128}
backend=${STRAT_BACKEND:-cuda}  # cpu: a dry run of this script on a machine without a GPU
# float32 bytes per token of the model: layers * 2 * kv_heads * head_dim * 4, read from the
# preset list would need the binary; the default model's value is written here and checked
# against result.json's config below.
per_token=${STRAT_BYTES_PER_TOKEN:-65536}
need=$((num * (input + output + 16) * per_token))
for name in $names; do
  for b in $budgets; do
    case $name in
      paged)
        kv=$(python3 -c "print(int($need * $b))"); strategy="{name: $name}" ;;
      contiguous)  # reserves prompt + output per sequence (not max_model_len)
        kv=$(python3 -c "print(int($need * $b))"); strategy="{name: $name, reserve: prompt_plus_output}" ;;
      *)
        kv=$need; strategy="{name: $name, kv_budget: $b}" ;;
    esac
    run="$dir/$name-$b"; mkdir -p "$run"
    cat > "$run/config.yaml" <<EOF
model: {preset: $model}
strategy: $strategy
memory: {kv_bytes: $kv}
backend: $backend
gpu: {dtype: bf16, cuda_graphs: false}
workload: {num_requests: $num, arrival: all, input_len: $input, output_len: $output, ignore_eos: true}
seed: 1
out: $run
EOF
    timeout "${STRAT_RUN_TIMEOUT:-90}" "$bundle/run" kvscope bench --config "$run/config.yaml" \
      --quality-sample-rate 0 > "$run/log.txt" 2>&1
    rc=$?
    if [ $rc -ne 0 ] || [ ! -f "$run/result.json" ]; then
      printf 'strategy\t%s\t%s\trc=%s\t%s\n' "$name" "$b" "$rc" \
        "$(grep -m1 -iE 'error|refus|invalid|unimplemented' "$run/log.txt" | cut -c1-160)"
      continue
    fi
    python3 - "$run/result.json" "$name" "$b" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("summary", {})
mem = r.get("environment", {}).get("gpu_memory", {}).get("ranks", [{}])
m = mem[0] if mem else {}
mib = lambda x: (x or 0) / 2**20
print("strategy\t%s\t%s\t%.1f\t%.2f\t%.2f\t%.2f\t%.1f\t%.1f\t%.1f" % (
    sys.argv[2], sys.argv[3], s.get("output_throughput", 0), s.get("median_tpot_ms") or 0,
    mib(s.get("peak_kv_used_bytes")), mib(s.get("peak_host_kv_bytes")),
    mib(m.get("kv_pool_bytes")), mib(m.get("pinned_host_bytes")), mib(m.get("h2d_bytes"))))
PY
  done
done
