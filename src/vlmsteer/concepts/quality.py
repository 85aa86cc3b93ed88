"""How well a dictionary describes features it was not fitted on, as the SAE literature reports
it: fraction of variance unexplained, L0, dead and dense concept fractions — for every method,
so K-Means, PCA, NMF and SAEs compare on the same held-out rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vlmsteer.concepts.dictionary import ConceptDictionary, Rows

CHUNK_ROWS = 4096
DENSE = 0.1  # a concept active on more than this fraction of rows is "dense"


@dataclass
class DictionaryQuality:
    n_rows: int
    fvu: float  # Σ‖x − x̂‖² / Σ‖x − mean‖² over the rows
    l0: float  # mean number of concepts decode uses per row
    dead: float  # fraction of concepts active on none of the rows
    dense: float  # fraction of concepts active on more than DENSE of the rows

    def to_dict(self) -> dict:
        return asdict(self)


def held_out_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held_out)`` row numbers, sorted: a seeded ``fraction`` of ``n`` rows held out
    (at least one row on each side where ``fraction`` > 0)."""
    if not 0 <= fraction < 1:
        from vlmsteer.errors import VlmsteerError

        raise VlmsteerError(f"the held-out fraction must be in [0, 1), got {fraction}", "held-out")
    size = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(n * fraction)))
    held = np.sort(np.random.default_rng([seed, n]).choice(n, size=size, replace=False))
    train = np.setdiff1d(np.arange(n), held)
    return train, held


def dictionary_quality(dictionary: ConceptDictionary, features, rows: np.ndarray | None = None) -> DictionaryQuality:
    """FVU, L0, dead and dense fractions of ``dictionary`` on ``features[rows]`` (all rows by
    default), read chunk by chunk."""
    view = Rows(features, np.arange(len(features)) if rows is None else rows)
    n = len(view)
    sse, total, sq_sum, l0 = 0.0, np.zeros(view.shape[1]), 0.0, 0.0
    fired = np.zeros(dictionary.k, dtype=np.int64)
    for a in range(0, n, CHUNK_ROWS):
        x = np.asarray(view[a:a + CHUNK_ROWS], dtype=np.float64)
        codes = dictionary.encode(x)
        sse += float(((x - dictionary.decode(codes)) ** 2).sum())
        total += x.sum(0)
        sq_sum += float((x ** 2).sum())
        active = dictionary.active(codes)
        l0 += float(active.sum())
        fired += active.sum(0)
    variance = sq_sum - float((total ** 2).sum()) / max(1, n)
    return DictionaryQuality(n_rows=n, fvu=sse / variance if variance > 0 else float("nan"),
                             l0=l0 / max(1, n), dead=float((fired == 0).mean()),
                             dense=float((fired > DENSE * n).mean()))
