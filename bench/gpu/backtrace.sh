#!/usr/bin/env bash
# bench/gpu/backtrace.sh BUNDLE BINARY FILTER...: on the GPU machine, runs each gtest FILTER
# of a bundled test binary under cuda-gdb (batch mode) and prints where it crashed: the
# host backtrace, or the CUDA exception and the device frame. For crashes the sanitizer and
# the test log cannot place (a segfault leaves gtest silent). Logs under $OUT.
set -uo pipefail
bundle=${1:?bundle (.tar.xz or folder)}; bin=${2:?binary}; shift 2
if [ -f "$bundle" ]; then
  unpack=$(mktemp -d); tar -C "$unpack" -xJf "$bundle" || exit 2; bundle="$unpack/bundle"
fi
bundle=$(cd "$bundle" && pwd)
export PATH="$PATH:/usr/local/cuda/bin" KVSCOPE_SHARED_DIR="$bundle/shared"
out=${OUT:-/tmp/backtrace}; mkdir -p "$out"
# The bundle's `run` sets the library path and execs the binary: exec cuda-gdb instead.
sed 's|^exec "\$here/bin/\$bin"|exec cuda-gdb -q -batch -ex run -ex bt -ex "info cuda kernels" --args "$here/bin/$bin"|' \
  "$bundle/run" > "$bundle/run-gdb"
for filter in "$@"; do
  log="$out/gdb-$(echo "$filter" | tr -c 'A-Za-z0-9_\n' '_').log"
  timeout 120 bash "$bundle/run-gdb" "$bin" --gtest_filter="$filter" > "$log" 2>&1
  echo "==== $filter (rc=$?)"
  grep -E -A25 'received signal|CUDA Exception|^#[0-9]' "$log" | grep -v '^\[New Thread' | head -40
done
