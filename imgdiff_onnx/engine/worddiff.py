"""`difflib.Differ().compare` on word lists, the same lines in bounded time.

The caption step (S2) of the original compares the two captions' word lists with
`difflib.Differ`. Differ's `_fancy_replace` searches every replace block for its best-matching
pair of non-identical lines (by `SequenceMatcher.ratio`), synchronises on it and recurses on
both sides: on long, repetitive word lists that is cubic (two 400-word captions take minutes).
Words repeat, and a ratio depends only on the two words, so this module computes each distinct
word pair's ratio once (after the same upper bounds difflib uses, vectorised) and finds each
synch point from per-word position lists. The choice of synch point is difflib's exactly: the
first pair in difflib's scan order (b outer, a inner) with the highest ratio above 0.74 when
that is at least 0.75, else the first identical pair, else a plain replace; ties, the plain
replace's order ("shorter block first") and every emitted line are the same. The `? ` hint
lines, which the caption step ignores, are not produced.

The outer `SequenceMatcher` is difflib's own. A budget on the synch-point search bounds the
time on any input; past it `WordDiffTooComplex` is raised (the record gets an error naming the
limit, and `objects1`/`objects2` in the record skip the caption step).
"""

from __future__ import annotations

import bisect
from collections import Counter
from difflib import SequenceMatcher

import numpy as np

from ..errors import RecordErrorBase

BEST_RATIO, CUTOFF = 0.74, 0.75  # difflib.Differ._fancy_replace's constants
DEFAULT_BUDGET = 5_000_000  # position look-ups in synch-point searches (about a few seconds at most)
# Bounds on the search for close word pairs, so that time and memory stay bounded on any captions
# (measured in benchmarks/ARCHIVE.md, "Caption step on hostile captions"):
MAX_WORD_PAIRS = 64_000_000  # distinct words of caption 1 x distinct words of caption 2 (8,000 x 8,000)
MAX_HISTOGRAM_CELLS = 8_000_000  # (distinct words) x (distinct characters) x (most repeats of a character in a word)
MAX_CLOSE_PAIRS = 1_000_000  # pairs above quick_ratio 0.74, each checked with SequenceMatcher in Python
BLOCK_CELLS = 1_000_000  # word pairs per block of the close-pair search


class WordDiffTooComplex(RecordErrorBase):
    """The captions' difference would take more than the work budget to compute exactly."""


def _too_complex(what: str) -> WordDiffTooComplex:
    return WordDiffTooComplex(f"the captions' word difference {what} (very long or unusual captions); "
                              "give objects1/objects2 in the record to skip the caption step")  # fmt: skip


def _close_candidates(a_words: list[str], b_words: list[str]) -> list[tuple[int, int]]:
    """(i, j) of every pair whose difflib quick_ratio (2 * common characters as multisets / total
    length) is above BEST_RATIO, computed in row blocks so that memory stays bounded.

    Common characters are sum over c of min(count_a(c), count_b(c)) = sum over k >= 1 of the
    number of characters that both words hold at least k times: one matrix product per k, exact
    in float32 for these small integers."""
    pairs = len(a_words) * len(b_words)
    if pairs > MAX_WORD_PAIRS:
        raise _too_complex(f"compares each of {len(a_words):,} distinct words with each of {len(b_words):,} "
                           f"({pairs:,} pairs; limit {MAX_WORD_PAIRS:,})")  # fmt: skip
    chars = sorted({c for w in a_words + b_words for c in w})
    index = {c: k for k, c in enumerate(chars)}
    levels = max((max(Counter(w).values(), default=0) for w in a_words + b_words), default=0)
    cells = (len(a_words) + len(b_words)) * max(1, len(chars)) * max(1, levels)
    if cells > MAX_HISTOGRAM_CELLS:
        raise _too_complex(f"needs a table of {cells:,} character counts (limit {MAX_HISTOGRAM_CELLS:,})")

    def at_least(words: list[str]) -> np.ndarray:
        """(levels, words, chars) float32: 1 where the word holds the character at least k+1 times."""
        counts = np.zeros((len(words), max(1, len(chars))), dtype=np.int32)
        for r, w in enumerate(words):
            for c, n in Counter(w).items():
                counts[r, index[c]] = n
        return np.stack([(counts > k).astype(np.float32) for k in range(max(1, levels))])

    ha, hb = at_least(a_words), at_least(b_words)
    la = np.array([len(w) for w in a_words], dtype=np.float64)
    lb = np.array([len(w) for w in b_words], dtype=np.float64)
    out: list[tuple[int, int]] = []
    step = max(1, BLOCK_CELLS // max(1, len(b_words)))
    for s in range(0, len(a_words), step):
        common = sum(ha[k, s : s + step] @ hb[k].T for k in range(ha.shape[0]))
        length = la[s : s + step, None] + lb[None, :]
        # quick_ratio > BEST_RATIO, computed as difflib does (float64; two empty words count 1.0)
        ratio = np.where(length > 0, 2.0 * common.astype(np.float64) / np.maximum(length, 1), 1.0)
        rows, cols = np.nonzero(ratio > BEST_RATIO)
        out.extend(zip((rows + s).tolist(), cols.tolist()))
        if len(out) > MAX_CLOSE_PAIRS:
            raise _too_complex(f"has more than {MAX_CLOSE_PAIRS:,} pairs of similar words to compare")
    return out


class _Positions:
    """Sorted positions of each word in one sequence; first occurrence inside a range."""

    def __init__(self, words: list[str]):
        self.of: dict[str, list[int]] = {}
        for k, w in enumerate(words):
            self.of.setdefault(w, []).append(k)

    def first(self, word: str, lo: int, hi: int) -> int | None:
        pos = self.of[word]
        k = bisect.bisect_left(pos, lo)
        return pos[k] if k < len(pos) and pos[k] < hi else None


class _Block:
    """Synch-point search inside replace blocks of one comparison."""

    def __init__(self, a: list[str], b: list[str], budget: int):
        self.a, self.b = a, b
        self.pa, self.pb = _Positions(a), _Positions(b)
        self.budget = self.limit = budget
        self.common = sorted(set(self.pa.of) & set(self.pb.of))
        # close pairs: distinct words whose ratio beats 0.74, by ratio (highest first)
        ua, ub = sorted(self.pa.of), sorted(self.pb.of)
        pairs = []
        for i, j in _close_candidates(ua, ub) if ua and ub else []:
            u, v = ua[i], ub[j]
            if u != v:
                r = SequenceMatcher(None, u, v).ratio()  # a-word first, as difflib's cruncher
                if r > BEST_RATIO:
                    pairs.append((r, u, v))
        pairs.sort(key=lambda t: -t[0])
        self.groups: list[tuple[float, list[tuple[str, str]]]] = []
        for r, u, v in pairs:
            if self.groups and self.groups[-1][0] == r:
                self.groups[-1][1].append((u, v))
            else:
                self.groups.append((r, [(u, v)]))

    def _spend(self, n: int) -> None:
        self.budget -= n
        if self.budget < 0:
            raise _too_complex(f"needs more than {self.limit:,} steps to compute exactly")

    def synch(self, alo: int, ahi: int, blo: int, bhi: int) -> tuple[int, int, bool] | None:
        """(i, j, identical) of difflib's synch pair in a[alo:ahi] x b[blo:bhi], or None (plain replace)."""
        for ratio, pairs in self.groups:
            if ratio < CUTOFF:
                break  # the best is in (0.74, 0.75): difflib treats that as no close pair
            best = None
            self._spend(2 * len(pairs))
            for u, v in pairs:
                j = self.pb.first(v, blo, bhi)
                if j is None:
                    continue
                i = self.pa.first(u, alo, ahi)
                if i is not None and (best is None or (j, i) < best):
                    best = (j, i)
            if best is not None:
                return best[1], best[0], False
        best = None
        self._spend(2 * len(self.common))
        for w in self.common:
            j = self.pb.first(w, blo, bhi)
            if j is None:
                continue
            i = self.pa.first(w, alo, ahi)
            if i is not None and (best is None or j < best[0]):
                best = (j, i)
        return None if best is None else (best[1], best[0], True)


def _replace(block: _Block, alo: int, ahi: int, blo: int, bhi: int, out: list[str]) -> None:
    """Differ._fancy_replace (with _fancy_helper and _plain_replace), iteratively."""
    a, b = block.a, block.b
    stack: list[tuple] = [("helper", alo, ahi, blo, bhi)]
    while stack:
        task = stack.pop()
        if task[0] == "lines":
            out.extend(task[1])
            continue
        _, alo, ahi, blo, bhi = task
        if alo >= ahi:
            out.extend("+ " + w for w in b[blo:bhi])
            continue
        if blo >= bhi:
            out.extend("- " + w for w in a[alo:ahi])
            continue
        found = block.synch(alo, ahi, blo, bhi)
        if found is None:
            if bhi - blo < ahi - alo:
                out.extend(["+ " + w for w in b[blo:bhi]] + ["- " + w for w in a[alo:ahi]])
            else:
                out.extend(["- " + w for w in a[alo:ahi]] + ["+ " + w for w in b[blo:bhi]])
            continue
        i, j, identical = found
        pair = ["  " + a[i]] if identical else ["- " + a[i], "+ " + b[j]]
        # run order: before the synch pair, the pair, after it (a stack pops last-pushed first)
        stack.append(("helper", i + 1, ahi, j + 1, bhi))
        stack.append(("lines", pair))
        stack.append(("helper", alo, i, blo, j))


def differ_lines(a: list[str], b: list[str], budget: int | None = None) -> list[str]:
    """`[l for l in difflib.Differ().compare(a, b) if not l.startswith("? ")]`, in bounded time
    (budget: synch-point search steps, default DEFAULT_BUDGET)."""
    budget = DEFAULT_BUDGET if budget is None else budget
    out: list[str] = []
    block: _Block | None = None
    for tag, alo, ahi, blo, bhi in SequenceMatcher(None, a, b).get_opcodes():
        if tag == "equal":
            out.extend("  " + w for w in a[alo:ahi])
        elif tag == "delete":
            out.extend("- " + w for w in a[alo:ahi])
        elif tag == "insert":
            out.extend("+ " + w for w in b[blo:bhi])
        else:
            if block is None:
                block = _Block(a, b, budget)
            _replace(block, alo, ahi, blo, bhi, out)
    return out
