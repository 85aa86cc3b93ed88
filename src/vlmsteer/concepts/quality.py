"""How well a dictionary describes features it was not fitted on, as the SAE literature reports
it: fraction of variance unexplained, L0, dead and dense concept fractions — for every method,
so K-Means, PCA, NMF and SAEs compare on the same held-out rows."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np

from vlmsteer.concepts.dictionary import ConceptDictionary
from vlmsteer.mapped import Rows, release_pages

CHUNK_VALUES = 1 << 23  # a chunk holds about this many feature (or code) values
DENSE = 0.1  # a concept active on more than this fraction of rows is "dense"


@dataclass
class DictionaryQuality:
    n_rows: int
    fvu: float  # Σ‖x − x̂‖² / Σ‖x − mean‖² over the rows
    l0: float  # mean number of concepts decode uses per row
    dead: float  # fraction of concepts active on none of the rows
    dense: float  # fraction of concepts active on more than DENSE of the rows
    fired: np.ndarray = field(repr=False)  # (K,) on how many rows each concept is active
    activation: np.ndarray = field(repr=False)  # (K,) each concept's codes summed over the rows

    def to_dict(self) -> dict:
        """The figures (not the per-concept arrays)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("fired", "activation")}

    def mean_active(self) -> np.ndarray:
        """Each concept's mean code where it is active."""
        return self.activation / np.maximum(self.fired, 1)


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


def dictionary_quality(dictionary: ConceptDictionary, features, rows: np.ndarray | None = None,
                       each: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None) -> DictionaryQuality:
    """FVU, L0, dead and dense fractions, and per concept its active rows and summed codes, of
    ``dictionary`` on ``features[rows]`` (all rows by default; ``features`` may be
    :class:`~vlmsteer.concepts.dictionary.LazyRows`), read a chunk at a time (about
    ``CHUNK_VALUES`` features or codes; the pages read are released after each).
    ``each(x, codes, reconstruction)`` sees every chunk (float64 rows and reconstruction)."""
    view = features if rows is None else Rows(features, rows)
    n, dim = view.shape
    step = int(np.clip(CHUNK_VALUES // max(dim, dictionary.k), 64, 4096))
    sse, total, sq_sum, l0 = 0.0, np.zeros(dim), 0.0, 0.0
    fired = np.zeros(dictionary.k, dtype=np.int64)
    activation = np.zeros(dictionary.k)
    for a in range(0, n, step):
        x = np.asarray(view[a:a + step], dtype=np.float64)
        codes = np.asarray(dictionary.encode(x))
        reconstruction = dictionary.decode(codes)
        error = x - reconstruction
        sse += float(np.einsum("ij,ij->", error, error))  # (no squared copy of the chunk)
        del error
        total += x.sum(0)
        sq_sum += float(np.einsum("ij,ij->", x, x))
        active = dictionary.active(codes)
        l0 += float(active.sum())
        fired += active.sum(0)
        activation += codes.sum(0, dtype=np.float64)
        if each is not None:
            each(x, codes, reconstruction)
        del x, codes, reconstruction, active
        release_pages(view)
    variance = sq_sum - float((total ** 2).sum()) / max(1, n)
    return DictionaryQuality(n_rows=n, fvu=sse / variance if variance > 0 else float("nan"),
                             l0=l0 / max(1, n), dead=float((fired == 0).mean()),
                             dense=float((fired > DENSE * n).mean()), fired=fired, activation=activation)
