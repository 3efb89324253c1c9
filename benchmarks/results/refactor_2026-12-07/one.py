"""CPU seconds per pair of the engine at `repo` (its own code) on the recipe case and the open-gate real pair."""
import json, sys
from pathlib import Path
repo, case = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, str(repo))
from benchmarks.data_juicer_peer import GATES, _pairs, engine_worker
import imgdiff_onnx
assert Path(imgdiff_onnx.__file__).is_relative_to(repo), imgdiff_onnx.__file__
shared = Path("/work/shared")
pairs = _pairs(shared, "pasted" if case == "recipe" else "real", Path("/tmp/refactor-bench/pairs"))
r = engine_worker(Path("/tmp/models-full-b6"), pairs, GATES[case], "default")
print(json.dumps({"repo": str(repo), "case": case, "cpu": [x["cpu_seconds"] for x in r["rows"]], "peak_rss_mb": r["peak_rss_mb"]}))
