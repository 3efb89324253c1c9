"""The model folder's manifest: what is in it, how to preprocess for it, how it was verified.

One typed description (frozen dataclasses) shared by the export side, which builds and writes
it, and the runtime, which reads it: `Manifest.from_json` checks the layout once and names the
missing or mistyped field; `to_json` gives back the JSON object. Standard library and this
package's preprocessing settings only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import integrity
from .band import GuardBand
from ..errors import ModelFolderError
from .integrity import ModelCheck
from .preprocess import ImageNormalization, LetterboxSettings

MANIFEST_NAME = "manifest.json"
FORMAT = "imgdiff-onnx-models/1"
GRAPHS = ("clip_vision", "blip_vision", "blip_itm", "fastsam")
# graphs a folder may have: FastSAM's prototype head split off `fastsam` (prototypes on demand)
OPTIONAL_GRAPHS = ("fastsam_proto",)
PRECISIONS = ("fp32", "int8")
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_MAX_LENGTH = 512

ManifestError = ModelFolderError  # the model folder is missing, incomplete, or does not match its manifest


def graph_file(graph: str, precision: str) -> str:
    return f"{graph}.{precision}.onnx"


def amx_graph_file(graph: str, precision: str) -> str:
    return f"{graph}.{precision}.amx.onnx"


def _get(data: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...] = object) -> Any:
    if not isinstance(data, Mapping) or key not in data:
        raise ManifestError(f"{where}: no {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        raise ManifestError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph at one precision."""

    file: str
    batch_invariant: bool  # False: dynamic int8, whose scales depend on batch mates: one sample per call
    inputs: tuple[dict, ...] = ()  # name, dtype, shape (symbolic dimensions as names)
    outputs: tuple[dict, ...] = ()
    opset: int | None = None
    quantization: dict | None = None  # the int8 recipe (export/quantize.py)
    # the graph's weights in a file beside it, which onnxruntime maps instead of reading: weights
    # a run never touches (BLIP ITM's word-embedding table, but for a query's few rows) stay on disk
    data_file: str | None = None
    # the same graph for CPUs where onnxruntime runs its int8 GEMM on AMX tiles: its large
    # convolutions' weights stored so that onnxruntime sends them to that GEMM, same outputs
    # bit for bit (export/conv_kernels.py). {"file", "convs", "rule", "identical_outputs_on"}
    amx_variant: dict | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "GraphEntry":
        return cls(
            file=_get(data, "file", where, str),
            batch_invariant=_get(data, "batch_invariant", where, bool),
            inputs=tuple(data.get("inputs", ())),
            outputs=tuple(data.get("outputs", ())),
            opset=data.get("opset"),
            quantization=data.get("quantization"),
            data_file=_get(data, "data_file", where, str) if data.get("data_file") is not None else None,
            amx_variant=cls._amx_variant(data.get("amx_variant"), f"{where}.amx_variant"),
        )

    @staticmethod
    def _amx_variant(data: Any, where: str) -> dict | None:
        if data is None:
            return None
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}: expected an object, got {type(data).__name__}")
        _get(data, "file", where, str)
        return dict(data)

    def file_for(self, amx: bool) -> str:
        """The graph file to load: the AMX variant where onnxruntime uses AMX and there is one."""
        return self.amx_variant["file"] if amx and self.amx_variant else self.file

    def files_for(self, amx: bool) -> list[str]:
        """The files a load reads: the graph (file_for), and its weights when stored beside it."""
        return [self.file_for(amx)] + ([self.data_file] if self.data_file else [])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "inputs": list(self.inputs), "outputs": list(self.outputs), "opset": self.opset}
        if self.quantization is not None:
            out["quantization"] = self.quantization
        out["batch_invariant"] = self.batch_invariant
        if self.data_file is not None:
            out["data_file"] = self.data_file
        if self.amx_variant is not None:
            out["amx_variant"] = self.amx_variant
        return out


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing constants of each model, as exported (raw records kept for round trips)."""

    clip: dict
    blip: dict
    fastsam: dict

    def __post_init__(self) -> None:
        for name in ("clip", "blip", "fastsam"):
            try:
                getattr(self, f"{name}_settings")
            except (KeyError, TypeError, ValueError) as exc:
                raise ManifestError(f"{MANIFEST_NAME} preprocessing.{name}: not readable ({type(exc).__name__}: {exc})") from None

    @property
    def clip_settings(self) -> ImageNormalization:
        return ImageNormalization.from_dict(self.clip)

    @property
    def blip_settings(self) -> ImageNormalization:
        return ImageNormalization.from_dict(self.blip)

    @property
    def fastsam_settings(self) -> LetterboxSettings:
        return LetterboxSettings.from_dict(self.fastsam)


@dataclass(frozen=True)
class Manifest:
    precisions: tuple[str, ...]
    graphs: dict[str, dict[str, GraphEntry]]  # graph -> precision -> entry
    preprocessing: Preprocessing
    files: dict[str, FileEntry]  # path relative to the folder -> size and sha256
    tokenizer_file: str = TOKENIZER_FILE
    tokenizer_max_length: int = TOKENIZER_MAX_LENGTH
    format: str = FORMAT
    created: str = ""
    opset: int | None = None
    random_init: dict | None = None  # set when the weights are random (tests, benchmarks)
    sources: dict = field(default_factory=dict)  # where each checkpoint came from
    versions: dict = field(default_factory=dict)  # packages of the export
    verification: dict = field(default_factory=dict)  # figures of export/verify.py
    recommended_precision: dict | None = None  # written by `validate --write`
    guard_band: GuardBand | None = None  # int8 score margins (imgdiff_onnx.engine.band): export, widened by `validate --write`

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = MANIFEST_NAME) -> "Manifest":
        """Check the layout and build the manifest; ManifestError names the field."""
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}: expected a JSON object")
        if data.get("format") != FORMAT:
            raise ManifestError(f"{where}: format {data.get('format')!r}, this version reads {FORMAT!r}")
        precisions = tuple(_get(data, "precisions", where, list))
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown:
            raise ManifestError(f"{where}.precisions: unknown {unknown}, expected some of {list(PRECISIONS)}")
        raw_graphs = _get(data, "graphs", where, dict)
        graphs: dict[str, dict[str, GraphEntry]] = {}
        for graph in GRAPHS + tuple(g for g in OPTIONAL_GRAPHS if g in raw_graphs):
            by_precision = _get(raw_graphs, graph, f"{where}.graphs", dict)
            graphs[graph] = {p: GraphEntry.from_json(_get(by_precision, p, f"{where}.graphs.{graph}", dict), f"{where}.graphs.{graph}.{p}") for p in precisions}
        tokenizer = _get(data, "tokenizer", where, dict)
        pre = _get(data, "preprocessing", where, dict)
        files = {
            name: FileEntry(int(_get(entry, "bytes", f"{where}.files.{name}", int)), str(_get(entry, "sha256", f"{where}.files.{name}", str)))
            for name, entry in _get(data, "files", where, dict).items()
        }
        return cls(
            precisions=precisions,
            graphs=graphs,
            preprocessing=Preprocessing(*(dict(_get(pre, name, f"{where}.preprocessing", dict)) for name in ("clip", "blip", "fastsam"))),
            files=files,
            tokenizer_file=_get(tokenizer, "file", f"{where}.tokenizer", str),
            tokenizer_max_length=int(tokenizer.get("max_length", TOKENIZER_MAX_LENGTH)),
            format=data["format"],
            created=str(data.get("created", "")),
            opset=data.get("opset"),
            random_init=data.get("random_init"),
            sources=dict(data.get("sources") or {}),
            versions=dict(data.get("versions") or {}),
            verification=dict(data.get("verification") or {}),
            recommended_precision=data.get("recommended_precision"),
            guard_band=GuardBand.from_json(data["guard_band"], f"{where}.guard_band") if data.get("guard_band") is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "created": self.created,
            "random_init": self.random_init,
            "sources": self.sources,
            "versions": self.versions,
            "opset": self.opset,
            "precisions": list(self.precisions),
            "graphs": {g: {p: e.to_json() for p, e in by_p.items()} for g, by_p in self.graphs.items()},
            "tokenizer": {"file": self.tokenizer_file, "max_length": self.tokenizer_max_length},
            "preprocessing": dataclasses.asdict(self.preprocessing),
            "verification": self.verification,
            "files": self.files_json(),
        }
        if self.recommended_precision is not None:
            out["recommended_precision"] = self.recommended_precision
        if self.guard_band is not None:
            out["guard_band"] = self.guard_band.to_json()
        return out

    def files_json(self) -> dict[str, dict[str, Any]]:
        """The `files` record: path -> {"bytes", "sha256"}."""
        return {name: dataclasses.asdict(f) for name, f in self.files.items()}

    def graph(self, graph: str, precision: str) -> GraphEntry:
        try:
            return self.graphs[graph][precision]
        except KeyError:
            raise ManifestError(f"{MANIFEST_NAME}: no {precision} {graph} graph (exported: {'/'.join(self.precisions)})") from None

    def with_recommendation(self, recommendation: dict) -> "Manifest":
        return dataclasses.replace(self, recommended_precision=recommendation)

    def with_guard_band(self, band: GuardBand | None) -> "Manifest":
        return dataclasses.replace(self, guard_band=band)


def read(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    if not Path(folder).exists():
        raise ManifestError(f"{folder}: the model folder does not exist (no {MANIFEST_NAME} to read); give the folder that "
                            "`python -m imgdiff_onnx.export --out DIR` wrote")  # fmt: skip
    if not Path(folder).is_dir():
        raise ManifestError(f"{folder}: a file, not a model folder (no {MANIFEST_NAME} to read)")
    if not path.is_file():
        raise ManifestError(
            f"{folder}: no {MANIFEST_NAME}; not a model folder written by `python -m imgdiff_onnx.export` "
            "(or run `python -m imgdiff_onnx demo`, which exports random-init models)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    return Manifest.from_json(data, str(path))


def write(folder: Path, manifest: Manifest) -> Path:
    """Write (or replace) the manifest in one step: a reader never sees half a file."""
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_files(folder: Path, manifest: Manifest, names: list[str], check: ModelCheck = "once") -> None:
    """Every named file exists with the recorded size and, unless check="size", sha256 (see integrity.py)."""
    integrity.check_files(folder, manifest.files_json(), names, check, MANIFEST_NAME)


def _names_of(source: str) -> set[str]:
    """The ways a model source may be written: as given, its last path part, and the hub id a
    Hugging Face cache folder (models--ORG--NAME) stands for."""
    text = str(source).rstrip("/")
    names = {text, text.rsplit("/", 1)[-1]}
    for part in text.split("/"):
        if part.startswith("models--"):
            hub = part.removeprefix("models--").replace("--", "/")
            names |= {hub, hub.rsplit("/", 1)[-1]}
    return {n for n in names if n}


def source_mismatches(manifest: Manifest, wanted: Mapping[str, str]) -> list[str]:
    """The models whose source the parameters name (`wanted`: model -> hf_clip / hf_blip /
    model_path) differently from the export that wrote the folder: "clip: the parameters name
    X, the folder was exported from Y". A source counts as the same when its name or last path
    part (or the hub id of a cache folder) agrees."""
    out = []
    for model, asked in wanted.items():
        source = manifest.sources.get(model) or {}
        recorded = [str(v) for v in (source.get("given"), source.get("local_path")) if v]
        if not recorded or not asked:
            continue
        asked_names = _names_of(asked)
        if not any(asked_names & _names_of(r) for r in recorded):
            out.append(f"{model}: the parameters name {asked!r}, the folder was exported from {recorded[0]!r}")
    return out
