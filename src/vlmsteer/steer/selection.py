"""The paper's selection metric for discovering meaningful steering directions.

For a candidate vector: count how often each (normalized) answer occurs with and without
steering; take the ``top_n`` answers by relative increase — by default the paper's,
relative to the answer's own baseline count, ``(steered - base) / (base + 1)``
(``relative_to="base"``, which favours answers that were rare and rarely lets a common answer
such as "no" rank), or the change of the answer's share of all answers,
``100 * (steered - base) / N`` (``"total"``, which lets common answers compete); split
those increases into two groups with 1-D k-means (k = 2, solved exactly); the group
with the larger total is the primary (target) answers; the score is the gap between the
mean increase of the primary and of the secondary group. Vectors are ranked by score.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vlmsteer.errors import VlmsteerError
from vlmsteer.data.text import normalize_answer


@dataclass
class Selection:
    name: str
    score: float
    primary: list[str]
    increases: dict[str, float] = field(default_factory=dict)  # top answers -> relative increase
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # answer -> (base, steered)

    def to_dict(self) -> dict:
        return {"name": self.name, "score": self.score, "primary": self.primary, "increases": self.increases,
                "counts": {k: list(v) for k, v in self.counts.items()}}


def two_means_1d(values: list[float]) -> tuple[list[int], list[int]]:
    """Exact 1-D k-means with k = 2: the split of the sorted values with least within-group
    squared error. Returns index lists (high group, low group)."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    if len(values) < 2:
        return order, []
    v = np.array([values[i] for i in order], dtype=np.float64)
    best, cut = np.inf, 1
    for c in range(1, len(v)):
        sse = ((v[:c] - v[:c].mean()) ** 2).sum() + ((v[c:] - v[c:].mean()) ** 2).sum()
        if sse < best - 1e-12:
            best, cut = sse, c
    return order[:cut], order[cut:]


RELATIVE_TO = ("base", "total")


def selection_score(base_answers: list[str], steered_answers: list[str], top_n: int = 5,
                    name: str = "vector", relative_to: str = "base") -> Selection:
    """``relative_to="base"``: an answer's increase is ``(steered - base) / (base + 1)`` (favours
    answers that were rare); ``"total"``: ``100 * (steered - base) / N``, the change in the
    answer's share of all answers in points (lets common answers such as "no" compete)."""
    if relative_to not in RELATIVE_TO:
        raise VlmsteerError(f"unknown relative_to {relative_to!r}; choose base or total")
    base = Counter(normalize_answer(a) for a in base_answers)
    steered = Counter(normalize_answer(a) for a in steered_answers)
    answers = sorted(set(base) | set(steered))
    n = max(1, len(base_answers))
    rel = {a: ((steered[a] - base[a]) / (base[a] + 1.0) if relative_to == "base" else
               100.0 * (steered[a] - base[a]) / n) for a in answers}
    top = sorted(answers, key=lambda a: (-rel[a], a))[:top_n]
    vals = [rel[a] for a in top]
    high, low = two_means_1d(vals)
    groups = [[top[i] for i in high], [top[i] for i in low]]
    totals = [sum(rel[a] for a in g) for g in groups]
    primary, secondary = (groups[0], groups[1]) if totals[0] >= totals[1] else (groups[1], groups[0])
    mean = (lambda g: float(np.mean([rel[a] for a in g])) if g else 0.0)
    return Selection(name=name, score=mean(primary) - mean(secondary), primary=primary,
                     increases={a: rel[a] for a in top}, counts={a: (base[a], steered[a]) for a in top})


def rank(selections: list[Selection], distinct: bool = False) -> list[Selection]:
    """Best first; with ``distinct``, only the best vector per set of primary answers (many
    concept pairs share a target concept and steer the same way)."""
    ranked = sorted(selections, key=lambda s: (-s.score, s.name))
    if not distinct:
        return ranked
    seen, out = set(), []
    for s in ranked:
        key = tuple(sorted(s.primary))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out
