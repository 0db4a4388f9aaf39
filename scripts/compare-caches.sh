#!/usr/bin/env bash
# A local contiguous-vs-paged comparison with `kvscope bench` and `kvscope report`
# (bash scripts/compare-caches.sh [KVSCOPE_BINARY]). The same seeded Poisson load is served with the
# `contiguous` cache (whole context reserved per sequence, as HF transformers does) and the
# `paged` cache (vLLM), on the real TinyStories model when ../shared is present and on a
# synthetic preset; `kvscope report` prints the runs side by side.
set -euo pipefail
kvscope=${1:-build/cli/kvscope}
out=${KVSCOPE_DEMO_OUT:-out/demo}
shared=${KVSCOPE_SHARED_DIR:-../shared}
rm -rf "$out"
runs=()
compare() {  # compare NAME MODEL KV_MEMORY WORKLOAD...
  local name=$1 model=$2 kv=$3
  shift 3
  for strategy in contiguous paged; do
    echo "== kvscope bench --model $model --strategy $strategy --kv-memory $kv $*"
    "$kvscope" bench --model "$model" --strategy "$strategy" --kv-memory "$kv" "$@" \
      --out "$out/$name-$strategy" 2> >(grep -v "^progress:" >&2) | tail -n 1
    runs+=("$out/$name-$strategy")
  done
}
model="$shared/models/tinystories-656k"
if [ -d "$model" ]; then
  compare tinystories "$model" 2MiB --num-requests 64 --request-rate 40 \
    --input-len 96 --input-dist lognormal --input-spread 0.5 --output-len 48 --seed 1
  echo "== a story from the engine (kvscope generate)"
  "$kvscope" generate --model "$model" --prompt "Once upon a time" --max-new-tokens 48
else
  echo "(skipping TinyStories: $model not found; set KVSCOPE_SHARED_DIR)"
fi
compare llama-tiny preset:llama-tiny 4MiB --num-requests 48 --request-rate 30 \
  --input-len 128 --input-dist lognormal --input-spread 0.5 --output-len 32 --seed 1
echo
echo "== kvscope report"
"$kvscope" report "${runs[@]}"
