"""Which precision each model runs at: one word for all, or a choice per model.

Three models, each exported as fp32 and int8 graphs: `clip` (the CLIP image tower: whole-pair
and crop-pair gates), `blip` (BLIP vision + the ITM head), `fastsam` (segmentation). A choice is
written the same way on a command line, in YAML and in Python:

    "int8"                          every model int8
    "fp32"                          every model fp32
    "fastsam=fp32,clip=int8,blip=int8"
    "int8,fastsam=fp32"             a word for all, then per-model overrides (each named once)
    {"fastsam": "fp32", "clip": "int8", "blip": "int8"}   (YAML / dict form)

Models not named take the built-in default (`DEFAULT`). The default keeps FastSAM fp32: an int8
FastSAM graph changes the candidate set itself (which boxes exist), while int8 CLIP and BLIP move
scores slightly and can only flip a decision near a threshold. `python -m imgdiff_onnx validate`
measures both on your own pairs and can write a recommendation into the model folder, which
`run` then uses when no precision is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Union

from .errors import ParameterError
from .manifest import PRECISIONS

MODELS = ("clip", "blip", "fastsam")
# which exported graphs each model runs
MODEL_GRAPHS = {"clip": ("clip_vision",), "blip": ("blip_vision", "blip_itm"), "fastsam": ("fastsam", "fastsam_proto")}
GRAPH_MODEL = {graph: model for model, graphs in MODEL_GRAPHS.items() for graph in graphs}


class PrecisionError(ParameterError):
    """A precision choice that cannot be parsed or served."""


@dataclass(frozen=True)
class Precision:
    """Per-model precision. Build from text or a mapping with `Precision.parse`."""

    clip: str = "int8"
    blip: str = "int8"
    fastsam: str = "fp32"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value not in PRECISIONS:
                raise PrecisionError(f"precision of {f.name} must be one of {'/'.join(PRECISIONS)}, got {value!r}")

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
            if not isinstance(prec, str) or prec not in PRECISIONS:
                raise PrecisionError(f"precision {value!r}: {name if name != '*' else 'value'} must be fp32 or int8, got {prec!r}")
            if name == "*":
                chosen = {m: prec for m in MODELS}
            elif name in MODELS:
                chosen[name] = prec
            else:
                raise PrecisionError(f"precision {value!r}: unknown model {name!r}; models are {', '.join(MODELS)}")
        return cls(**chosen)

    def for_graph(self, graph: str) -> str:
        return getattr(self, GRAPH_MODEL[graph])

    def needs(self) -> set[str]:
        """The precisions whose graphs must be in the model folder."""
        return {getattr(self, m) for m in MODELS}

    def to_dict(self) -> dict[str, str]:
        return {m: getattr(self, m) for m in MODELS}

    def __str__(self) -> str:
        values = set(self.to_dict().values())
        if len(values) == 1:
            return values.pop()
        return ",".join(f"{m}={getattr(self, m)}" for m in MODELS)


PrecisionLike = Union[str, Mapping[str, Any], Precision]

DEFAULT = Precision()
