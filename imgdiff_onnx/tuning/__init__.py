"""Tune thresholds without recomputing: keep a run's scores, decide again at other thresholds.

- `run --keep-scores` / EngineSettings(keep_scores=True): every score of a pair (its ScoreSheet,
  imgdiff_onnx.pairs) kept beside the results (imgdiff_onnx.runs.scores: the run writes them).
- `retune` / `retune_file`, `KeptRun.decide`: the results a fresh run at new thresholds gives,
  from the kept scores (.retune, .rescore), decided as the engine decides (imgdiff_onnx.engine.decide).
- `sweep` / `sweep_file`: a grid of one or two thresholds, counted (imgdiff_onnx.tuning.sweep).

In a notebook:

>>> from imgdiff_onnx import OperatorParams                                          # doctest: +SKIP
>>> from imgdiff_onnx.tuning import KeptRun                                          # doctest: +SKIP
>>> kept = KeptRun.open("results.jsonl")                                             # doctest: +SKIP
>>> stricter = OperatorParams.from_dicts({"max_score_2": 0.95}, None, {"min_score": 0.4})  # doctest: +SKIP
>>> for line, result in kept.decide(stricter):  # result: a PairResult, or None for a line no threshold changes  # doctest: +SKIP
...     print(line["id"], None if result is None else result.boxes)
"""

from .retune import RETUNABLE, KeptRun, RetuneOptions, retune_file
from .sweep import Axis, SweepOptions, parse_axis, sweep, sweep_file

__all__ = ["RETUNABLE", "Axis", "KeptRun", "RetuneOptions", "SweepOptions", "parse_axis", "retune_file", "sweep", "sweep_file"]
