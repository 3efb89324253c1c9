"""CLIP image tower (vision transformer, pooled output, visual projection) as an ONNX graph."""

from __future__ import annotations

from pathlib import Path

import torch

from .onnx_io import export_graph


class ClipImageTower(torch.nn.Module):
    """`CLIPModel.get_image_features` as a plain tensor-in, tensor-out module.

    transformers 5 returns an output object from get_image_features (projected features in its
    pooler_output); this wrapper does the same computation and returns the tensor.
    """

    def __init__(self, clip_model: torch.nn.Module):
        super().__init__()
        self.vision_model = clip_model.vision_model
        self.visual_projection = clip_model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return self.visual_projection(pooled)


def load(folder: Path) -> torch.nn.Module:
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(folder, attn_implementation="eager").eval()


def export(clip_model: torch.nn.Module, out: Path, opset: int) -> dict:
    tower = ClipImageTower(clip_model).eval()
    size = clip_model.config.vision_config.image_size
    dummy = torch.zeros(2, 3, size, size)
    return export_graph(
        tower,
        (dummy,),
        out,
        input_names=["pixel_values"],
        output_names=["image_embeds"],
        dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
        opset=opset,
    )
