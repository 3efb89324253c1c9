"""Which candidate of a pair passed which gate.

A pair that reaches crop scoring gets a ledger: its candidates' crop windows, which are
non-degenerate (D4), which are still in the running after each gate, and per window the scores
that decided (the evidence reported with each box). The gates decide per distinct window, so
duplicate candidates share one decision, as in the original.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ..band import BandTally
from .crops import Window


@dataclass
class CandidateLedger:
    windows: list[Window]  # per candidate, in candidate order
    valid: np.ndarray  # bool per candidate: the crop is non-empty on both images (D4)
    passed: np.ndarray = field(init=False)  # bool per candidate: passed every gate so far
    after: dict[str, int] = field(default_factory=dict)  # gate name -> candidates left after it, in gate order
    evidence: dict[Window, dict] = field(default_factory=dict)  # window -> "crop_similarity", "word1", "itm1", ...
    seconds: dict[str, float] = field(default_factory=dict)  # gate name -> this pair's share of its time
    diagnostics: dict[str, dict] = field(default_factory=dict)  # every score computed, only when asked for
    identical: int = 0  # windows whose two crops are the same pixels (crop similarity 1.0 without CLIP)
    band: BandTally = field(default_factory=BandTally.empty)  # scores computed / re-scored in fp32 (imgdiff_onnx.engine.band)

    def __post_init__(self) -> None:
        if len(self.windows) != len(self.valid):
            raise ValueError(f"{len(self.windows)} windows but {len(self.valid)} validity flags")  # internal: the engine builds both lists
        self.passed = np.asarray(self.valid, dtype=bool).copy()

    def pending(self) -> list[Window]:
        """Distinct windows of the candidates still in the running, first-seen order."""
        return list(dict.fromkeys(win for win, ok in zip(self.windows, self.passed) if ok))

    def decide(self, gate: str, passing: set[Window]) -> int:
        """Keep the candidates whose window is in `passing`; returns how many are left."""
        self.passed = np.array([ok and win in passing for win, ok in zip(self.windows, self.passed)], dtype=bool)
        self.after[gate] = int(self.passed.sum())
        return self.after[gate]

    def note(self, window: Window, **scores: object) -> None:
        self.evidence.setdefault(window, {}).update(scores)

    def survivors(self) -> list[int]:
        """Candidate indices that passed every gate, in candidate order."""
        return [int(k) for k in np.flatnonzero(self.passed)]

    def snapshot(self) -> "CandidateLedger":
        """An independent copy, to start scoring again from this point."""
        return copy.deepcopy(self)
