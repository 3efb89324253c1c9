"""What the commands read besides records, fuzzed: `--vary` specs and parameter values. Whatever
the text, the answer is a value or one ParameterError line naming the setting; never a traceback,
never an unbounded build (no models, no processes)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from imgdiff_onnx.errors import ParameterError
from imgdiff_onnx.params import OperatorParams
from imgdiff_onnx.tuning.sweep import MAX_SETTINGS, GROUP_OF, grid_size, parse_axis

NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**400), 10**400),
                   st.sampled_from(["0", "1", "-1", "0.5", "1e-300", "1e300", "inf", "nan", "", "x", "0x10", "1_0"]))  # fmt: skip


@st.composite
def vary_specs(draw) -> str:
    name = draw(st.one_of(st.sampled_from(sorted(GROUP_OF)), st.text(max_size=12)))
    if draw(st.booleans()):
        parts = [str(draw(NUMBER)) for _ in range(3)]
        body = ":".join(parts[: draw(st.integers(1, 4))])
    else:
        body = ",".join(str(draw(NUMBER)) for _ in range(draw(st.integers(0, 6))))
    return f"{name}{draw(st.sampled_from(['=', '', '==']))}{body}"


@settings(max_examples=400, deadline=None)
@given(vary_specs())
def test_any_vary_spec_is_an_axis_or_one_line(text):
    try:
        axis = parse_axis(text)
    except ParameterError as exc:
        assert "\n" not in str(exc) and exc.name == "vary" and len(str(exc)) < 400
        return
    assert 1 <= len(axis.values) <= MAX_SETTINGS and all(isinstance(v, float) and abs(v) < float("inf") for v in axis.values)
    assert grid_size([axis, axis]) == len(axis.values) ** 2


JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), NUMBER, st.text(max_size=20)),
                       lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                       max_leaves=6)  # fmt: skip
KEYS = {"image_pair_similarity_filter_args": ["min_score_1", "max_score_1", "min_score_2", "max_score_2", "hf_clip", "min_scor"],
        "image_segment_mapper_args": ["imgsz", "conf", "iou", "model_path"],
        "image_text_matching_filter_args": ["min_score", "max_score", "hf_blip"]}  # fmt: skip


@st.composite
def params_data(draw) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSONISH)
    data = {}
    for group, names in KEYS.items():
        if draw(st.booleans()):
            data[group] = {name: draw(JSONISH) for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True))}
    if draw(st.integers(0, 5)) == 0:
        data[draw(st.text(max_size=10))] = draw(JSONISH)
    return data


@settings(max_examples=400, deadline=None)
@given(params_data())
def test_any_params_value_is_parameters_or_one_line_naming_the_setting(data):
    try:
        params = OperatorParams.from_mapping(data) if isinstance(data, dict) else OperatorParams.from_mapping({"x": data})
    except ParameterError as exc:
        assert "\n" not in str(exc) and exc.name and len(str(exc)) < 600, str(exc)
        return
    json.dumps(params.to_dicts(), allow_nan=False)  # what a run record holds: finite numbers, strict JSON
