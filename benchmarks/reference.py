"""The PyTorch reference: the operator's semantics with the real third-party components,
working the way the original does (one crop and one word at a time, original stage order).

transformers CLIP and BLIP with their (PIL) image processors and tokenizer, the Ultralytics
FastSAM predictor with retina_masks=True, NLTK called directly. Decisions D1 (segment image 2
in image 1's frame), D4 (degenerate crops fail) and in-memory crops (D2) as the engine; images
are decoded by Pillow as Data-Juicer's filters do. Used by the parity tests and the benchmarks.
Not part of the runtime package: it imports torch.
"""

from __future__ import annotations

import difflib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps


def reference_objects(text1: str, text2: str) -> tuple[list[str], list[str]]:
    """Data-Juicer's compare_text_index + is_noun, calling NLTK directly."""
    import nltk

    lemmatizer = nltk.stem.WordNetLemmatizer()
    diff = difflib.Differ().compare(
        re.sub(r"[^\w\s]", "", text1.lower().replace(" ", "\n")).splitlines(),
        re.sub(r"[^\w\s]", "", text2.lower().replace(" ", "\n")).splitlines(),
    )
    split1, split2 = [], []
    for line in diff:
        if line.startswith("+"):
            split2.append(lemmatizer.lemmatize(line.replace("+ ", "")))
        elif line.startswith("-"):
            split1.append(lemmatizer.lemmatize(line.replace("- ", "")))

    def is_noun(word: str) -> bool:
        return nltk.pos_tag([word])[0][1] in ["NN", "NNS", "NNP", "NNPS"]

    return [w for w in split1 if w not in split2 and is_noun(w)], [w for w in split2 if w not in split1 and is_noun(w)]


def load_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return np.asarray(image.convert("RGB"))


def iou_filter(samples: np.ndarray, iou_thresh: float = 0.5) -> list[int]:
    """Data-Juicer's iou_filter (greedy, +1 pixel areas), returning kept indices."""
    x1 = samples[:, 0] - samples[:, 2] / 2
    y1 = samples[:, 1] - samples[:, 3] / 2
    x2 = samples[:, 0] + samples[:, 2] / 2
    y2 = samples[:, 1] + samples[:, 3] / 2
    areas = (y2 - y1 + 1) * (x2 - x1 + 1)
    keep, index = [], np.arange(len(samples))
    while len(index) > 0:
        i = index[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[index[1:]])
        yy1 = np.maximum(y1[i], y1[index[1:]])
        xx2 = np.minimum(x2[i], x2[index[1:]])
        yy2 = np.minimum(y2[i], y2[index[1:]])
        w = np.maximum(0, xx2 - xx1 + 1)
        h = np.maximum(0, yy2 - yy1 + 1)
        overlap = w * h
        ious = overlap / (areas[i] + areas[index[1:]] - overlap)
        index = index[np.where(ious <= iou_thresh)[0] + 1]
    return keep


@dataclass
class ReferenceResult:
    boxes: np.ndarray
    objects1: list[str]
    objects2: list[str]
    pair_similarity: float | None
    candidate_boxes: np.ndarray | None = None
    itm1_passed: list[int] = field(default_factory=list)  # candidate ids whose crop 1 passed S5
    itm_passed: list[int] = field(default_factory=list)  # ... and crop 2 (S5 both sides)
    survivors: list[int] = field(default_factory=list)  # ... and S6
    kept: list[int] = field(default_factory=list)
    itm_scores1: dict = field(default_factory=dict)  # (candidate, word) -> p
    itm_scores2: dict = field(default_factory=dict)
    crop_similarities: dict = field(default_factory=dict)  # candidate -> cosine
    times: dict = field(default_factory=dict)


class TorchReference:
    """The original operator's order of work on PyTorch (fp32)."""

    def __init__(self, clip_dir: Path, blip_dir: Path, fastsam_pt: Path, params, threads: int | None = None):
        from transformers import AutoTokenizer, BlipForImageTextRetrieval, BlipImageProcessorPil, CLIPImageProcessorPil, CLIPModel
        from ultralytics import FastSAM

        if threads:
            torch.set_num_threads(threads)
        self.params = params
        self.clip = CLIPModel.from_pretrained(clip_dir).eval()
        self.clip_processor = CLIPImageProcessorPil.from_pretrained(clip_dir)
        self.blip = BlipForImageTextRetrieval.from_pretrained(blip_dir).eval()
        self.blip_processor = BlipImageProcessorPil.from_pretrained(blip_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(blip_dir)
        self.fastsam = FastSAM(str(fastsam_pt))

    @torch.no_grad()
    def clip_features(self, image: Image.Image) -> torch.Tensor:
        pixels = self.clip_processor(images=image, return_tensors="pt")["pixel_values"]
        out = self.clip.get_image_features(pixel_values=pixels)
        return (out.pooler_output if hasattr(out, "pooler_output") else out)[0]

    def clip_similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        fa, fb = self.clip_features(Image.fromarray(a)), self.clip_features(Image.fromarray(b))
        return float(torch.nn.functional.cosine_similarity(fa.double(), fb.double(), dim=0))

    @torch.no_grad()
    def itm(self, crop: np.ndarray, word: str) -> float:
        pixels = self.blip_processor(images=Image.fromarray(crop), return_tensors="pt")["pixel_values"]
        text = self.tokenizer(word, return_tensors="pt")
        logits = self.blip(input_ids=text["input_ids"], pixel_values=pixels, attention_mask=text["attention_mask"]).itm_score
        return float(logits.softmax(dim=-1)[0, 1])

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        s = self.params.segment
        result = self.fastsam(np.ascontiguousarray(rgb[:, :, ::-1]), imgsz=s.imgsz, conf=s.conf, iou=s.iou, retina_masks=True, verbose=False)[0]
        return result.boxes.xywh.cpu().numpy().astype(np.float32)

    def process(self, image1: str | Path | np.ndarray, image2: str | Path | np.ndarray, caption1: str, caption2: str) -> ReferenceResult:
        times = {}
        t = time.perf_counter()
        rgb1 = image1 if isinstance(image1, np.ndarray) else load_rgb(image1)
        rgb2 = image2 if isinstance(image2, np.ndarray) else load_rgb(image2)
        times["load"] = time.perf_counter() - t
        p = self.params
        # S1
        t = time.perf_counter()
        similarity = self.clip_similarity(rgb1, rgb2)
        times["pair_gate"] = time.perf_counter() - t
        if not (p.pair.min_score_1 <= similarity <= p.pair.max_score_1):
            return ReferenceResult(np.zeros((0, 4), np.float32), [], [], similarity, times=times)
        # S2
        t = time.perf_counter()
        objects1, objects2 = reference_objects(caption1, caption2)
        times["captions"] = time.perf_counter() - t
        # S3 (D1: image 2 resized to image 1 first)
        t = time.perf_counter()
        h, w = rgb1.shape[:2]
        rgb2 = rgb2 if rgb2.shape[:2] == (h, w) else cv2.resize(rgb2, (w, h), interpolation=cv2.INTER_LINEAR)
        boxes1, boxes2 = self.segment(rgb1), self.segment(rgb2)
        times["segment"] = time.perf_counter() - t
        candidates = np.concatenate([boxes1, boxes2]).astype(np.float32)
        result = ReferenceResult(np.zeros((0, 4), np.float32), objects1, objects2, similarity, candidate_boxes=candidates, times=times)

        def crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
            return image[int(box[1] - box[3] / 2) : int(box[1] + box[3] / 2), int(box[0] - box[2] / 2) : int(box[0] + box[2] / 2), :]

        lo, hi = p.matching.min_score, p.matching.max_score
        def itm_side(image: np.ndarray, words: list[str], scores: dict) -> set[int]:
            """S5 on one side: every crop with every word (the original scores all of them)."""
            passed = set()
            for k, box in enumerate(candidates):
                c = crop(image, box)
                if c.size == 0:
                    continue  # D4
                for word in words:
                    scores[(k, word)] = self.itm(c, word)
                    if lo <= scores[(k, word)] <= hi:
                        passed.add(k)
            return passed

        t = time.perf_counter()
        pass1 = itm_side(rgb1, objects1, result.itm_scores1)
        times["itm_image1"] = time.perf_counter() - t
        t = time.perf_counter()
        pass2 = itm_side(rgb2, objects2, result.itm_scores2)
        times["itm_image2"] = time.perf_counter() - t
        result.itm1_passed = sorted(pass1)
        result.itm_passed = sorted(pass1 & pass2)
        # S6
        t = time.perf_counter()
        survivors = []
        for k in result.itm_passed:
            sim = self.clip_similarity(np.ascontiguousarray(crop(rgb1, candidates[k])), np.ascontiguousarray(crop(rgb2, candidates[k])))
            result.crop_similarities[k] = sim
            if p.pair.min_score_2 <= sim <= p.pair.max_score_2:
                survivors.append(k)
        times["crop_pair_gate"] = time.perf_counter() - t
        result.survivors = survivors
        # S7
        if survivors:
            kept_local = iou_filter(candidates[survivors])
            result.kept = [survivors[i] for i in kept_local]
            result.boxes = candidates[result.kept]
        return result
