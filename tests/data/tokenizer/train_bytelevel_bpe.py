#!/usr/bin/env python3
"""Trains a tiny byte-level BPE on a text file and writes three tokenizer fixtures.

Usage: python3 tests/data/tokenizer/train_bytelevel_bpe.py ../shared/data/stories.txt \
           tests/data/tokenizer

Writes <out>/{llama3_style,gpt2_style,qwen2_style}/{tokenizer.json,tokenizer_config.json}:
the 256 GPT-2 byte symbols (ids 0..255) plus NUM_MERGES learned merges (every merge's
result is in the vocab), wrapped in the pipelines of Llama 3, GPT-2 and Qwen2. Pure
Python (needs the `regex` module for \\p{L}); deterministic.
"""
import collections
import json
import os
import sys

import regex

NUM_MERGES = 320
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def train(text):
    b2u = bytes_to_unicode()
    words = collections.Counter(
        tuple(b2u[b] for b in w.encode("utf-8")) for w in regex.findall(LLAMA3_PATTERN, text))
    vocab = [b2u[b] for b in range(256)]
    merges = []
    for _ in range(NUM_MERGES):
        pairs = collections.Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        vocab.append(best[0] + best[1])
        merged = collections.Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    # A merged string can be produced twice; keep the first id.
    ids = {}
    for tok in vocab:
        ids.setdefault(tok, len(ids))
    return ids, merges


def added(id_, content, special=True, lstrip=False, rstrip=False, normalized=False):
    return {"id": id_, "content": content, "single_word": False, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


def bpe(vocab, merges, array_form, ignore_merges):
    return {"type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
            "byte_fallback": False, "ignore_merges": ignore_merges, "vocab": vocab,
            "merges": [list(m) for m in merges] if array_form else [" ".join(m) for m in merges]}


def write(out_dir, name, tokenizer, config):
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    out_dir = sys.argv[2]
    vocab, merges = train(text)
    n = len(vocab)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}

    bos = "<|begin_of_text|>"
    llama3 = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(n, bos), added(n + 1, "<|end_of_text|>"),
                         added(n + 2, "<|eot_id|>"),
                         added(n + 3, "<|python_tag|>", special=False)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
             "invert": False}, byte_level]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [n], "tokens": [bos]}}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": bpe(vocab, merges, array_form=True, ignore_merges=True),
    }
    write(out_dir, "llama3_style", llama3,
          {"bos_token": bos, "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": False,
           "tokenizer_class": "PreTrainedTokenizerFast"})

    eot = "<|endoftext|>"
    gpt2 = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(n, eot)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": bpe(vocab, merges, array_form=False, ignore_merges=False),
    }
    write(out_dir, "gpt2_style", gpt2,
          {"bos_token": eot, "eos_token": eot, "clean_up_tokenization_spaces": True,
           "tokenizer_class": "GPT2Tokenizer"})

    qwen2 = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(n, eot), added(n + 1, "<|im_start|>"),
                         added(n + 2, "<|im_end|>")],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated",
             "invert": False}, byte_level]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False},
        "model": bpe(vocab, merges, array_form=True, ignore_merges=False),
    }
    write(out_dir, "qwen2_style", qwen2,
          {"eos_token": "<|im_end|>", "clean_up_tokenization_spaces": False,
           "tokenizer_class": "Qwen2Tokenizer"})
    print("vocab", n, "merges", len(merges))


if __name__ == "__main__":
    main()
