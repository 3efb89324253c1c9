"""An int8 FastSAM graph whose large convolutions run on onnxruntime's AMX int8 GEMM.

onnxruntime (MLAS) runs a QLinearConv whose int8 weights have zero point 0 with its symmetric
convolution kernels (AVX-512 VNNI at best), and any other QLinearConv as im2col + its int8 GEMM,
which uses the AMX tiles on CPUs that have them (Intel Xeon 4th generation and later). On such a
CPU the GEMM path is faster for the deep layers (few positions, long reductions) and slower for
the wide early ones; on a CPU without AMX it is slower everywhere (see benchmarks/ARCHIVE.md).

The variant stores each chosen weight tensor as q - 1 with zero point -1. The dequantized
weights, (q - 1) - (-1) = q, are the same numbers, and the kernels' integer arithmetic is exact,
so the outputs are bit-identical (checked at export on the calibration images). The symmetric
recipe keeps weights in [-127, 127], so q - 1 fits in int8.

The runtime loads the variant only where onnxruntime uses AMX (imgdiff_onnx/engine/cpu.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GemmRule:
    """Which convolutions go to the GEMM path, from per-layer measurements of FastSAM-x int8 at
    1024 px on an AMX CPU (onnxruntime's profiler, one thread): the GEMM path took 0.55-0.85x
    the symmetric kernel's time for layers with a long reduction and many output channels at
    1/16 of the input size or less, and 0.9-2.8x for the others (wide early layers, 80-channel
    head branches)."""

    min_reduction: int = 960  # input channels x kernel area
    min_out_channels: int = 320
    min_stride: int = 16  # the output's stride against the input image

    def describe(self) -> str:
        return (f"int8 weights with input channels x kernel area >= {self.min_reduction}, >= {self.min_out_channels} output "
                f"channels, output at 1/{self.min_stride} of the input or smaller")  # fmt: skip


def _weight_dequantizers(model) -> dict[str, object]:
    """Conv node name -> the DequantizeLinear node of its constant int8 weight (QDQ graphs)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or len(dq.input) < 3 or dq.input[2] not in inits:
            continue
        weight = numpy_helper.to_array(inits[dq.input[0]])
        zero_point = numpy_helper.to_array(inits[dq.input[2]])
        if weight.dtype == np.int8 and weight.ndim == 4 and np.all(zero_point == 0) and weight.min() >= -127:
            found[node.name] = dq
    return found


def _strides(model) -> dict[str, float]:
    """Conv node name -> how many input pixels one output position spans (its overall stride),
    followed through the graph: convolutions and poolings multiply it by their stride, Resize
    divides it by its scale, every other node passes on the largest of its inputs'. (onnx shape
    inference stops at FastSAM's computed Slice bounds, so sizes are not read from it.)"""
    from onnx import helper, numpy_helper

    scale_names = {node.input[2] for node in model.graph.node if node.op_type == "Resize" and len(node.input) > 2}
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in scale_names}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in scale_names and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    stride: dict[str, float] = {model.graph.input[0].name: 1.0}
    convs = {}
    for node in model.graph.node:
        known = [stride[name] for name in node.input if name in stride]
        if not known:
            continue
        s = max(known)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Conv", "MaxPool", "AveragePool"):
            s *= max(attrs.get("strides", [1]))
        elif node.op_type == "Resize":
            scales = constants.get(node.input[2]) if len(node.input) > 2 else None
            if scales is None or scales.size < 4:
                continue  # sized by a computed shape: what follows stays unknown
            s /= float(scales[2])
        if node.op_type == "Conv":
            convs[node.name] = s
        for name in node.output:
            stride[name] = s
    return convs


def select_convs(model, rule: GemmRule) -> list[str]:
    """The convolutions the rule sends to the GEMM path, in graph order."""
    inits = {t.name: t for t in model.graph.initializer}
    strides = _strides(model)
    chosen = []
    for name, dq in _weight_dequantizers(model).items():
        out_channels, in_channels, kh, kw = (int(d) for d in inits[dq.input[0]].dims)
        if in_channels * kh * kw >= rule.min_reduction and out_channels >= rule.min_out_channels and strides.get(name, 0) >= rule.min_stride:
            chosen.append(name)
    return chosen


def write_gemm_variant(model, dst: Path, convs: list[str]) -> int:
    """Store the named convolutions' weights of `model` as q - 1, zero point -1 (in place), and
    save it at `dst`."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    dequantizers = _weight_dequantizers(model)
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    shifted = 0
    for name in convs:
        dq = dequantizers[name]
        weight_name, zero_point_name = dq.input[0], dq.input[2]
        if users[weight_name] != 1 or users[zero_point_name] != 1:
            log.warning("conv %s shares its weight or zero point with another node; left on the symmetric kernel", name)
            continue
        weight = numpy_helper.to_array(inits[weight_name])
        zero_point = numpy_helper.to_array(inits[zero_point_name])
        inits[weight_name].CopyFrom(numpy_helper.from_array((weight.astype(np.int16) - 1).astype(np.int8), weight_name))
        inits[zero_point_name].CopyFrom(numpy_helper.from_array(np.full_like(zero_point, -1), zero_point_name))
        shifted += 1
    onnx.save(model, str(dst))
    return shifted


def same_outputs(a: Path, b: Path, samples: list[np.ndarray]) -> bool:
    """Do the two graphs give the same outputs, bit for bit, on every sample?"""
    from imgdiff_onnx.engine.modelset import SessionSettings, create_session

    settings = SessionSettings(threads=1)
    first, second = create_session(a, settings), create_session(b, settings)
    for tensor in samples:
        feeds = {first.get_inputs()[0].name: tensor}
        if not all(np.array_equal(x, y) for x, y in zip(first.run(None, feeds), second.run(None, feeds))):
            return False
    return True


def build(src: Path, dst: Path, samples: list[np.ndarray], rule: GemmRule = GemmRule()) -> dict | None:
    """Write the GEMM variant of the int8 graph `src` at `dst` and check it; the manifest record,
    or None (nothing written) when no convolution qualifies or the outputs differ."""
    import onnx

    model = onnx.load(str(src))
    convs = select_convs(model, rule)
    if not convs:
        log.info("%s: no convolution meets the AMX GEMM rule; no variant written", src.name)
        return None
    shifted = write_gemm_variant(model, dst, convs)
    if shifted == 0 or not same_outputs(src, dst, samples):
        log.warning("%s: the AMX GEMM variant does not reproduce the graph bit for bit; not kept", src.name)
        dst.unlink(missing_ok=True)
        return None
    log.info("%s -> %s: %d convolutions on the int8 GEMM path (outputs identical on %d images)", src.name, dst.name, shifted, len(samples))
    return {"file": dst.name, "convs": shifted, "rule": rule.describe(), "identical_outputs_on": len(samples)}
