"""Property-based tests of the run's framing layer, on a fake engine (no models): whatever the
input lines hold, one strict JSON result line per input line, numbered 1..n in order, and a run
interrupted anywhere (torn at any byte, or stopped after any line) and resumed gives the same file."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from imgdiff_onnx.runs.jsonl import RunOptions, run
from imgdiff_onnx.runs.jsonlines import count_lines

from .fakes import FakeEngine


def _strict(line: bytes) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a results line")

    value = json.loads(line.decode("utf-8"), parse_constant=refuse)
    assert isinstance(value, dict)
    return value


# ---- strategies: hostile lines (bytes without the line break) ---------------------------------------

unicode_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=12)  # surrogates included
scalars = st.none() | st.booleans() | st.integers(min_value=-(10**120), max_value=10**120) | st.floats() | unicode_text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(unicode_text, inner, max_size=3), max_leaves=8)


def _encode(value: object, ascii_only: bool) -> bytes:
    """JSON text as a careless writer makes it: NaN allowed, lone surrogates as raw (invalid) UTF-8."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def records(draw) -> dict:
    record: dict = {"id": draw(st.one_of(st.none(), unicode_text, st.integers()))}
    for key in ("image_path1", "image_path2"):
        record[key] = draw(st.one_of(st.just("a.jpg"), st.just("b.jpg"), unicode_text, st.text(max_size=5000), json_values))
    for key in ("objects1", "objects2"):
        if draw(st.booleans()):
            record[key] = draw(st.one_of(st.lists(unicode_text, max_size=3), st.just(["boom"]), json_values))
    if draw(st.booleans()):
        record.update(caption1=draw(json_values), caption2=draw(json_values))
    return record


lines = st.one_of(
    st.binary(max_size=80),
    st.builds(_encode, json_values, st.booleans()),
    st.builds(_encode, records(), st.booleans()),
    st.sampled_from([b"", b"\r", b"\xef\xbb\xbf{}", b'{"a": NaN}', b'{"a": 1e999}', b'{"a": "\\udc00"}', b"[" * 200, b'{"a":' + b"1" * 500 + b"}"]),
).map(lambda b: b.replace(b"\n", b"\r"))

files = st.tuples(st.lists(lines, min_size=1, max_size=12), st.booleans(), st.booleans())  # lines, BOM, final line break


def _write_input(folder: Path, body: tuple[list[bytes], bool, bool]) -> Path:
    content, bom, final = body
    path = folder / "in.jsonl"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"\n".join(content) + (b"\n" if final else b""))
    return path


def _run(data: Path, out: Path, **options) -> None:
    run(FakeEngine(), data, out, RunOptions(progress=False, pairs_per_batch=3, **options))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=files, cut=st.floats(min_value=0, max_value=1), stop=st.integers(min_value=1, max_value=12))
def test_one_strict_line_per_input_line_and_any_interruption_resumes_to_the_same_file(body, cut, stop):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = _write_input(folder, body)
        n = count_lines(data)
        full = folder / "full.jsonl"
        _run(data, full)
        written = full.read_bytes()
        assert written.endswith(b"\n") or n == 0
        rows = [_strict(line) for line in written.split(b"\n")[:-1]]
        assert [r["imgdiff"]["line"] for r in rows] == list(range(1, n + 1))
        assert all(r["imgdiff"]["status"] in ("ok", "error") for r in rows)
        for r in rows:  # what the examples exercised (pytest --hypothesis-show-statistics)
            event(r["imgdiff"].get("error", "ok").split(" (")[0][:40])
        # torn at any byte (a crash mid-write), then resumed
        torn = folder / "torn.jsonl"
        torn.write_bytes(written[: int(cut * len(written))])
        record = folder / ".full.jsonl.run.json"  # the run record, written with the first result line
        assert record.exists() == (n > 0)
        if n:
            (folder / ".torn.jsonl.run.json").write_bytes(record.read_bytes())
        _run(data, torn, resume=True)
        assert torn.read_bytes() == written
        # stopped after any line, then resumed
        part = folder / "part.jsonl"
        _run(data, part, limit=stop)
        _run(data, part, resume=True)
        assert part.read_bytes() == written


def test_an_unforeseen_failure_fails_its_record_only(tmp_path):
    good = {"image_path1": "a.jpg", "image_path2": "b.jpg", "objects1": ["cat"], "objects2": ["dog"]}
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(json.dumps({**good, "id": k, **({"objects1": ["boom"]} if k == "b" else {})}) for k in "abcd") + "\n")
    _run(data, tmp_path / "out.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["imgdiff"]["status"] for r in rows] == ["ok", "error", "ok", "ok"]
    assert rows[1]["imgdiff"]["error"] == "unexpected failure (ZeroDivisionError: a bug on one record); please report it with the record"
