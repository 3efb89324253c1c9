"""Which precision each model runs at: one word for all, or a choice per model.

Three models, each exported as fp32 and int8 graphs: `clip` (the CLIP image tower: whole-pair
and crop-pair gates), `blip` (BLIP vision + the ITM head), `fastsam` (segmentation). Each runs
at one of three precisions:

    fp32     the fp32 graphs: the faithful reference
    int8     the int8 graphs alone: fastest; a score within int8's error of a threshold may
             decide otherwise than fp32 would
    banded   the int8 graphs, and the fp32 graphs for the scores that lie within the model
             folder's guard band of a threshold (imgdiff_onnx.engine.band): decisions as fp32's at
             close to int8 cost. FastSAM has no score to band (int8 changes which boxes exist),
             so "banded" FastSAM is fp32.

A choice is written the same way on a command line, in YAML and in Python:

    "banded"                        CLIP and BLIP banded, FastSAM fp32 (the built-in default)
    "int8"                          every model int8 (the speed mode)
    "fp32"                          every model fp32
    "fastsam=fp32,clip=int8,blip=banded"
    "int8,fastsam=fp32"             a word for all, then per-model overrides (each named once)
    {"fastsam": "fp32", "clip": "int8", "blip": "int8"}   (YAML / dict form)

Models not named take the built-in default (`DEFAULT`). `python -m imgdiff_onnx validate`
measures int8 against fp32 on your own pairs, the guard band's margins with it, and can write
both into the model folder; `run` then uses the recommendation when no precision is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union

from ..errors import ParameterError
from . import manifest as mf

MODELS = ("clip", "blip", "fastsam")
# which exported graphs each model runs
MODEL_GRAPHS = {"clip": ("clip_vision",), "blip": ("blip_vision", "blip_itm"), "fastsam": ("fastsam", "fastsam_proto")}
GRAPH_MODEL = {graph: model for model, graphs in MODEL_GRAPHS.items() for graph in graphs}


CHOICES = ("fp32", "int8", "banded")  # per model; "banded" runs int8 graphs and, in the guard band, fp32 ones
BANDED = "banded"


class PrecisionError(ParameterError):
    """A precision choice that cannot be parsed or served."""

    def __init__(self, message: str, name: str | None = "precision"):
        super().__init__(message, name)


@dataclass(frozen=True)
class Precision:
    """Per-model precision. Build from text or a mapping with `Precision.parse`."""

    clip: str = BANDED
    blip: str = BANDED
    fastsam: str = "fp32"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value not in CHOICES:
                raise PrecisionError(f"precision of {f.name} must be one of {'/'.join(CHOICES)}, got {value!r}")
        if self.fastsam == BANDED:  # nothing to band: deciding as fp32 does means running fp32
            object.__setattr__(self, "fastsam", "fp32")

    @classmethod
    def uniform(cls, precision: str) -> "Precision":
        return cls(**{m: precision for m in MODELS})

    @classmethod
    def parse(cls, value: "PrecisionLike") -> "Precision":
        """From "int8", "fp32", "fastsam=fp32,clip=int8", "int8,fastsam=fp32", a mapping, or a Precision."""
        if isinstance(value, Precision):
            return value
        if isinstance(value, Mapping):
            items = [(str(k), v) for k, v in value.items()]
        elif isinstance(value, str):
            items = []
            for part in (p.strip() for p in value.split(",")):
                if not part:
                    continue
                name, sep, prec = part.partition("=")
                items.append((name.strip(), prec.strip()) if sep else ("*", name))
            if not items:
                raise PrecisionError(f"empty precision {value!r}; expected e.g. 'int8', 'fp32' or 'fastsam=fp32,clip=int8,blip=int8'")
        else:
            raise PrecisionError(f"precision must be a string or a mapping, got {type(value).__name__}")
        named = [name for name, _ in items]
        twice = sorted({name for name in named if named.count(name) > 1})
        if twice:
            what = ", ".join("a word for all" if n == "*" else n for n in twice)
            raise PrecisionError(f"precision {value!r} names {what} twice; name each model once (e.g. 'int8,fastsam=fp32')")
        chosen = {f.name: getattr(DEFAULT, f.name) for f in fields(cls)}
        for name, prec in items:
            if not isinstance(prec, str) or prec not in CHOICES:
                raise PrecisionError(f"precision {value!r}: {name if name != '*' else 'value'} must be fp32, int8 or banded, got {prec!r}")
            if name == "*":
                chosen = {m: prec for m in MODELS}
            elif name in MODELS:
                chosen[name] = prec
            else:
                raise PrecisionError(f"precision {value!r}: unknown model {name!r}; models are {', '.join(MODELS)}")
        return cls(**chosen)

    def for_graph(self, graph: str) -> str:
        """The precision of the graph file the model runs first (a banded model's int8 graph)."""
        value = getattr(self, GRAPH_MODEL[graph])
        return "int8" if value == BANDED else value

    def banded(self) -> tuple[str, ...]:
        """The models whose scores near a threshold are re-scored with their fp32 graphs."""
        return tuple(m for m in MODELS if getattr(self, m) == BANDED)

    def needs(self) -> set[str]:
        """The precisions whose graphs must be in the model folder."""
        needed = set()
        for m in MODELS:
            value = getattr(self, m)
            needed |= {"int8", "fp32"} if value == BANDED else {value}
        return needed

    def to_dict(self) -> dict[str, str]:
        return {m: getattr(self, m) for m in MODELS}

    def __str__(self) -> str:
        values = set(self.to_dict().values())
        if len(values) == 1:
            return values.pop()
        return ",".join(f"{m}={getattr(self, m)}" for m in MODELS)


PrecisionLike = Union[str, Mapping[str, Any], Precision]

DEFAULT = Precision()


def resolve_precision(requested: PrecisionLike | None, manifest: mf.Manifest, folder: Path) -> tuple[Precision, str]:
    """The precision to run and where it came from: the caller's choice, else the model folder's
    recommendation (written by `validate --write`), else the built-in default."""
    exported = set(manifest.precisions)
    if requested is not None:
        precision, origin = Precision.parse(requested), "given"
    elif manifest.recommended_precision:
        rec = manifest.recommended_precision
        try:
            precision = Precision.parse(rec["precision"])
        except (KeyError, TypeError, PrecisionError) as exc:
            raise mf.ManifestError(f"{folder}: recommended_precision in {mf.MANIFEST_NAME} is not readable ({exc})") from None
        origin = f"the model folder's recommendation ({rec.get('by', 'unknown')})"
    elif "int8" not in exported:
        precision, origin = Precision.uniform("fp32"), "fp32 (the folder has no int8 graphs)"
    elif manifest.guard_band is None:
        precision = Precision(**{m: "int8" if v == BANDED else v for m, v in DEFAULT.to_dict().items()})
        origin = ("built-in default without its guard band: the folder has no measured margins, so int8 scores decide alone "
                  "(`python -m imgdiff_onnx_export.band --models DIR` or `validate --write` on your pairs measure them)")  # fmt: skip
    else:
        precision, origin = DEFAULT, "built-in default"
    missing = sorted(precision.needs() - exported)
    if missing:
        raise mf.ManifestError(
            f"{folder}: precision {precision} needs {'/'.join(missing)} graphs, but the folder was exported with "
            f"{'/'.join(sorted(exported)) or 'none'}; re-export with `--precision fp32,int8` or choose another precision"
        )
    if precision.banded() and manifest.guard_band is None:
        raise mf.ManifestError(
            f"{folder}: precision {precision} runs {'/'.join(precision.banded())} banded, but {mf.MANIFEST_NAME} has no guard_band "
            "margins; measure them (`python -m imgdiff_onnx_export.band --models DIR`, or `python -m imgdiff_onnx validate --write` "
            "on your pairs), or choose int8/fp32"
        )
    return precision, origin
