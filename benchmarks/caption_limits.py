"""The caption step on hostile captions: time and memory of one record's caption difference as
the captions grow, in a fresh process per case (peak RSS above the same process after a small
record, so the caption data itself is not counted).

Cases: `distinct` (every word different, none shared: the close-pair search compares every pair),
`shuffled` (the same distinct words in another order), `repeated` (words drawn from 200).
A case ends either with the exact difference or with the record error naming the limit.

    python -m benchmarks.caption_limits --out benchmarks/results/caption_limits [--words 1000,8000,50000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.machine import save_record  # noqa: E402

CHILD = r"""
import json, random, string, sys, time
from benchmarks.machine import process_memory_mb
from imgdiff_onnx.engine.captions import WordDiffTooComplex, caption_difference

words, case = int(sys.argv[1]), sys.argv[2]
def vocabulary(k, seed):
    r = random.Random(seed)
    return [''.join(r.choice(string.ascii_lowercase) for _ in range(r.randint(3, 10))) for _ in range(k)]
if case == "distinct":
    c1, c2 = " ".join(vocabulary(words, 1)), " ".join(vocabulary(words, 2))
elif case == "shuffled":
    w = vocabulary(words, 1); w2 = w[:]; random.Random(3).shuffle(w2); c1, c2 = " ".join(w), " ".join(w2)
else:
    w = vocabulary(200, 1); r = random.Random(3)
    c1, c2 = " ".join(r.choice(w) for _ in range(words)), " ".join(r.choice(w) for _ in range(words))
caption_difference("A cat on a mat.", "A dog on a mat.")  # caption data loaded: not counted
base = process_memory_mb("VmHWM")
start = time.perf_counter()
try:
    d = caption_difference(c1, c2)
    outcome = f"exact ({len(d.only1)} + {len(d.only2)} differing words)"
except WordDiffTooComplex as exc:
    outcome = "record error: " + str(exc).split(" (very long")[0]
print(json.dumps({"words": words, "case": case, "seconds": time.perf_counter() - start,
                  "peak_above_mb": process_memory_mb("VmHWM") - base, "outcome": outcome}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--words", default="1000,8000,10000,50000", help="words per caption, comma-separated")
    ap.add_argument("--cases", default="distinct,shuffled,repeated")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for words in (int(w) for w in args.words.split(",")):
        for case in args.cases.split(","):
            proc = subprocess.run([sys.executable, "-c", CHILD, str(words), case], capture_output=True, text=True, cwd=ROOT, check=True)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    rows_text = [[f"{r['words']:,}", r["case"], f"{r['seconds']:.2f}", f"{r['peak_above_mb']:.0f} MB", r["outcome"]] for r in rows]
    save_record(args.out, "caption_limits", {"rows": rows}, ["words per caption", "case", "seconds", "peak above a small record", "outcome"], rows_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
