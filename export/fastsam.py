"""FastSAM (Ultralytics YOLOv8-seg, one class) as an ONNX graph with dynamic batch, height, width."""

from __future__ import annotations

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


def export(model: torch.nn.Module, out: Path, opset: int) -> dict:
    """Segment head in export mode: `(predictions (B, 4+nc+32, A), protos (B, 32, H/4, W/4))`."""
    head = model.model[-1]
    head.export, head.dynamic, head.format = True, True, "onnx"
    try:
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
    finally:
        head.export, head.dynamic = False, False
