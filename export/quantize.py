"""int8 graphs: static QDQ MatMul/Gemm for CLIP, dynamic MatMul/Gemm for BLIP, static QDQ for FastSAM.

Choices (the speed and accuracy figures behind them are in DESIGN.md section 6 and
benchmarks/ARCHIVE.md):
- CLIP: static QDQ of MatMul/Gemm with constant weights (uint8 activations with calibrated
  per-tensor scales, int8 weights). Static scales make it batch-invariant, so crops run in
  batches, which is faster than the dynamic graph one sample per call at the same accuracy.
  (For BLIP's 577-token ViT-B/16 a static graph was slower than the dynamic one, so BLIP stays
  dynamic.)
- BLIP: dynamic quantization restricted to MatMul and Gemm with constant weights
  (MatMulConstBOnly): int8 weights, uint8 activations scaled at run time. Activation-by-
  activation MatMuls (attention) stay float. Dynamic scales are computed per call over the
  whole batch, so the runtime feeds these graphs one sample per call to stay batch-invariant
  (manifest field `batch_invariant: false`).
- FastSAM: static QDQ (uint8 activations, int8 weights, per-tensor) calibrated on real-looking
  images. Quantizing Conv dynamically would produce slow ConvInteger ops. The head's decode
  (last convolution of each branch, DFL, sigmoid, anchor/stride arithmetic, concat) and the last
  prototype convolution stay float. Static scales make the graph batch-invariant.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imgdiff_onnx.errors import ExportError

log = logging.getLogger(__name__)


class _PreprocessingAdvice(logging.Filter):
    """onnxruntime's quantizers warn on the root logger, at every call, that the model could be
    pre-processed (`quant_pre_process`) first. These recipes quantize the exported graphs as
    they are, which is how their figures were measured, so the advice is nothing a user can act
    on; every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider")


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    advice = _PreprocessingAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


DYNAMIC_RECIPE = {
    "method": "onnxruntime.quantization.quantize_dynamic",
    "op_types": ["MatMul", "Gemm"],
    "weight_type": "QInt8",
    "activation_type": "QUInt8 (dynamic, per tensor, per call)",
    "extra_options": {"MatMulConstBOnly": True},
    "batch_invariant": False,
}

STATIC_RECIPE = {
    "method": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "weight_type": "QInt8",
    "activation_type": "QUInt8",
    "per_channel": False,
    "calibration": "MinMax",
    "kept_float": "head decode (last conv of each cv2/cv3/cv4 branch, DFL, anchors, sigmoid, concat) and the last proto conv",
    "batch_invariant": True,
}


STATIC_TRANSFORMER_RECIPE = {
    "method": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "op_types": ["MatMul", "Gemm"],
    "weight_type": "QInt8",
    "activation_type": "QUInt8",
    "per_channel": False,
    "calibration": "MinMax",
    "extra_options": {"MatMulConstBOnly": True},
    "batch_invariant": True,
}


class _FeedReader:
    """Calibration feeds for quantize_static: one sample per call."""

    def __init__(self, name: str, samples: list[np.ndarray]):
        self._name = name
        self._all = samples
        self._samples = iter(samples)

    def get_next(self):
        sample = next(self._samples, None)
        return None if sample is None else {self._name: sample}

    # With extra_options={"CalibStridedMinMax": k}, quantize_static calibrates k samples at a time
    # (any method: histograms accumulate across strides), so memory holds k samples' activations.
    def __len__(self) -> int:
        return len(self._all)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._samples = iter(self._all[start_index:end_index])


def quantize_transformer_static(src: Path, dst: Path, input_name: str, calibration: list[np.ndarray]) -> dict:
    """`calibration`: model inputs (1, ...) as the runtime feeds them (whole images and crops)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _without_preprocessing_advice():
        quantize_static(
            str(src),
            str(dst),
            _FeedReader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"MatMulConstBOnly": True},
        )
    log.info("quantized %s -> %s (static QDQ MatMul/Gemm, %d calibration inputs)", src.name, dst.name, len(calibration))
    recipe = dict(STATIC_TRANSFORMER_RECIPE)
    recipe["calibration_inputs"] = len(calibration)
    return recipe


def quantize_transformer(src: Path, dst: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _without_preprocessing_advice():
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=["MatMul", "Gemm"],
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    log.info("quantized %s -> %s (dynamic MatMul/Gemm)", src.name, dst.name)
    return dict(DYNAMIC_RECIPE)


_HEAD_KEEP_QUANTIZED = re.compile(r"^/model\.\d+/cv[234]\.\d+/cv[234]\.\d+\.[01]/")


def _fastsam_float_nodes(model_path: Path) -> list[str]:
    """Names of the nodes that stay float: everything in the head but its first two conv blocks."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    head_prefix = None
    for node in graph.node:
        if "/dfl/" in node.name:
            head_prefix = node.name.split("/dfl/")[0] + "/"
            break
    if head_prefix is None:
        raise ExportError(f"{model_path.name}: no DFL node found; is this a YOLOv8-seg / FastSAM graph?")
    keep_float = []
    for node in graph.node:
        if not node.name.startswith(head_prefix):
            continue
        if _HEAD_KEEP_QUANTIZED.match(node.name):
            continue
        if node.name.startswith(head_prefix + "proto/") and "/cv3/" not in node.name:
            continue
        keep_float.append(node.name)
    return keep_float


def quantize_fastsam(src: Path, dst: Path, calibration: list[np.ndarray]) -> dict:
    """`calibration`: letterboxed float32 NCHW batches as the runtime would feed them."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    float_nodes = _fastsam_float_nodes(src)
    with _without_preprocessing_advice():
        quantize_static(
            str(src),
            str(dst),
            _FeedReader("images", calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=float_nodes,
        )
    log.info("quantized %s -> %s (static QDQ, %d calibration images, %d nodes kept float)", src.name, dst.name, len(calibration), len(float_nodes))
    recipe = dict(STATIC_RECIPE)
    recipe["calibration_images"] = len(calibration)
    return recipe
