"""What the runtime feeds each exported graph and reads from it: names, element types and ranks.

One typed description per graph (DESIGN.md section 5), checked when its session is created, so a
model folder from another export fails at load with one line naming the graph and the tensor,
instead of deep inside a run. A graph may have more outputs than the runtime reads, but no input
the runtime does not feed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from ...errors import ModelFolderError

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "float32" or "int64"
    rank: int


@dataclass(frozen=True)
class GraphContract:
    graph: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def check(self, session: ort.InferenceSession, path: Path) -> None:
        """ModelFolderError naming the graph, the tensor, and what was expected and found."""
        where = f"{path.name} ({self.graph} graph)"
        declared = {arg.name: arg for arg in session.get_inputs()}
        extra = sorted(set(declared) - {t.name for t in self.inputs})
        if extra:
            raise ModelFolderError(f"{where}: input {extra[0]!r} is not one the runtime feeds ({', '.join(t.name for t in self.inputs)}); "
                                   "export the folder again with this version")  # fmt: skip
        self._match(where, "input", self.inputs, declared)
        self._match(where, "output", self.outputs, {arg.name: arg for arg in session.get_outputs()})

    @staticmethod
    def _match(where: str, kind: str, wanted: tuple[TensorSpec, ...], found: dict) -> None:
        for spec in wanted:
            arg = found.get(spec.name)
            if arg is None:
                raise ModelFolderError(f"{where}: no {kind} {spec.name!r} (it has {', '.join(sorted(found)) or 'none'}); "
                                       "export the folder again with this version")  # fmt: skip
            shape = arg.shape if isinstance(arg.shape, list) else []
            if arg.type != _ORT_TYPES[spec.dtype] or len(shape) != spec.rank:
                raise ModelFolderError(f"{where}: {kind} {spec.name!r} is {arg.type} of rank {len(shape)}, expected "
                                       f"{_ORT_TYPES[spec.dtype]} of rank {spec.rank}; export the folder again with this version")  # fmt: skip


def _f(name: str, rank: int) -> TensorSpec:
    return TensorSpec(name, "float32", rank)


CONTRACTS: dict[str, GraphContract] = {
    c.graph: c
    for c in (
        GraphContract("clip_vision", (_f("pixel_values", 4),), (_f("image_embeds", 2),)),
        GraphContract("blip_vision", (_f("pixel_values", 4),), (_f("image_embeds", 3),)),
        GraphContract("blip_itm", (TensorSpec("input_ids", "int64", 2), TensorSpec("attention_mask", "int64", 2), _f("image_embeds", 3)), (_f("itm_logits", 2),)),
        # FastSAM split at its prototype head (fastsam + fastsam_proto), or one graph
        GraphContract("fastsam", (_f("images", 4),), (_f("predictions", 3), _f("proto_features", 4))),
        GraphContract("fastsam_proto", (_f("proto_features", 4),), (_f("protos", 4),)),
        GraphContract("fastsam (one graph)", (_f("images", 4),), (_f("predictions", 3), _f("protos", 4))),
    )
}
