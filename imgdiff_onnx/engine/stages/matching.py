"""S5: for each crop, the first of its words whose ITM probability is in range."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Scorer = Callable[[str, list[int]], np.ndarray]  # (word, the crops to score) -> their probabilities
Record = Callable[[int, str, float], None]  # (crop index, word, probability), for diagnostics


def first_matching_words(
    words_per_crop: list[list[str]], score: Scorer, lo: float, hi: float, record: Record | None = None
) -> list[tuple[str, float] | None]:
    """For each crop: (word, probability) of the first word of its list (in the list's order)
    whose probability lies in [lo, hi]; None when no word passes.

    In rounds: round r tries the r-th word of every crop still undecided, one scoring call per
    distinct word, so each crop tries its words in its own order and stops at the first that
    passes, as the original does, whatever other crops share the call.
    """
    matched: list[tuple[str, float] | None] = [None] * len(words_per_crop)
    rounds = max((len(words) for words in words_per_crop), default=0)
    for r in range(rounds):
        by_word: dict[str, list[int]] = {}
        for k, words in enumerate(words_per_crop):
            if matched[k] is None and r < len(words) and words[r] not in words[:r]:  # a repeated word cannot pass now
                by_word.setdefault(words[r], []).append(k)
        for word, idx in by_word.items():
            for k, p in zip(idx, score(word, idx)):
                if record is not None:
                    record(k, word, float(p))
                if lo <= float(p) <= hi:
                    matched[k] = (word, float(p))
    return matched
