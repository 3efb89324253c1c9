"""FastSAM on the two images of the real pair, in four session layouts, one process:
  2 threads, one image after the other (one call at a time on both cores)
  2 threads with onnxruntime's spin-waiting off
  2 threads, both images in one batch of 2
  1 thread x 2 sessions, the two images at once (the engine's default layout)
  1 thread, one after the other
Best of two repetitions after a warm-up, wall and CPU time of the process per pair, and whether
the outputs equal the 2-thread ones bit for bit.

    python -m benchmarks.fastsam_threads --models models-full --precision fp32
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from imgdiff_onnx.engine.preprocess import LetterboxSettings, letterbox

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    pair = args.shared / "data/pairs"
    img1 = cv2.imread(str(pair / "img_pair_1.jpg"))
    img2 = cv2.resize(cv2.imread(str(pair / "img_pair_2.jpg")), img1.shape[1::-1])
    t1, t2 = (letterbox(im, 1024, LetterboxSettings()).tensor for im in (img1, img2))

    def session(threads: int, spin: bool = True) -> ort.InferenceSession:
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.log_severity_level, o.enable_cpu_mem_arena = threads, 3, False
        if not spin:
            o.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(args.models / f"fastsam.{args.precision}.onnx"), o, providers=["CPUExecutionProvider"])

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def measure(name: str, fn, reps: int = 2):
        out = fn()
        best = None
        for _ in range(reps):
            c0, w0 = cpu(), time.perf_counter()
            fn()
            c1, w1 = cpu(), time.perf_counter()
            best = (w1 - w0, c1 - c0) if best is None or c1 - c0 < best[1] else best
        print(f"{args.precision} {name:36s} wall {best[0]:.2f} s  cpu {best[1]:.2f} s (per pair)", flush=True)
        return out

    s2 = session(2)
    ref = measure("2 threads, one after the other", lambda: [s2.run(None, {"images": t})[0] for t in (t1, t2)])
    s2n = session(2, spin=False)
    measure("2 threads no spin, one after the other", lambda: [s2n.run(None, {"images": t})[0] for t in (t1, t2)])
    both = measure("2 threads, batch of 2", lambda: s2.run(None, {"images": np.concatenate([t1, t2])})[0])
    print("  batch of 2 equals:", np.array_equal(both[0], ref[0][0]) and np.array_equal(both[1], ref[1][0]))
    sa, sb = session(1), session(1)

    def side_by_side():
        res = [None, None]

        def go(k, s, t):
            res[k] = s.run(None, {"images": t})[0]

        threads = [threading.Thread(target=go, args=(0, sa, t1)), threading.Thread(target=go, args=(1, sb, t2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return res

    out = measure("1 thread x 2 sessions, at once", side_by_side)
    print("  at once equals:", all(np.array_equal(o[0], r[0]) for o, r in zip(out, ref)))
    measure("1 thread, one after the other", lambda: [sa.run(None, {"images": t})[0] for t in (t1, t2)], reps=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
