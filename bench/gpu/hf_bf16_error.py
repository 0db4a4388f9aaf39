#!/usr/bin/env python3
"""How far transformers' own bf16 forward lands from the float32 HF reference fixtures.

The GPU engine's bf16 logits are compared with fixtures computed in float32
(../shared/fixtures/hf-reference/*/reference.json); the tolerance of that comparison
(tests/gpu_engine/gpu_model_shard_test.cc) should be judged against what bf16 arithmetic
does to the same models in transformers itself. For each fixture model this loads the bf16
weights with transformers on the GPU, runs each prompt's prefill, and prints the normalized
error ||logits - ref|| / ||ref|| per position: TSV rows
    hf_bf16_error<TAB>model<TAB>dtype<TAB>positions<TAB>median<TAB>max
for dtype bfloat16 and float32 (the latter only checks the set-up: ~1e-6).
"""
import argparse
import glob
import json
import os
import statistics
import sys

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fixtures", default=os.path.join(
        os.environ.get("KVSCOPE_SHARED_DIR", "../shared"), "fixtures", "hf-reference"))
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = sorted(glob.glob(os.path.join(args.fixtures, "*", "reference.json")))
    if not models:
        print(f"hf_bf16_error.py: no reference.json under {args.fixtures}", file=sys.stderr)
        return 2
    for ref_path in models:
        root = os.path.dirname(ref_path)
        name = os.path.basename(root)
        ref = json.load(open(ref_path))
        for dtype in (torch.bfloat16, torch.float32):
            model = AutoModelForCausalLM.from_pretrained(os.path.join(root, "bf16"),
                                                         dtype=dtype).to(device).eval()
            errs = []
            for prompt in ref["prompts"]:
                ids = torch.tensor([prompt["input_ids"]], device=device)
                vocab = prompt["vocab_size"]
                want = torch.tensor(prompt["prefill_logits"], dtype=torch.float64).view(-1, vocab)
                with torch.no_grad():
                    got = model(ids).logits[0].to(torch.float64).cpu()
                for pos in range(want.shape[0]):
                    errs.append(float((got[pos] - want[pos]).norm() / want[pos].norm()))
            print(f"hf_bf16_error\t{name}\t{str(dtype).split('.')[-1]}\t{len(errs)}\t"
                  f"{statistics.median(errs):.5f}\t{max(errs):.5f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
