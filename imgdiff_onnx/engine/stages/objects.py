"""S2: the object words of a pair, and the one place captions and object lists are checked."""

from __future__ import annotations

from collections.abc import Sequence

from ..captions import CaptionDifference, WordDiffTooComplex, caption_difference
from ...pairs import PairError, PairInput


def _words(key: str, name: str, value: object) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(w, str) for w in value):
        raise PairError(key, f"{name} must be a list of strings, got {type(value).__name__}")
    return list(value)


def pair_objects(pair: PairInput) -> tuple[list[str], list[str], CaptionDifference | None]:
    """(objects1, objects2, the caption difference they came from or None when given).

    Raises PairError naming the record when the fields are missing or of the wrong type, or the
    caption difference is too complex to compute exactly.
    """
    if pair.objects1 is not None or pair.objects2 is not None:
        if pair.objects1 is None or pair.objects2 is None:
            raise PairError(pair.key, "objects1 and objects2 must be given together")
        return _words(pair.key, "objects1", pair.objects1), _words(pair.key, "objects2", pair.objects2), None
    for name, caption in (("caption1", pair.caption1), ("caption2", pair.caption2)):
        if caption is None:
            raise PairError(pair.key, f"{name} is missing (give captions, or objects1 and objects2)")
        if not isinstance(caption, str):
            raise PairError(pair.key, f"{name} must be a string, got {type(caption).__name__}")
    try:
        diff = caption_difference(pair.caption1, pair.caption2)
    except WordDiffTooComplex as exc:
        raise PairError(pair.key, str(exc)) from None
    return diff.objects1, diff.objects2, diff
