"""The operator's three parameter groups, with Data-Juicer's key names and defaults.

Any key may be overridden alone; unknown keys are an error (a typo must not silently fall
back to a default). The model-source keys (hf_clip, hf_blip, model_path) are accepted for
recipe compatibility: the runtime runs the exported model folder's graphs, and the engine warns
at load, naming both, when these name other models than the folder was exported from
(imgdiff_onnx.engine.manifest.source_mismatches).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ParameterError  # re-exported: the class callers of this module catch
from .settings import MAX_INT_DIGITS


def _build(cls, group: str, values: Mapping[str, Any] | None):
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    # Data-Juicer's own op plumbing keys that recipes may carry
    ignored = {"num_proc", "accelerator"}
    unknown = sorted((k for k in values if k not in known and k not in ignored), key=str)
    if unknown:
        raise ParameterError(f"{group}: unknown key(s) {', '.join(_with_guess(k, known) for k in unknown)}; known keys are {sorted(known)}", str(unknown[0]) or "(empty key)")
    return cls(**{k: v for k, v in values.items() if k in known})


def _with_guess(key: object, known: set[str]) -> str:
    """`key`, and the known name it is likely a typo of."""
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    return f"{str(key)[:60]!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


MAX_IMGSZ = 4096  # FastSAM's input side: larger sizes are refused before anything is allocated
# (a size that is not a multiple of the stride is rounded up to one, as Ultralytics' check_imgsz does)


def _number(group: str, name: str, value: object, low: float, high: float) -> float:
    """A finite number (bool refused) in [low, high], as a float: 1 and 1.0 are one value."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_DIGITS * 3.33:
        raise ParameterError(f"{group}.{name}: an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits (limit {MAX_INT_DIGITS})", name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ParameterError(f"{group}.{name} must be a finite number, got {_short(value)}", name)
    if not low <= value <= high:
        raise ParameterError(f"{group}.{name} must be in [{low:g}, {high:g}], got {_short(value)}", name)
    return float(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_range(args: object, group: str, low_name: str, high_name: str, bounds: tuple[float, float]) -> None:
    """Both ends of a closed interval checked and stored as floats; low <= high."""
    low, high = (_number(group, name, getattr(args, name), *bounds) for name in (low_name, high_name))
    object.__setattr__(args, low_name, low)
    object.__setattr__(args, high_name, high)
    if low > high:
        raise ParameterError(f"{group}: {low_name}={low:g} is greater than {high_name}={high:g}; nothing could pass", low_name)


def _text(args: object, group: str, name: str) -> None:
    if not isinstance(getattr(args, name), str):
        raise ParameterError(f"{group}.{name} must be a string, got {_short(getattr(args, name))}", name)


COSINE = (-1.0, 1.0)  # CLIP cosine similarity
PROBABILITY = (0.0, 1.0)  # BLIP ITM probability, FastSAM confidence and IoU


@dataclass(frozen=True)
class PairSimilarityArgs:
    """`image_pair_similarity_filter_args`: CLIP cosine gates (closed intervals)."""

    min_score_1: float = 0.1  # whole pair (S1)
    max_score_1: float = 1.0
    min_score_2: float = 0.1  # crop pair (S6)
    max_score_2: float = 1.0
    hf_clip: str = "openai/clip-vit-base-patch32"

    def __post_init__(self) -> None:
        _check_range(self, "image_pair_similarity_filter_args", "min_score_1", "max_score_1", COSINE)
        _check_range(self, "image_pair_similarity_filter_args", "min_score_2", "max_score_2", COSINE)
        _text(self, "image_pair_similarity_filter_args", "hf_clip")


@dataclass(frozen=True)
class SegmentArgs:
    """`image_segment_mapper_args`: FastSAM settings (S3)."""

    imgsz: int = 1024
    conf: float = 0.05
    iou: float = 0.5
    model_path: str = "FastSAM-x.pt"

    def __post_init__(self) -> None:
        imgsz = self.imgsz
        if isinstance(imgsz, float) and imgsz.is_integer():
            object.__setattr__(self, "imgsz", imgsz := int(imgsz))  # 1024.0 from a JSON writer is 1024
        if not isinstance(imgsz, int) or isinstance(imgsz, bool) or not 32 <= imgsz <= MAX_IMGSZ:
            raise ParameterError(f"image_segment_mapper_args.imgsz must be an integer from 32 to {MAX_IMGSZ}, got {_short(imgsz)}", "imgsz")
        for name in ("conf", "iou"):
            object.__setattr__(self, name, _number("image_segment_mapper_args", name, getattr(self, name), *PROBABILITY))
        _text(self, "image_segment_mapper_args", "model_path")


@dataclass(frozen=True)
class TextMatchingArgs:
    """`image_text_matching_filter_args`: BLIP ITM gate (S5, closed interval)."""

    min_score: float = 0.1
    max_score: float = 1.0
    hf_blip: str = "Salesforce/blip-itm-base-coco"

    def __post_init__(self) -> None:
        _check_range(self, "image_text_matching_filter_args", "min_score", "max_score", PROBABILITY)
        _text(self, "image_text_matching_filter_args", "hf_blip")


@dataclass(frozen=True)
class OperatorParams:
    """All three groups. Build from Data-Juicer's dicts with `from_dicts`."""

    pair: PairSimilarityArgs = field(default_factory=PairSimilarityArgs)
    segment: SegmentArgs = field(default_factory=SegmentArgs)
    matching: TextMatchingArgs = field(default_factory=TextMatchingArgs)
    overlap_iou: float = 0.5  # S7, fixed in the original

    @classmethod
    def from_dicts(
        cls,
        image_pair_similarity_filter_args: Mapping[str, Any] | None = None,
        image_segment_mapper_args: Mapping[str, Any] | None = None,
        image_text_matching_filter_args: Mapping[str, Any] | None = None,
    ) -> "OperatorParams":
        return cls(
            pair=_build(PairSimilarityArgs, "image_pair_similarity_filter_args", image_pair_similarity_filter_args),
            segment=_build(SegmentArgs, "image_segment_mapper_args", image_segment_mapper_args),
            matching=_build(TextMatchingArgs, "image_text_matching_filter_args", image_text_matching_filter_args),
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "OperatorParams":
        """A dict (e.g. a parsed JSON/YAML file) holding up to the three Data-Juicer keys."""
        keys = {"image_pair_similarity_filter_args", "image_segment_mapper_args", "image_text_matching_filter_args"}
        unknown = sorted(set(data) - keys, key=str)
        if unknown:
            raise ParameterError(f"unknown parameter group(s) {', '.join(_with_guess(k, keys) for k in unknown)}; expected some of {sorted(keys)}", str(unknown[0]) or "(empty key)")
        return cls.from_dicts(**{k: data.get(k) for k in keys})

    def to_dicts(self) -> dict[str, dict[str, Any]]:
        return {
            "image_pair_similarity_filter_args": dataclasses.asdict(self.pair),
            "image_segment_mapper_args": dataclasses.asdict(self.segment),
            "image_text_matching_filter_args": dataclasses.asdict(self.matching),
        }
