"""One home per default: every command-line option that sets a settings-dataclass field has that
field's default, the Data-Juicer operator's engine arguments default as the engine does, and the
defaults README states are the code's. A new option or a changed default that disagrees fails here."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re

from imgdiff_onnx.__main__ import build_parser
from imgdiff_onnx.runs.ray_run import RayOptions
from imgdiff_onnx.runs.jsonl import RunOptions
from imgdiff_onnx.settings import PAIRS_PER_BATCH, EngineSettings
from imgdiff_onnx.tuning.retune import RetuneOptions
from imgdiff_onnx.review.validate import ValidateOptions

from .conftest import ROOT

# command -> the dataclasses its options fill (an option's dest is the field's name)
HOMES = {
    "run": (EngineSettings, RunOptions, RayOptions),
    "demo": (EngineSettings,),
    "validate": (ValidateOptions,),
    "retune": (RetuneOptions,),
}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _field_defaults(cls: type) -> dict[str, object]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_every_option_defaults_to_its_settings_field():
    commands = _subcommands()
    checked = 0
    for command, homes in HOMES.items():
        defaults: dict[str, object] = {}
        for cls in homes:
            for name, value in _field_defaults(cls).items():
                defaults.setdefault(name, value)
        for action in commands[command]._actions:
            if action.dest not in defaults or action.dest == "help":
                continue
            expected = defaults[action.dest]
            given = action.default
            if isinstance(action, argparse._StoreTrueAction):
                assert expected is False, f"{command} {action.option_strings}: a flag for a field that defaults to {expected!r}"
            else:
                assert given == expected, f"{command} {action.option_strings} defaults to {given!r}, its field to {expected!r}"
            checked += 1
    assert checked >= 15  # the mapping above reaches the options


def test_the_data_juicer_operator_defaults_as_the_engine():
    """Read from the operator's source (it imports data_juicer, which lives in its own virtualenv)."""
    tree = ast.parse((ROOT / "imgdiff_onnx" / "adapters" / "data_juicer_op.py").read_text())
    [init] = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    names = [a.arg for a in init.args.args][-len(init.args.defaults) :]
    defaults = {n: ast.literal_eval(d) for n, d in zip(names, init.args.defaults)}
    assert defaults["precision"] == EngineSettings.precision  # None: the folder's recommendation, else the built-in default
    # the three parameter dicts default to None: OperatorParams' own defaults (Data-Juicer's)
    assert all(defaults[g] is None for g in ("image_pair_similarity_filter_args", "image_segment_mapper_args", "image_text_matching_filter_args"))
    # threads: 1, not the engine's 0 (= every core): a Data-Juicer process or Ray actor asks for num_cpus=threads
    assert defaults["threads"] == 1


def test_readme_states_the_codes_defaults():
    readme = (ROOT / "README.md").read_text() + (ROOT / "docs" / "reference.md").read_text()  # the reference holds the options
    stated = re.findall(r"--pairs-per-batch`?[^.]*?default (\d+)", readme)
    assert stated and all(int(n) == PAIRS_PER_BATCH for n in stated)
    assert ValidateOptions.pairs_per_batch == RunOptions.pairs_per_batch == PAIRS_PER_BATCH
    assert ValidateOptions.crop_batch_size == EngineSettings.crop_batch_size


def test_every_option_of_every_command_is_in_the_reference_and_every_documented_option_exists():
    """docs/reference.md's "Commands and their options" lists each command's options: none missing,
    none that the parser lacks (checked to fail by removing a row and by adding one)."""
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    section = text[text.index("## Commands and their options") : text.index("\n## ", text.index("## Commands and their options") + 1)]
    documented = {m.group(1): set(re.findall(r"^\| `(--[a-z0-9-]+)`", m.group(2), re.M))
                  for m in re.finditer(r"^### (\S+)\n(.*?)(?=^### |\Z)", section, re.M | re.S)}  # fmt: skip
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parsed = {name: {o for a in p._actions for o in a.option_strings if o.startswith("--")} - {"--help", "--debug"}
              for name, p in sub.choices.items() if name != "export"}  # fmt: skip
    assert documented == parsed
