#!/usr/bin/env bash
# The main job: kvscope's engine generating text. With ../shared present it tells a
# TinyStories story from the real model; it always runs a synthetic preset too.
set -euo pipefail
kvscope=${1:-build/cli/kvscope}
shared=${KVSCOPE_SHARED_DIR:-../shared}
model="$shared/models/tinystories-656k"
if [ -d "$model" ]; then
  echo "== kvscope generate --model $model --prompt 'Once upon a time' --max-new-tokens 64"
  "$kvscope" generate --model "$model" --prompt "Once upon a time" --max-new-tokens 64
  echo "== the same with tensor parallelism over 2 ranks"
  "$kvscope" generate --model "$model" --prompt "Once upon a time" --max-new-tokens 64 --tp 2
else
  echo "(skipping TinyStories: $model not found; set KVSCOPE_SHARED_DIR)"
fi
echo "== kvscope generate --model preset:llama-100m (synthetic weights, token ids)"
"$kvscope" generate --model preset:llama-100m --prompt-ids 1,15043,29892,920,526,366 \
  --max-new-tokens 16
