"""BLIP image-text matching split in two graphs: the vision encoder, and text + ITM head.

Splitting at the image embeddings lets the runtime encode each crop once and score it against
every object word (DESIGN.md section 4). Neither optimum nor optimum-onnx exports BLIP ITM.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .onnx_io import export_graph


class BlipVision(torch.nn.Module):
    def __init__(self, blip_model: torch.nn.Module):
        super().__init__()
        self.vision_model = blip_model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values=pixel_values).last_hidden_state


class BlipTextItm(torch.nn.Module):
    """`BlipForImageTextRetrieval.forward(use_itm_head=True)` after the vision encoder."""

    def __init__(self, blip_model: torch.nn.Module):
        super().__init__()
        self.text_encoder = blip_model.text_encoder
        self.itm_head = blip_model.itm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        image_atts = torch.ones_like(image_embeds[:, :, 0], dtype=torch.long)
        hidden = self.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_atts,
        ).last_hidden_state
        return self.itm_head(hidden[:, 0, :])


def load(folder: Path) -> torch.nn.Module:
    from transformers import BlipForImageTextRetrieval

    return BlipForImageTextRetrieval.from_pretrained(folder, attn_implementation="eager").eval()


def export_vision(blip_model: torch.nn.Module, out: Path, opset: int) -> dict:
    size = blip_model.config.vision_config.image_size
    return export_graph(
        BlipVision(blip_model).eval(),
        (torch.zeros(2, 3, size, size),),
        out,
        input_names=["pixel_values"],
        output_names=["image_embeds"],
        dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
        opset=opset,
    )


def export_itm(blip_model: torch.nn.Module, out: Path, opset: int) -> dict:
    vision = blip_model.config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    ids = torch.tensor([[101, 4946, 102, 0], [101, 4049, 2422, 102]], dtype=torch.long)
    mask = (ids != 0).long()
    embeds = torch.zeros(2, tokens, vision.hidden_size)
    return export_graph(
        BlipTextItm(blip_model).eval(),
        (ids, mask, embeds),
        out,
        input_names=["input_ids", "attention_mask", "image_embeds"],
        output_names=["itm_logits"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "image_embeds": {0: "batch"},
            "itm_logits": {0: "batch"},
        },
        opset=opset,
    )
