#!/usr/bin/env python3
"""Groups a compute-sanitizer log (memcheck or racecheck over a gtest binary) by test,
kernel and kind of error, so a report of thousands of errors fits in a few lines.

    sanitizer_summary.py LOG [--top N]

Prints TSV rows  san<TAB>count<TAB>test<TAB>kernel<TAB>kind  (most frequent first) and the
first full error block, which names the thread, block and address.
"""
import argparse
import collections
import re
import sys


def kernel_name(where):
    """'void ns::(anonymous namespace)::K<float>(int, ...)+0x1b0 in /a/f.cu:12' -> 'K@f.cu:12'."""
    where = re.sub(r"^0x[0-9a-f]+ in ", "", where.strip())
    where = re.sub(r" \[\d+ hazards?\]$", "", where)
    loc = re.search(r" in (\S+:\d+)$", where)
    where = re.sub(r" in \S+:\d+$", "", where)
    where = re.sub(r"\+0x[0-9a-f]+$", "", where)
    where = where.replace("(anonymous namespace)::", "")
    where = re.sub(r"^void ", "", where)
    name = re.split(r"[<(]", where, maxsplit=1)[0].split("::")[-1] or where
    return name + ("@" + loc.group(1).split("/")[-1] if loc else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    test = "(before any test)"
    kind = None
    first_block, in_first = [], False
    counts = collections.Counter()
    for line in open(args.log, errors="replace"):
        line = line.rstrip("\n")
        m = re.match(r"\[ RUN      \] (\S+)", line)
        if m:
            test = m.group(1)
            continue
        if not line.startswith("========="):
            continue
        body = line[len("========="):].strip()
        if in_first:
            if body == "" or len(first_block) > 14:
                in_first = False
            else:
                first_block.append(line)
        m = re.match(r"(Invalid .*?|Error: .*?|.*[Hh]azard.*?|Uninitialized .*?|"
                     r"Barrier error.*?|Misaligned .*?|Out-of-range .*?)( of size.*)?$", body)
        if m and not body.startswith(("ERROR SUMMARY", "and ")) and not body.startswith("RACECHECK"):
            kind = m.group(1)
            if " at " in kind:  # racecheck: "Error: Race reported between Write access at K..."
                kind, where = kind.split(" at ", 1)
                counts[(test, kernel_name(where), kind)] += 1
                kind = None
            if not first_block:
                first_block.append(line)
                in_first = True
            continue
        m = re.match(r"at (.+)$", body)
        if m and kind is not None:
            counts[(test, kernel_name(m.group(1)), kind)] += 1
            kind = None
    for (t, k, what), n in counts.most_common(args.top):
        print(f"san\t{n}\t{t}\t{k}\t{what}")
    if len(counts) > args.top:
        print(f"san\t...\t{len(counts) - args.top} more (test, kernel, kind) groups")
    if first_block:
        print("\n".join("san-first\t" + l for l in first_block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
