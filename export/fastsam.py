"""FastSAM (Ultralytics YOLOv8-seg, one class) as an ONNX graph with dynamic batch, height, width."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .onnx_io import export_graph


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
