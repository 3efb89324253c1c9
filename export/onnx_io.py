"""One place that turns a torch module into an ONNX file (classic TorchScript exporter)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def export_graph(
    module: torch.nn.Module,
    args: tuple,
    out: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict,
    opset: int,
) -> dict:
    """Export `module` to `out`; returns the graph's interface for the manifest.

    dynamo=False: the classic exporter gives stable, plain graphs for these models.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(
            module,
            args,
            str(out),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    log.info("exported %s", out.name)
    return describe(out)


def describe(path: Path) -> dict:
    """Inputs and outputs of an ONNX file: names, element types and (symbolic) shapes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def values(infos) -> list[dict]:
        result = []
        for info in infos:
            tensor = info.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
            result.append({"name": info.name, "dtype": onnx.TensorProto.DataType.Name(tensor.elem_type).lower(), "shape": dims})
        return result

    return {"inputs": values(model.graph.input), "outputs": values(model.graph.output), "opset": model.opset_import[0].version}


def store_weights_beside(path: Path) -> str:
    """Re-save the graph at `path` with its initializers in one file beside it (`<name>.data`),
    which onnxruntime maps instead of reading into memory; returns that file's name.

    For BLIP ITM this keeps the word-embedding table (~94 MB at full size, of which a query reads
    a few rows) out of the process's resident memory; weights that onnxruntime repacks at load
    are resident either way.
    """
    import onnx

    model = onnx.load(str(path))
    data = f"{path.name}.data"
    (path.parent / data).unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=1024)
    (path.parent / data).chmod(path.stat().st_mode & 0o777)  # onnx creates it owner-only; readable like the graph
    log.info("%s: weights stored in %s", path.name, data)
    return data
