"""FastSAM (Ultralytics YOLOv8-seg, one class) as an ONNX graph with dynamic batch, height, width."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from imgdiff_onnx.errors import ExportError

from .onnx_io import export_graph

log = logging.getLogger(__name__)


def load(checkpoint: Path) -> torch.nn.Module:
    """The network as Ultralytics' predictor runs it: float32, eval, Conv+BatchNorm fused."""
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(str(checkpoint), device="cpu", fuse=True)
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def stride(model: torch.nn.Module) -> int:
    return int(max(int(model.stride.max()), 32))


@contextmanager
def raw_outputs(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The segment head in export mode while inside: the model returns the graph's raw
    `(predictions (B, 4+nc+32, A), protos (B, 32, H/4, W/4))` for any input size."""
    head = model.model[-1]
    head.export, head.dynamic, head.format = True, True, "onnx"
    try:
        yield model
    finally:
        head.export, head.dynamic = False, False


def export(model: torch.nn.Module, out: Path, opset: int) -> dict:
    """The network with raw outputs (see raw_outputs), dynamic batch, height and width."""
    with raw_outputs(model):
        return export_graph(
            model,
            (torch.zeros(1, 3, 640, 512),),
            out,
            input_names=["images"],
            output_names=["predictions", "protos"],
            dynamic_axes={
                "images": {0: "batch", 2: "height", 3: "width"},
                "predictions": {0: "batch", 2: "anchors"},
                "protos": {0: "batch", 2: "proto_height", 3: "proto_width"},
            },
            opset=opset,
        )


def _proto_input(model) -> str:
    """The float tensor FastSAM's prototype head reads (its first conv's input, before any
    quantize/dequantize pair)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and "/proto/cv1/" in n.name]
    if len(convs) != 1:
        raise ExportError(f"expected one prototype-head conv ('/proto/cv1/') in the FastSAM graph, found {len(convs)}")
    tensor = convs[0].input[0]
    while tensor in producer and producer[tensor].op_type in ("DequantizeLinear", "QuantizeLinear"):
        tensor = producer[tensor].input[0]
    return tensor


def _rename(model, old: str, new: str) -> None:
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for info in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if info.name == old:
            info.name = new


def split_prototype_head(path: Path, main_path: Path, proto_path: Path) -> None:
    """The graph at `path` (images -> predictions, protos) as two graphs:
    `main_path`: images -> predictions, proto_features; `proto_path`: proto_features -> protos.

    The prototype head is local, so the runtime can run `proto_path` on tiles of the features
    (imgdiff_onnx/engine/masks.py). Works on the fp32 graph and on its QDQ int8 graph alike."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(path))
    features = _proto_input(model)
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(features, onnx.TensorProto.FLOAT, ["batch", "channels", "feature_height", "feature_width"]))
    extractor = Extractor(model)
    main = extractor.extract_model(["images"], ["predictions", features])
    head = extractor.extract_model([features], ["protos"])
    for part in (main, head):
        _rename(part, features, "proto_features")
    onnx.save(main, str(main_path))
    onnx.save(head, str(proto_path))


def same_outputs(path: Path, main_path: Path, proto_path: Path, samples: list[np.ndarray]) -> bool:
    """Do the split graphs give the full graph's predictions and prototypes bit for bit?"""
    from imgdiff_onnx.engine.modelset import SessionSettings, create_session
    from imgdiff_onnx.engine.models.fastsam import FastSamSegmenter
    from imgdiff_onnx.engine.preprocess import LetterboxSettings

    settings = SessionSettings()
    full = create_session(path, settings)
    split = FastSamSegmenter(create_session(main_path, settings), LetterboxSettings(), create_session(proto_path, settings))
    for tensor in samples:
        expected = full.run(["predictions", "protos"], {"images": tensor})
        if not all(np.array_equal(a, b) for a, b in zip(expected, split.prototypes(tensor))):
            return False
    return True


def join_prototype_head(main_path: Path, proto_path: Path, out: Path) -> None:
    """The inverse of split_prototype_head: one graph, images -> predictions, protos (for tools
    that take FastSAM's whole graph, e.g. the int8-recipe benchmark)."""
    import onnx

    main, head = onnx.load(str(main_path)), onnx.load(str(proto_path))
    # both halves come from one graph: a node or constant in both (e.g. the quantize node of
    # the features) is the same node, kept once
    produced = {name for node in main.graph.node for name in node.output}
    main.graph.node.extend(n for n in head.graph.node if not set(n.output) & produced)
    constants = {t.name for t in main.graph.initializer}
    main.graph.initializer.extend(t for t in head.graph.initializer if t.name not in constants)
    outputs = [o for o in main.graph.output if o.name == "predictions"] + list(head.graph.output)
    del main.graph.output[:]
    main.graph.output.extend(outputs)
    onnx.checker.check_model(main)
    onnx.save(main, str(out))
