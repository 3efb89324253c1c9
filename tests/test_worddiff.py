"""The caption step's word difference: difflib.Differ's lines exactly, in bounded time."""

from __future__ import annotations

import difflib
import random
import time

import pytest

from imgdiff_onnx import PairInput
from imgdiff_onnx.engine.captions import caption_words
from imgdiff_onnx.engine.worddiff import WordDiffTooComplex, differ_lines

VOCAB = ["a", "the", "cat", "cats", "dog", "dogs", "plane", "planes", "plate", "boat", "boats", "coat", "sky", "skies", "sea",
         "in", "on", "of", "flying", "sailing", "flies", "alone", "red", "reds", "bed", "be", "", "ça", "naïve", "日本",
         "x", "xy", "abcdefgh", "abcdefgx", "abcdefxx", "colour", "color", "grey", "gray"]  # fmt: skip


def _differ(a: list[str], b: list[str]) -> list[str]:
    return [line for line in difflib.Differ().compare(a, b) if not line.startswith("? ")]


def _edited(rng: random.Random, a: list[str], edits: int) -> list[str]:
    b = list(a)
    for _ in range(edits):
        op = rng.random()
        if b and op < 0.4:
            b[rng.randrange(len(b))] = rng.choice(VOCAB)
        elif b and op < 0.6:
            del b[rng.randrange(len(b))]
        else:
            b.insert(rng.randint(0, len(b)), rng.choice(VOCAB))
    return b


def _cases(seed: int, count: int):
    rng = random.Random(seed)
    for k in range(count):
        kind = k % 6
        n = rng.randint(0, 60)
        if kind == 0:  # random words from a small vocabulary: many near-identical and repeated words
            yield [rng.choice(VOCAB) for _ in range(n)], [rng.choice(VOCAB) for _ in range(rng.randint(0, 60))]
        elif kind == 1:  # near-identical captions
            a = [rng.choice(VOCAB) for _ in range(n)]
            yield a, _edited(rng, a, rng.randint(0, 6))
        elif kind == 2:  # repetitive
            w1, w2 = rng.sample(VOCAB, 2)
            yield ["a", w1] * rng.randint(1, 40), ["a", w2] * rng.randint(1, 40)
        elif kind == 3:  # random letter strings (many ratios near the 0.74/0.75 cut-offs)
            def word():
                return "".join(rng.choice("abcde") for _ in range(rng.randint(0, 6)))
            yield [word() for _ in range(n)], [word() for _ in range(rng.randint(0, 60))]
        elif kind == 4:  # through the caption splitter: punctuation, double spaces, unicode
            text = lambda m: " ".join(rng.choice(VOCAB + ["", "Plane,", "SKY!", "x-ray"]) for _ in range(m)) + "."  # noqa: E731
            yield caption_words(text(n)), caption_words(text(rng.randint(0, 60)))
        else:  # long, distinct words (difflib still finishes)
            words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 8))) for _ in range(300)]
            yield words[: rng.randint(50, 150)], words[150 : 150 + rng.randint(50, 150)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_lines_as_difflib_on_generated_caption_pairs(seed):
    for a, b in _cases(seed, 700):
        assert differ_lines(a, b) == _differ(a, b), (a, b)


def test_same_lines_as_difflib_on_long_repetitive_captions_that_difflib_finishes():
    a, b = ("a cat " * 120).split(), ("a dog " * 110 + "a cat").split()
    assert differ_lines(a, b) == _differ(a, b)


def test_long_repetitive_captions_finish_fast():
    # difflib takes minutes on these (cubic): 2,000 words each
    a, b = ("a cat " * 1000).split(), ("a dog " * 1000).split()
    started = time.perf_counter()
    lines = differ_lines(a, b)
    assert time.perf_counter() - started < 5  # the benchmark-grade bound is < 1 s; CI machines vary
    assert lines.count("- cat") == 1000 and lines.count("+ dog") == 1000 and lines.count("  a") == 1000


def test_work_budget_gives_a_record_error_not_a_hang(tiny_models, monkeypatch):
    with pytest.raises(WordDiffTooComplex, match="more than 100 steps.*objects1/objects2"):
        differ_lines(("a cat " * 300).split(), ("a dog " * 300).split(), budget=100)
    from imgdiff_onnx import DifferenceAreaGenerator, PairFailure
    from imgdiff_onnx.engine import worddiff

    from .conftest import PAIR1, PAIR2

    monkeypatch.setattr(worddiff, "DEFAULT_BUDGET", 100)
    engine = DifferenceAreaGenerator(tiny_models)
    long_pair = PairInput(PAIR1, PAIR2, "a cat " * 300, "a dog " * 300, key="long")
    short_pair = PairInput(PAIR1, PAIR2, "A plane in the sky.", "A boat in the sky.", key="short")
    failed, ok = engine.process_many([long_pair, short_pair], pairs_per_batch=2)
    assert isinstance(failed, PairFailure) and "more than 100 steps" in failed.error and failed.key == "long"
    assert not isinstance(ok, PairFailure) and ok.objects1 == ["plane"]


def test_caption_step_uses_the_exact_word_difference():
    from imgdiff_onnx.engine.captions import objects_from_captions

    assert objects_from_captions("A plane in the sky flying alone.", "A boat in the ocean sailing alone.") == (["plane", "sky"], ["boat", "ocean"])
    long1, long2 = "a cat " * 1000, "a dog " * 1000
    started = time.perf_counter()
    objects1, objects2 = objects_from_captions(long1, long2)
    assert time.perf_counter() - started < 5
    assert objects1 == ["cat"] * 1000 and objects2 == ["dog"] * 1000
