#!/usr/bin/env bash
# bench/gpu/gang.sh BUNDLE_DIR OUT_DIR: a GPU gang through the real CLI (issue 6). The same
# `kvscope bench` config with backend: cuda and tp: 2 runs once as one process and once as
# a gang of two processes (nodes: 2: a driver and a follower, --gang-* flags, as a worker
# daemon starts them), on the one GPU of this machine: both processes share it, so the
# gang's all-reduces are host-staged over its TCP communicators (NCCL needs a GPU per
# rank). Greedy output tokens must be identical, request by request.
#
#   model   GANG_MODEL (default the TinyStories checkpoint in the bundle; GANG_PRESET=NAME
#           uses a preset with synthetic weights instead)
#   load    8 requests at t=0, 64-token prompts, 32 output tokens, ignore_eos, f32
#   GANG_BACKEND=cpu: a dry run of this script on a machine without a GPU
# Prints TSV rows `gang<TAB>case<TAB>rc<TAB>output_tok_s<TAB>note` and `gang<TAB>tokens
# <TAB>equal|DIFFER ...`. Logs and result files stay under OUT_DIR/gang/.
set -uo pipefail
bundle=${1:?bundle folder}; out=${2:?out folder}
dir="$out/gang"; mkdir -p "$dir"
if [ -n "${GANG_PRESET:-}" ]; then
  model="{preset: $GANG_PRESET}"
else
  model="{path: ${GANG_MODEL:-$bundle/shared/models/tinystories-656k}}"
fi
write_config() {  # write_config DIR NODES
  mkdir -p "$1"
  cat > "$1/config.yaml" <<YAML
model: $model
strategy: {name: paged}
memory: {kv_bytes: 64MiB}
backend: ${GANG_BACKEND:-cuda}
gpu: {dtype: f32, cuda_graphs: false}
tp: 2
nodes: $2
threads: 1
workload: {num_requests: 8, arrival: all, input_len: 64, output_len: 32, ignore_eos: true}
seed: 3
out: $1/out
YAML
}
tok_s() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['summary'].get('output_throughput', '?'))" "$1" 2>/dev/null || echo '?'; }

# One process.
write_config "$dir/single" 1
timeout "${GANG_RUN_TIMEOUT:-120}" "$bundle/run" kvscope bench --config "$dir/single/config.yaml" \
  --quality-sample-rate 0 > "$dir/single/log.txt" 2>&1
rc=$?
printf 'gang\tsingle_tp2\t%s\t%s\t%s\n' "$rc" "$(tok_s "$dir/single/out/result.json")" \
  "$(grep -m1 -iE 'error|refus|invalid' "$dir/single/log.txt" | cut -c1-120)"

# A gang of two processes on this GPU.
write_config "$dir/gang" 2
rv="$dir/gang/rendezvous"; rm -f "$rv"
timeout "${GANG_RUN_TIMEOUT:-120}" "$bundle/run" kvscope bench --config "$dir/gang/config.yaml" \
  --quality-sample-rate 0 --gang-rank 0 --gang-size 2 --gang-rendezvous-file "$rv" \
  --gang-listen-host 127.0.0.1 > "$dir/gang/driver.log" 2>&1 &
driver=$!
for _ in $(seq 1 600); do [ -s "$rv" ] && break; sleep 0.1; done
timeout "${GANG_RUN_TIMEOUT:-120}" "$bundle/run" kvscope bench --config "$dir/gang/config.yaml" \
  --gang-rank 1 --gang-size 2 --gang-rendezvous-file "$rv" > "$dir/gang/follower.log" 2>&1
frc=$?
wait "$driver"; drc=$?
printf 'gang\tgang_tp2_nodes2\t%s\t%s\t%s\n' "driver=$drc,follower=$frc" \
  "$(tok_s "$dir/gang/out/result.json")" \
  "$(grep -m1 -iE 'data plane|host-staged|nccl' "$dir/gang/driver.log" | cut -c1-120)"

python3 - "$dir/single/out/requests.jsonl" "$dir/gang/out/requests.jsonl" <<'PY'
import json, sys
def ids(path):
    try:
        return [json.loads(l)["output_ids"] for l in open(path) if l.strip()]
    except Exception as e:  # missing run: say so
        return "unreadable (%s)" % e
a, b = ids(sys.argv[1]), ids(sys.argv[2])
if isinstance(a, str) or isinstance(b, str):
    print("gang\ttokens\tDIFFER single=%s gang=%s" % (a if isinstance(a, str) else "ok",
                                                        b if isinstance(b, str) else "ok"))
elif a == b:
    print("gang\ttokens\tequal (%d requests, %d tokens)" % (len(a), sum(len(x) for x in a)))
else:
    first = next(i for i in range(min(len(a), len(b))) if a[i] != b[i]) if len(a) == len(b) else -1
    print("gang\ttokens\tDIFFER (first differing request %d)" % first)
PY
