#!/usr/bin/env bash
# bench/gpu/check.sh: every GPU test and GPU benchmark of kvscope in one call on the GPU
# machine, with the PyTorch peers measured in the same call, ending in a short table.
#
#   bash bench/gpu/check.sh build [BUILD_DIR]   # here (no GPU needed): Release build for
#                                               # sm_80 and sm_90, packed with gpu-bundle
#                                               # into BUILD_DIR/bundle and bundle.tar.xz
#                                               # (default build-gpu)
#   bash bench/gpu/check.sh run [BUNDLE]        # on the GPU machine (the .tar.xz or the
#                                               # unpacked folder), logs under $OUT
#
# From a session with a device, carry the archive with the call:
#   run(command="bash bench/gpu/check.sh run build-gpu/bundle.tar.xz",
#       carry=["build-gpu/bundle.tar.xz"])
# `run` exits non-zero when any GPU test fails or crashes; benchmarks and the sanitizer
# report in the table. CHECK_BUDGET_S (default 540) bounds the whole run: each step's
# timeout is the smaller of its own limit and the time left, and a step with under 15 s
# left is skipped and says so in the table. CHECK_STEPS (default "tests sanitizer bench torch
# hf strategies gang profile") picks the steps, for a short call that checks one thing.
set -uo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:-}

die() { echo "check.sh: $*" >&2; exit 2; }

build() {
  local dir=${1:-build-gpu}
  local shared=${KVSCOPE_SHARED_DIR:-$here/../shared}
  cmake -S "$here" -B "$here/$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVSCOPE_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="80;90" -DKVSCOPE_BUILD_TESTS=ON -DKVSCOPE_BUILD_BENCH=ON \
    -DCMAKE_CUDA_FLAGS=-lineinfo \
    ${CMAKE_EXTRA:-} || die "cmake failed"
  # Every target named gpu_*_tests or gpu_*_bench, whatever exists at this commit.
  mapfile -t targets < <(ninja -C "$here/$dir" -t targets all |
    sed -n 's/^\(gpu_[a-z0-9_]*_\(tests\|bench\)\): phony$/\1/p' | sort -u)
  [ ${#targets[@]} -gt 0 ] || die "no gpu_*_tests or gpu_*_bench targets (CUDA not found?)"
  # The CLI too, for bench/gpu/strategies.sh (kvscope bench with backend: cuda).
  targets+=(kvscope)
  ninja -C "$here/$dir" -j "$(nproc)" "${targets[@]}" || die "build failed"
  local bundle="$here/$dir/bundle"
  rm -rf "$bundle"
  local bins=()
  local t
  for t in "${targets[@]}"; do
    bins+=("$(find "$here/$dir" -name "$t" -type f -perm -u+x | head -1)")
  done
  bash "$shared/tools/gpu-bundle" "$bundle" "${bins[@]}" || die "gpu-bundle failed"
  # The tiny model and the HF fixtures travel with the bundle (never committed).
  mkdir -p "$bundle/shared/models"
  cp -r "$shared/models/tinystories-656k" "$bundle/shared/models/" 2>/dev/null || true
  cp -r "$shared/fixtures" "$shared/data" "$bundle/shared/" 2>/dev/null || true
  cp "$here/bench/gpu/torch_peers.py" "$here/bench/gpu/hf_bf16_error.py" \
    "$here/bench/gpu/sanitizer_summary.py" "$here/bench/gpu/strategies.sh" \
    "$here/bench/gpu/gang.sh" "$bundle/"
  printf '%s\n' "${targets[@]}" > "$bundle/targets.txt"
  du -sh "$bundle"
  # The device call carries at most 64 MiB: ship one compressed archive (about 20 MB).
  tar -C "$here/$dir" -cf - bundle | xz -T0 -3 > "$here/$dir/bundle.tar.xz" || die "tar failed"
  du -sh "$here/$dir/bundle.tar.xz"
  echo "bundle ready: carry $dir/bundle.tar.xz and run: bash bench/gpu/check.sh run $dir/bundle.tar.xz"
}

run() {
  export PATH="$PATH:/usr/local/cuda/bin"
  local bundle=${1:-build-gpu/bundle.tar.xz}
  if [ -f "$bundle" ]; then  # the archive check.sh build made: unpack it first
    local unpack
    unpack=$(mktemp -d)
    tar -C "$unpack" -xJf "$bundle" || die "cannot unpack $bundle"
    bundle="$unpack/bundle"
  fi
  [ -d "$bundle" ] || die "no bundle at $bundle (build it here first: check.sh build)"
  bundle=$(cd "$bundle" && pwd)
  local out=${OUT:-$here/out/gpu-check}
  mkdir -p "$out"
  export KVSCOPE_SHARED_DIR="$bundle/shared"
  local table="$out/table.tsv"
  : > "$table"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem \
    --format=csv > "$out/gpu.txt" 2>&1
  local card
  card=$(sed -n 2p "$out/gpu.txt")
  echo "# $(date -u +%F) card: $card" | tee -a "$table"
  local failed=0
  local deadline=$((SECONDS + ${CHECK_BUDGET_S:-540}))
  # step_limit N: the timeout for a step whose own limit is N seconds (0: skip it).
  step_limit() {
    local left=$((deadline - SECONDS))
    if [ "$left" -lt 15 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
  }
  local steps=" ${CHECK_STEPS:-tests sanitizer bench torch hf strategies gang profile} "
  want() { [[ "$steps" == *" $1 "* ]]; }
  # 1. GPU tests, each binary with a timeout.
  want tests && while read -r t; do
    case "$t" in *_tests) ;; *) continue ;; esac
    local log="$out/$t.log" lim
    lim=$(step_limit "${TEST_TIMEOUT:-200}")
    if [ "$lim" -eq 0 ]; then printf 'test\t%s\tskipped: out of time\n' "$t" | tee -a "$table"; failed=1; continue; fi
    timeout "$lim" "$bundle/run" "$t" --gtest_output="json:$out/$t.json" > "$log" 2>&1
    local rc=$?
    local passed skipped failed_n
    # gtest's closing summary: "[  PASSED  ] N tests.", "[  SKIPPED ] N tests, listed
    # below:", "N FAILED TESTS" (absent lines mean 0).
    passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\?\.$/\1/p' "$log" | tail -1)
    skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) tests\?, listed below:$/\1/p' "$log" | tail -1)
    failed_n=$(sed -n 's/^ *\([0-9]*\) FAILED TESTS\?$/\1/p' "$log" | tail -1)
    passed=${passed:-0}; skipped=${skipped:-0}; failed_n=${failed_n:-0}
    printf 'test\t%s\trc=%s\tpassed=%s\tfailed=%s\tskipped=%s\n' "$t" "$rc" "$passed" \
      "$failed_n" "$skipped" | tee -a "$table"
    grep '^\[  FAILED  \] [A-Za-z].*(' "$log" | head -20
    [ "$rc" -eq 0 ] || failed=1
  done < "$bundle/targets.txt"
  # The worker's capability detection on a real GPU: backends must include cuda.
  if want tests && [ -x "$bundle/bin/kvscope" ]; then
    timeout 60 "$bundle/run" kvscope worker --print-capabilities > "$out/capabilities.json" \
      2> "$out/capabilities.log"
    local caps
    caps=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print("backends=%s gpus=%s" % (",".join(c["backends"]), ";".join("%s cc %s %.0f GiB driver %s" % (g["name"], g["compute_capability"], g["memory_bytes"] / 2**30, g["driver"]) for g in c["gpus"])))' "$out/capabilities.json" 2>&1)
    printf 'capabilities\t%s\n' "$caps" | tee -a "$table"
    [[ "$caps" == backends=cpu,cuda* ]] || failed=1
  fi
  # 2. compute-sanitizer memcheck and racecheck over the kernel tests, side by side (the
  # instrumentation costs host time; the machine has 16 cores). RACECHECK_FILTER drops the
  # slowest tests from racecheck by default (SampleTokens' large cases: the small ones
  # still cover the sampling kernels' shared memory).
  if want sanitizer && command -v compute-sanitizer > /dev/null && grep -qx gpu_kernels_tests "$bundle/targets.txt"; then
    local lim
    lim=$(step_limit "${SANITIZER_TIMEOUT:-120}")
    if [ "$lim" -eq 0 ]; then
      printf 'sanitizer\tskipped: out of time\n' | tee -a "$table"
    else
      local tool pids=()
      for tool in memcheck racecheck; do
        local filter=${SANITIZER_FILTER:-*}
        [ "$tool" = racecheck ] && filter=${RACECHECK_FILTER:-*-SampleTokensTest.LargeVocabulary:SampleTokensTest.MatchesCpuOnManyRowsAndParameters}
        # `run` execs the binary, so the sanitizer follows it (--target-processes all).
        timeout "$lim" compute-sanitizer --tool "$tool" --target-processes all \
          --report-api-errors no --error-exitcode 99 --print-limit 100000 \
          "$bundle/run" gpu_kernels_tests --gtest_filter="$filter" > "$out/sanitizer-$tool.log" 2>&1 &
        pids+=($!)
      done
      local i=0
      for tool in memcheck racecheck; do
        wait "${pids[$i]}"
        local rc=$?
        i=$((i + 1))
        printf 'sanitizer\t%s\trc=%s\t%s\n' "$tool" "$rc" \
          "$(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/sanitizer-$tool.log")" | tee -a "$table"
        if [ "$rc" -ne 0 ] && command -v python3 > /dev/null; then
          python3 "$bundle/sanitizer_summary.py" "$out/sanitizer-$tool.log" | tee -a "$table"
        fi
      done
    fi
  fi
  # 3. kvscope's GPU benchmarks (TSV rows on stdout).
  want bench && while read -r t; do
    case "$t" in *_bench) ;; *) continue ;; esac
    local lim
    # The decode bench builds 7B synthetic weights and two engines: give it longer.
    if [ "$t" = gpu_decode_bench ]; then lim=$(step_limit "${DECODE_TIMEOUT:-180}"); else lim=$(step_limit "${BENCH_TIMEOUT:-90}"); fi
    if [ "$lim" -eq 0 ]; then echo "# $t skipped: out of time" | tee -a "$table"; continue; fi
    timeout "$lim" "$bundle/run" "$t" > "$out/$t.log" 2>&1
    echo "# $t rc=$?" >> "$table"
    grep -v '^#' "$out/$t.log" | grep -P '\t' | sed 's/^/kvscope\t/' | tee -a "$table"
  done < "$bundle/targets.txt"
  # 4. The PyTorch peers in the same call.
  if want torch && command -v python3 > /dev/null; then
    local lim
    lim=$(step_limit "${TORCH_TIMEOUT:-150}")
    [ "$lim" -gt 0 ] || lim=1
    timeout "$lim" python3 "$bundle/torch_peers.py" --json "$out/torch.json" \
      ${TORCH_ARGS---hf} > "$out/torch.log" 2>&1
    echo "# torch_peers rc=$?" >> "$table"
    grep -P '^torch\t' "$out/torch.log" | tee -a "$table"
  fi
  # 5. transformers' own bf16 error on the HF fixtures: the yardstick of the engine's bf16
  # tolerance in gpu_engine_tests.
  if want hf && command -v python3 > /dev/null && [ -f "$bundle/hf_bf16_error.py" ]; then
    local lim
    lim=$(step_limit 60)
    if [ "$lim" -gt 0 ]; then
      timeout "$lim" python3 "$bundle/hf_bf16_error.py" > "$out/hf_bf16_error.log" 2>&1
      echo "# hf_bf16_error rc=$?" >> "$table"
      grep -P '^hf_bf16_error\t' "$out/hf_bf16_error.log" | tee -a "$table"
    fi
  fi
  # 6. Each KV strategy's throughput and memory at kv_budget 1.0 / 0.5 / 0.2 (kvscope bench,
  # backend: cuda, synthetic llama-3.2-1b).
  if want strategies && [ -x "$bundle/bin/kvscope" ] && [ -f "$bundle/strategies.sh" ]; then
    local lim
    lim=$(step_limit "${STRATEGIES_TIMEOUT:-240}")
    if [ "$lim" -gt 0 ]; then
      echo "# strategies: name budget out_tok/s median_tpot_ms peak_kv_MiB host_kv_MiB pool_MiB pinned_MiB h2d_MiB" >> "$table"
      timeout "$lim" bash "$bundle/strategies.sh" "$bundle" "$out" > "$out/strategies.log" 2>&1
      echo "# strategies rc=$?" >> "$table"
      grep -P '^strategy\t' "$out/strategies.log" | tee -a "$table"
    fi
  fi
  # 6b. A GPU gang through the CLI: tp 2 as one process and as two processes (nodes: 2,
  # host-staged on this one GPU); greedy tokens must be equal (bench/gpu/gang.sh).
  if want gang && [ -x "$bundle/bin/kvscope" ] && [ -f "$bundle/gang.sh" ]; then
    local lim
    lim=$(step_limit "${GANG_TIMEOUT:-150}")
    if [ "$lim" -gt 0 ]; then
      echo "# gang: case rc out_tok/s note" >> "$table"
      GANG_RUN_TIMEOUT=$((lim / 3)) timeout "$lim" bash "$bundle/gang.sh" "$bundle" "$out" \
        > "$out/gang.log" 2>&1
      echo "# gang rc=$?" >> "$table"
      grep -P '^gang\t' "$out/gang.log" | tee -a "$table"
    fi
  fi
  # 7. Nsight Compute on one steady-state launch of the decode kernel (64 x 2048, the 221st
  # DecodeKernel launch of gpu_attention_bench: after 1x32768 and 16x4096, 110 launches each,
  # and 10 warm-ups of this shape) and of the prefill kernel (8192 tokens): the figures that
  # say why a kernel is slow (bench/gpu/attention_notes.md).
  if want profile && command -v ncu > /dev/null && grep -qx gpu_attention_bench "$bundle/targets.txt"; then
    local kernel skip lim
    for spec in DecodeKernel:230 PrefillKernel:18; do
      kernel=${spec%%:*}; skip=${spec##*:}
      lim=$(step_limit "${PROFILE_TIMEOUT:-90}")
      [ "$lim" -gt 0 ] || break
      timeout "$lim" ncu --target-processes all --kernel-name "regex:$kernel" \
        --launch-skip "$skip" --launch-count 1 --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
        --csv --page details "$bundle/run" gpu_attention_bench > "$out/ncu-$kernel.csv" 2> "$out/ncu-$kernel.log"
      echo "# ncu $kernel rc=$?" >> "$table"
      python3 - "$out/ncu-$kernel.csv" "$kernel" <<'PY' | tee -a "$table"
import csv, sys
wanted = ["Duration", "DRAM Throughput", "Memory Throughput", "Compute (SM) Throughput",
          "Registers Per Thread", "Block Limit Registers", "Block Limit Shared Mem",
          "Theoretical Occupancy", "Achieved Occupancy", "Warp Cycles Per Issued Instruction",
          "Issued Warp Per Scheduler", "L1/TEX Hit Rate", "L2 Hit Rate", "Mem Busy"]
rows = [r for r in csv.reader(open(sys.argv[1], errors="replace")) if len(r) > 12]
if not rows:
    print("profile\t%s\tno rows (see ncu log)" % sys.argv[2])
    sys.exit(0)
head = rows[0]
name_i, unit_i, value_i = head.index("Metric Name"), head.index("Metric Unit"), head.index("Metric Value")
for r in rows[1:]:
    if r[name_i] in wanted:
        print("profile\t%s\t%s\t%s %s" % (sys.argv[2], r[name_i], r[value_i], r[unit_i]))
PY
    done
  fi
  echo
  echo "==== kvscope GPU check ($card) ===="
  if command -v column > /dev/null; then column -t -s $'\t' "$table"; else cat "$table"; fi
  # The device call brings back only a few files: pack every log into one archive and keep
  # the table beside it.
  if [ -n "${OUT:-}" ]; then
    local archive
    archive=$(mktemp --suffix=.tar.xz)
    tar -C "$out" -cJf "$archive" . 2>/dev/null &&
      find "$out" -mindepth 1 -maxdepth 1 ! -name table.tsv -exec rm -rf {} + &&
      mv "$archive" "$out/logs.tar.xz"
  fi
  return $failed
}

case "$mode" in
  build) shift; build "$@" ;;
  run) shift; run "$@" ;;
  *) die "usage: check.sh build [BUILD_DIR] | check.sh run [BUNDLE]" ;;
esac
