"""Mode (b) of the end-to-end benchmark: the engine's algorithm (batching, shortcuts, numpy
post-processing) with PyTorch fp32 modules in place of the onnxruntime sessions.

A TorchModelSet hands the engine objects with onnxruntime's `run(output_names, feeds)`
signature that call the same PyTorch wrappers the export step exports, so (b) vs (c)/(d)
isolates the inference backend, and (a) vs (b) isolates the algorithm.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from imgdiff_onnx.engine.modelset import Components, GraphInfo, ModelSet, SessionSettings
from imgdiff_onnx.engine.parallel import Workers


class TorchSession:
    """`InferenceSession.run` on a torch module (inputs and outputs by name, numpy in and out)."""

    def __init__(self, module: torch.nn.Module, input_names: list[str], output_names: list[str]):
        self.module = module.eval()
        self.input_names = input_names
        self.output_names = output_names

    @torch.no_grad()
    def run(self, output_names, feeds: dict[str, np.ndarray], run_options=None):
        """run_options: onnxruntime's (the engine passes its arena settings), nothing to do in torch."""
        out = self.module(*[torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.input_names])
        out = out if isinstance(out, (tuple, list)) else (out,)
        by_name = {name: t.numpy() for name, t in zip(self.output_names, out)}
        return [by_name[name] for name in (output_names or self.output_names)]


class _FastSamExport(torch.nn.Module):
    """The Ultralytics network with its head in export mode: (predictions, protos)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        head = model.model[-1]
        head.export, head.dynamic, head.format = True, True, "onnx"

    def forward(self, images):
        return self.model(images)


class TorchModelSet(ModelSet):
    """The model folder's preprocessing and tokenizer, with PyTorch modules from its torch/ checkpoints."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        super().__init__(folder, precision="fp32")
        from imgdiff_onnx_export import blip, clip, fastsam

        if threads:
            torch.set_num_threads(threads)
        torch_dir = self.folder / "torch"
        sources = self.manifest.sources
        clip_dir = Path(sources["clip"]["local_path"]) if not (torch_dir / "clip").is_dir() else torch_dir / "clip"
        blip_dir = Path(sources["blip"]["local_path"]) if not (torch_dir / "blip").is_dir() else torch_dir / "blip"
        pt = Path(sources["fastsam"]["local_path"]) if not (torch_dir / "fastsam.pt").is_file() else torch_dir / "fastsam.pt"
        clip_model = clip.load(clip_dir)
        blip_model = blip.load(blip_dir)
        self._sessions = {
            "clip_vision": TorchSession(clip.ClipImageTower(clip_model), ["pixel_values"], ["image_embeds"]),
            "blip_vision": TorchSession(blip.BlipVision(blip_model), ["pixel_values"], ["image_embeds"]),
            "blip_itm": TorchSession(blip.BlipTextItm(blip_model), ["input_ids", "attention_mask", "image_embeds"], ["itm_logits"]),
            "fastsam": TorchSession(_FastSamExport(fastsam.load(pt)), ["images"], ["predictions", "protos"]),
        }
        # the torch FastSAM is the whole network (predictions and prototypes): no fastsam_proto
        self.graphs = {g: GraphInfo(path=info.path, precision="fp32", batch_invariant=True) for g, info in self.graphs.items() if g in self._sessions}

    def session(self, graph: str, settings: SessionSettings):
        return self._sessions[graph]

    def components(self, settings: SessionSettings, crop_batch_size: int, workers: Workers | None = None, segment_settings: SessionSettings | None = None) -> Components:
        """As the folder's, but FastSAM without onnxruntime's shrinking arena (torch has none, so
        no run options and no output binding)."""
        segment = replace(segment_settings, shrinking_arena=False) if segment_settings is not None else None
        return super().components(settings, crop_batch_size, workers, segment)
