"""Data-Juicer operator `imgdiff_difference_area_generator_onnx_mapper`: the engine as a drop-in
for `imgdiff_difference_area_generator_mapper`.

Load it with `custom_operator_paths: [<path of this file>]` in a recipe (or
`--custom-operator-paths`); `python -m imgdiff_onnx dj-op-path` prints the path. The module uses
absolute imports only, because Data-Juicer loads custom operators by file path (and ships the file
to Ray workers as a top-level module).

Same three parameter dicts and defaults as the original, plus `model_dir`, `precision` (as `run
--precision`), `threads`
and `image_root`. Reads `caption1`, `caption2`, `image_path1`, `image_path2` (and optional
`objects1`/`objects2`); writes `__dj__meta__.__dj__bbox__` as the original does (float32 centre
xywh in image-1 pixels; one all-zero row when nothing is found) and `__dj__meta__.imgdiff_error`
("" when the record was processed, else why not). Unlike the original it keeps the record's other
meta fields and columns, and a bad record, or one the engine fails on unexpectedly, does not abort
or drop its batch (it gets its `imgdiff_error`).

Differences from the original's plumbing, on purpose:
  - batched (crop scoring runs across the records of a Data-Juicer batch);
  - `num_cpus` (and the deprecated `cpu_required`) default to `threads`, so Data-Juicer's process
    and actor counts do not oversubscribe cores;
  - its `_name` is its registry name, so Data-Juicer's Ray executor finds its config;
  - relative image paths resolve against `image_root`, which defaults to the working directory of
    the process that built the operator (where the original resolves them in the default
    executor) and is carried, resolved, to Ray actors (whose working directory differs).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from data_juicer.ops.base_op import OPERATORS, TAGGING_OPS, Mapper
from data_juicer.utils.constant import Fields, MetaKeys

from imgdiff_onnx.errors import ModelFolderError, ParameterError
from imgdiff_onnx.engine.manifest import read as read_manifest
from imgdiff_onnx.engine.modelset import resolve_precision
from imgdiff_onnx.params import OperatorParams
from imgdiff_onnx.engine.precision import Precision
from imgdiff_onnx.engine.pipeline import DifferenceAreaGenerator, EngineSettings, PairFailure, PairInput, PairResult
from imgdiff_onnx.runs.records import RecordError, pair_from_record, process_pairs_isolating, record_key

OP_NAME = "imgdiff_difference_area_generator_onnx_mapper"
ERROR_KEY = "imgdiff_error"

log = logging.getLogger("imgdiff_onnx.data_juicer")


def empty_marker() -> np.ndarray:
    """Data-Juicer's 'no box' value for this operator: one all-zero float32 row."""
    return np.zeros((1, 4), dtype=np.float32)


def bbox_value(outcome: PairResult | PairFailure | None) -> list[np.ndarray]:
    """Rows of float32: Arrow (Ray) cannot take a 2-D array inside a struct, while a list of 1-D
    float32 rows becomes list<list<float32>> in Arrow and List(List(float32)) in HF datasets, the
    type the original's (K, 4) array gets."""
    boxes = outcome.boxes if isinstance(outcome, PairResult) and len(outcome.boxes) else empty_marker()
    return list(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))


@TAGGING_OPS.register_module(OP_NAME, force=True)
@OPERATORS.register_module(OP_NAME, force=True)
class ImgDiffDifferenceAreaGeneratorOnnxMapper(Mapper):
    """Img-Diff difference areas (CLIP pair gate, caption difference, FastSAM, BLIP ITM, CLIP
    crop-pair gate, overlap removal) on onnxruntime CPU sessions, batched across records.
    Writes float32 centre-xywh boxes to `__dj__meta__.__dj__bbox__`."""

    _accelerator = "cpu"
    _batched_op = True
    _NON_FINGERPRINT_ATTRS = Mapper._NON_FINGERPRINT_ATTRS | {"_engine", "_resolved_init_kwargs"}

    def __init__(
        self,
        image_pair_similarity_filter_args: Optional[Dict] = None,
        image_segment_mapper_args: Optional[Dict] = None,
        image_text_matching_filter_args: Optional[Dict] = None,
        model_dir: str = "",
        precision: Optional[Any] = None,
        threads: int = 1,
        image_root: Optional[str] = None,
        *args,
        **kwargs,
    ):
        """Initialization.

        :param image_pair_similarity_filter_args: the original's dict: min_score_1, max_score_1
            (whole-pair CLIP gate), min_score_2, max_score_2 (crop-pair gate), hf_clip.
        :param image_segment_mapper_args: the original's dict: imgsz, conf, iou, model_path.
        :param image_text_matching_filter_args: the original's dict: min_score, max_score, hf_blip.
        :param model_dir: folder written by `python -m imgdiff_onnx.export` (same path on every
            node of a Ray cluster).
        :param precision: "banded", "int8", "fp32", or per model ("fastsam=fp32,clip=banded,blip=int8"
            or a mapping {fastsam: fp32, clip: banded, blip: int8}); default: the model folder's
            recommendation (written by `python -m imgdiff_onnx validate --write`), else CLIP and
            BLIP banded (int8, with fp32 for the scores in the guard band of a threshold) and
            FastSAM fp32.
        :param threads: onnxruntime intra-op threads per process or Ray actor; also the CPUs
            this operator asks Data-Juicer for (num_cpus).
        :param image_root: folder that relative image_path1/image_path2 resolve against;
            default: the working directory of the process that builds the operator.
        """
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ParameterError(f"{OP_NAME}: threads must be an integer >= 1, got {threads!r}", "threads")
        if kwargs.get("num_cpus") is None and kwargs.get("cpu_required") is None:
            kwargs["num_cpus"] = threads
        if kwargs.get("batch_size") is None:
            kwargs["batch_size"] = 8
        if kwargs.get("ray_execution_mode") is None:
            kwargs["ray_execution_mode"] = "actor"  # under Ray: models load once per actor, not per task
        super().__init__(*args, **kwargs)
        self.cpu_required = self.num_cpus
        # fail on the driver, before any data moves, for a bad parameter or model folder
        self.params = OperatorParams.from_dicts(image_pair_similarity_filter_args, image_segment_mapper_args, image_text_matching_filter_args)
        if not model_dir:
            raise ParameterError(f"{OP_NAME}: model_dir is required (a folder written by `python -m imgdiff_onnx.export`)", "model_dir")
        self.model_dir = str(Path(model_dir).expanduser().resolve())
        # a missing or broken manifest, a bad precision, or one the folder was not exported
        # with, fails here
        try:
            manifest = read_manifest(Path(self.model_dir))
        except ModelFolderError as exc:
            raise ModelFolderError(f"{OP_NAME}: model_dir: {exc}") from None
        chosen = None if precision is None else Precision.parse(precision)
        resolve_precision(chosen, manifest, Path(self.model_dir))
        self.settings = EngineSettings(precision=chosen, threads=threads)
        self.image_root = str(Path(image_root or os.getcwd()).expanduser().resolve())
        self._engine: DifferenceAreaGenerator | None = None

    # Data-Juicer's Ray executor rebuilds the operator in each actor from the constructor
    # arguments it recorded; record the resolved folders so actors do not re-resolve them
    # against their own working directory.
    @property
    def _init_kwargs(self) -> Dict[str, Any]:
        return self._resolved_init_kwargs

    @_init_kwargs.setter
    def _init_kwargs(self, kwargs: Dict[str, Any]) -> None:
        self._resolved_init_kwargs = {**kwargs, "model_dir": self.model_dir, "image_root": self.image_root}

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_engine"] = None  # sessions are per process; each worker loads its own
        return state

    @property
    def engine(self) -> DifferenceAreaGenerator:
        if self._engine is None:
            self._engine = DifferenceAreaGenerator(self.model_dir, self.params, self.settings)
        return self._engine

    def _pair(self, sample: Dict[str, Any]) -> PairInput:
        key = record_key(sample, f"record with image_path1={sample.get('image_path1')!r}")
        return pair_from_record(sample, key, Path(self.image_root))

    def process_batched(self, samples: Dict[str, List[Any]], *args, **kwargs) -> Dict[str, List[Any]]:
        count = len(next(iter(samples.values()))) if samples else 0
        records = [{k: samples[k][i] for k in samples} for i in range(count)]
        pairs: list[PairInput | None] = []
        errors: dict[int, str] = {}
        for i, record in enumerate(records):
            try:
                pairs.append(self._pair(record))
            except RecordError as exc:
                pairs.append(None)
                errors[i] = str(exc)
        outcomes = process_pairs_isolating(self.engine, pairs)  # an unforeseen failure fails its record, not the batch
        metas = []
        for i, (record, outcome) in enumerate(zip(records, outcomes)):
            if isinstance(outcome, PairFailure):
                errors[i] = f"{outcome.key}: {outcome.error}"
            if i in errors:
                log.warning("%s: %s", OP_NAME, errors[i])
            meta = dict(record.get(Fields.meta) or {})
            meta[MetaKeys.bbox_tag] = bbox_value(outcome)
            meta[ERROR_KEY] = errors.get(i, "")
            metas.append(meta)
        samples[Fields.meta] = metas
        return samples
