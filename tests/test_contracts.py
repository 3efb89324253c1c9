"""Graph contracts (imgdiff_onnx/engine/models/contracts.py): a graph that is not what the runtime feeds
and reads fails at load, with one line naming the graph, the tensor, and what was expected."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import onnx
import pytest

from imgdiff_onnx.engine import integrity
from imgdiff_onnx.errors import ModelFolderError
from imgdiff_onnx.engine.models.contracts import CONTRACTS
from imgdiff_onnx.engine.modelset import ModelSet, SessionSettings


def _session(inputs: list[tuple[str, str, list]], outputs: list[tuple[str, str, list]]) -> SimpleNamespace:
    def args(specs):
        return [SimpleNamespace(name=n, type=t, shape=s) for n, t, s in specs]

    return SimpleNamespace(get_inputs=lambda: args(inputs), get_outputs=lambda: args(outputs))


ITM_OUT = [("itm_logits", "tensor(float)", ["batch", 2])]
ITM_IN = [("input_ids", "tensor(int64)", ["b", "s"]), ("attention_mask", "tensor(int64)", ["b", "s"]), ("image_embeds", "tensor(float)", ["b", 577, 768])]


def test_a_graph_that_matches_its_contract_passes(tmp_path):
    CONTRACTS["blip_itm"].check(_session(ITM_IN, ITM_OUT + [("extra", "tensor(float)", [1])]), tmp_path / "blip_itm.int8.onnx")


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        (ITM_IN[:2], ITM_OUT, "blip_itm.int8.onnx (blip_itm graph): no input 'image_embeds' (it has attention_mask, input_ids)"),
        (ITM_IN + [("token_type_ids", "tensor(int64)", ["b", "s"])], ITM_OUT, "input 'token_type_ids' is not one the runtime feeds"),
        ([("input_ids", "tensor(int32)", ["b", "s"])] + ITM_IN[1:], ITM_OUT,
         "input 'input_ids' is tensor(int32) of rank 2, expected tensor(int64) of rank 2"),
        (ITM_IN, [("itm_logits", "tensor(float)", ["b"])], "output 'itm_logits' is tensor(float) of rank 1, expected tensor(float) of rank 2"),
        (ITM_IN, [("logits", "tensor(float)", ["b", 2])], "no output 'itm_logits' (it has logits)"),
    ],
)
def test_a_mismatch_names_the_graph_the_tensor_and_what_was_expected(tmp_path, inputs, outputs, message):
    with pytest.raises(ModelFolderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CONTRACTS["blip_itm"].check(_session(inputs, outputs), tmp_path / "blip_itm.int8.onnx")


def test_a_folder_from_another_export_fails_at_load(tiny_models, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_models, folder, ignore=shutil.ignore_patterns("torch"))
    path = folder / "clip_vision.fp32.onnx"
    model = onnx.load(str(path))
    old = model.graph.output[0].name
    model.graph.output[0].name = "pooled"
    for node in model.graph.node:
        node.output[:] = ["pooled" if o == old else o for o in node.output]
    onnx.save(model, str(path))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][path.name] = {"bytes": path.stat().st_size, "sha256": integrity.sha256(path)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    models = ModelSet(folder, "fp32")
    with pytest.raises(ModelFolderError, match=r"clip_vision.fp32.onnx \(clip_vision graph\): no output 'image_embeds' \(it has pooled\)"):
        models.components(SessionSettings(threads=1), crop_batch_size=4)
