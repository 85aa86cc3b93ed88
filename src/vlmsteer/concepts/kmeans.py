"""K-Means in bounded memory: Lloyd iterations over row chunks in torch (CPU or GPU).

Features stay in their own dtype (float16 stores are read as float16); each chunk of rows is
cast to float32 on the device and measured from a point near the data (so a large component
that every row shares costs no precision), distances come from one matmul per chunk
(``|x|² − 2·x·cᵀ + |c|²``), and per-cluster sums accumulate in float64. Memory beyond the
features: a chunk of ``CHUNK_VALUES`` floats, and Lloyd's bounds, norms and labels, 4 (K + 4)
bytes a row (for float16 features of width D, 2 (K + 4) / D of their size). scikit-learn's
``KMeans`` stays the reference (``benchmarks/kmeans.py`` compares the two from the same
initial centres).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

CHUNK_VALUES = 2 ** 23  # values per row chunk (32 MiB as float32), whatever the hidden size


@dataclass
class KMeansResult:
    centers: np.ndarray  # (K, D) float64
    labels: np.ndarray  # (N,) int64
    inertia: float  # sum of squared distances to the nearest centre
    n_iter: int


def _chunks(features, chunk: int | None = None):
    """``(start, stop)`` row ranges of about ``CHUNK_VALUES`` values each (or ``chunk`` rows)."""
    n = len(features)
    chunk = chunk or max(256, CHUNK_VALUES // max(1, features.shape[1]))
    for start in range(0, n, chunk):
        yield start, min(n, start + chunk)


class _RowReader:
    """Reads row chunks as float32 tensors into one reused buffer: converting float16 into
    memory that is already mapped is about 6 × faster than into a fresh tensor each time."""

    def __init__(self, features, device):
        self.features, self.device = features, torch.device(device)
        self.buffer: torch.Tensor | None = None

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        return self._fill(self.features[start:stop])

    def rows(self, index: np.ndarray) -> torch.Tensor:
        """The rows at ``index`` (sorted row numbers)."""
        return self._fill(np.asarray(self.features[index]))

    def _fill(self, rows) -> torch.Tensor:
        if self.buffer is None or len(self.buffer) < len(rows):
            self.buffer = torch.empty(rows.shape, dtype=torch.float32, device=self.device)
        with warnings.catch_warnings():  # a read-only memory map: torch warns about writes, and only reads here
            warnings.simplefilter("ignore", UserWarning)
            source = torch.from_numpy(np.ascontiguousarray(rows))
        return self.buffer[:len(rows)].copy_(source)


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=1) ** 2  # ~10 × faster than (x * x).sum(1) on CPU


def _sq_distances(x: torch.Tensor, c: torch.Tensor, x_sq: torch.Tensor | None = None,
                  c_sq: torch.Tensor | None = None) -> torch.Tensor:
    """``(len(x), len(c))`` squared distances as ``|x|² − 2·x·cᵀ + |c|²`` (one matmul); pass
    the squared norms when they are already known."""
    x_sq = _sq_norms(x) if x_sq is None else x_sq
    c_sq = _sq_norms(c) if c_sq is None else c_sq
    return torch.addmm(c_sq[None], x, c.T, alpha=-2.0).add_(x_sq[:, None])


def nearest(features, centers: np.ndarray | torch.Tensor, chunk: int | None = None,
            device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """For each row: the index of its nearest centre and the squared distance to it."""
    c64 = torch.as_tensor(np.asarray(centers), dtype=torch.float64, device=device)
    origin = c64.mean(0)  # measured from the centres' mean: see the module's docstring
    c, origin = (c64 - origin).float(), origin.float()
    c_sq = _sq_norms(c)
    labels = np.empty(len(features), dtype=np.int64)
    dist = np.empty(len(features), dtype=np.float64)
    read = _RowReader(features, device)
    for start, stop in _chunks(features, chunk):
        x = read(start, stop).sub_(origin)
        best, idx = _sq_distances(x, c, c_sq=c_sq).min(1)
        labels[start:stop] = idx.cpu().numpy()
        dist[start:stop] = best.clamp_min(0).double().cpu().numpy()
    return labels, dist


def distances(features, centers: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """``(N, K)`` Euclidean distances, computed chunk by chunk (only the output is N × K)."""
    c = torch.as_tensor(np.asarray(centers), dtype=torch.float64)
    out = np.empty((len(features), len(c)), dtype=np.float64)
    for start, stop in _chunks(features, chunk):
        x = torch.from_numpy(np.array(features[start:stop], dtype=np.float64))
        out[start:stop] = _sq_distances(x, c).clamp_min(0).sqrt().numpy()
    return out


def kmeans_plus_plus(features, k: int, seed: int = 0, sample: int | None = None,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """Greedy k-means++ centres (``2 + log k`` candidates per step, as scikit-learn) chosen
    from a seeded sample of at most ``sample`` rows (default ``max(10000, 100 k)``)."""
    rng = np.random.default_rng(seed)
    n = len(features)
    rows = np.sort(rng.choice(n, size=min(n, sample or max(10000, 100 * k)), replace=False))
    picked = np.empty((len(rows), features.shape[1]), dtype=np.float32)
    for a in range(0, len(rows), 1024):  # gathered in pieces: no float16 copy of the whole sample
        picked[a:a + 1024] = features[rows[a:a + 1024]]
    x = torch.from_numpy(picked).to(device)
    x_sq = _sq_norms(x)
    trials = 2 + int(np.log(k))
    first = int(rng.integers(len(x)))
    centers = [first]
    closest = _sq_distances(x, x[first:first + 1], x_sq, x_sq[first:first + 1])[:, 0].clamp_min(0)
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # fewer distinct points than k: take unused rows in order
            unused = [i for i in range(len(x)) if i not in centers]
            centers.append(unused[0])
            continue
        probs = (closest / total).double().cpu().numpy()
        cand = rng.choice(len(x), size=trials, p=probs / probs.sum())
        cx = x[torch.from_numpy(cand).to(device)]
        d = _sq_distances(x, cx, x_sq).T.clamp_min(0)  # (trials, rows); the tall matmul is the fast one
        new = torch.minimum(closest[None], d)
        best = int(new.sum(1).argmin())
        centers.append(int(cand[best]))
        closest = new[best]
    return x[centers].double().cpu().numpy()


def _sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """A seeded random sample of at most ``size`` of ``n`` row numbers, sorted (reads in order)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))


def faiss_kmeans(features, init: np.ndarray, seed: int = 0, points_per_centre: int = 256, n_iter: int = 25,
                 device: str | torch.device = "cpu") -> KMeansResult:
    """faiss's K-Means (``pip install "vlmsteer[faiss]"``, or faiss-gpu for ``device`` cuda):
    ``n_iter`` Lloyd iterations from ``init`` on a seeded sample of ``points_per_centre`` rows
    per centre (faiss's own default), then every row labelled by :func:`nearest`. Only the
    sample is copied to float32; the centres are the sample's, not a fixed point of all rows."""
    from vlmsteer.extras import require

    faiss = require("faiss", "the faiss K-Means backend")
    faiss.omp_set_num_threads(torch.get_num_threads())
    n, k = len(features), len(init)
    x = np.ascontiguousarray(features[_sample_rows(n, points_per_centre * k, seed)], dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=n_iter, seed=seed, max_points_per_centroid=len(x), verbose=False,
                      gpu=torch.device(device).type == "cuda")
    km.train(x, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    centers = km.centroids.astype(np.float64)
    labels, dist = nearest(features, centers, device=device)
    return KMeansResult(centers, labels, float(dist.sum()), n_iter)


def _remaining(gain: float, last_gain: float) -> float:
    """What Lloyd would still gain if each pass gained the same fraction of the previous pass's
    gain as this one did (a geometric tail: Lloyd's gains shrink about geometrically near a
    fixed point): ``gain · r / (1 − r)``, ``r = gain / last_gain``."""
    r = gain / last_gain
    return gain * r / (1.0 - r)


def lloyd(features, init: np.ndarray, max_iter: int = 300, tol: float = 1e-4, inertia_tol: float = 1e-4,
          chunk: int | None = None, device: str | torch.device = "cpu", sample: int | None = None,
          seed: int = 0) -> KMeansResult:
    """Lloyd iterations from ``init``, chunked over rows. Stops when no label changes, when the
    centres move less than ``tol`` × the mean per-dimension variance of the data
    (scikit-learn's rule), or when both the last pass's gain and what the passes would still
    gain, extrapolated from the last two gains as a geometric tail, are below ``inertia_tol`` of
    the inertia (0 turns this off: then the iterations are scikit-learn's). The last gain alone
    bounds nothing: a slow descent gains little per pass and much in all.

    With more than twice ``sample`` rows (default ``max(10000, 100 K)``; 0: never), the centres
    first converge on a seeded random sample of that many rows, held in memory: the long first
    moves cost a sample's passes instead of the data's, and the passes over all rows, which
    then start near their end, are few and mostly skipped by the bounds. The result is Lloyd's
    on all rows, from those centres (``n_iter`` counts the passes over all rows).

    The first pass measures every row against every centre (one matmul per row chunk). Later
    passes keep Elkan's bounds (an upper bound on each row's distance to its centre, a lower
    bound on its distance to each centre) and measure only the rows whose bounds no longer
    prove their label, so the labels are Lloyd's while settled rows are skipped. (In high
    dimensions the bounds prove little while the centres still move far: the early passes
    measure nearly every row.) Cluster sums, squared norms and counts are updated by the rows
    that change cluster, and the inertia comes from them.
    """
    n, dim = features.shape
    sample = max(10000, 100 * len(init)) if sample is None else sample
    if sample and n > 2 * sample:
        init = lloyd(features[_sample_rows(n, sample, seed)], init, max_iter, tol, inertia_tol, chunk, device,
                     sample=0).centers
    state = _LloydState(features, init, chunk, device)
    previous, threshold, last_gain = float("inf"), 0.0, float("inf")
    current = False  # do the labels belong to the current centres?
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        changed = state.full_pass() if n_iter == 1 else state.bounded_pass()
        if n_iter > 1 and (state.counts < 0.5).any():  # an empty cluster takes the farthest row: measure all
            changed += state.full_pass()
        current = True
        if n_iter == 1:  # mean variance = (mean |x|² − |mean x|²) / D, over every row
            mean = state.sums.sum(0) / n  # the clusters' sums add up to the column sums
            threshold = tol * float(state.row_sq.double().mean() - (mean * mean).sum()) / dim
        inertia = state.inertia()
        if changed == 0:  # strict convergence: the centres are already the means
            break
        gain = previous - inertia
        if inertia_tol > 0 and (gain <= 0 or gain < inertia_tol * inertia and gain < last_gain < float("inf")
                                and _remaining(gain, last_gain) < inertia_tol * inertia):
            break  # the labels and inertia of this pass belong to the current centres
        previous, last_gain = inertia, gain
        empty = state.move_centres()
        current = False
        if state.shift <= threshold and not empty:
            break
    if not current:  # label the rows for the centres returned (the bounds skip most of them)
        state.bounded_pass()
    return state.result(n_iter)


class _LloydState:
    """Labels, Elkan bounds and per-cluster sums of one Lloyd run (see :func:`lloyd`)."""

    def __init__(self, features, init: np.ndarray, chunk: int | None, device):
        n, dim = features.shape
        self.features, self.chunk, self.device = features, chunk, device
        self.read = _RowReader(features, device)
        # rows and centres are measured from the mean of the first chunk of rows, near the data's
        # own: the ``|x|² − 2·x·c + |c|²`` distances and the inertia from sums then lose no
        # precision to a large shared component (hidden states have one)
        self.origin = self.read(*next(_chunks(features, chunk))).double().mean(0)
        self._origin32 = self.origin.float()
        self._set_centres(torch.as_tensor(np.asarray(init), dtype=torch.float64, device=device) - self.origin)
        k = len(self.centers)
        self.labels = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.upper = torch.zeros(n, dtype=torch.float32, device=device)  # >= distance to own centre
        self.lower = torch.zeros(n, k, dtype=torch.float32, device=device)  # <= distance to each centre
        self.row_sq = torch.empty(n, dtype=torch.float32, device=device)
        self.sums = torch.zeros(k, dim, dtype=torch.float64, device=device)
        self.sq_sums = torch.zeros(k, dtype=torch.float64, device=device)
        self.counts = torch.zeros(k, dtype=torch.float64, device=device)
        self.far_row, self.shift, self.first = 0, 0.0, True
        self._part = torch.empty(k, dim, dtype=torch.float32, device=device)

    def _set_centres(self, centers: torch.Tensor) -> None:
        self.centers, self.c32 = centers, centers.float()
        self.c_sq = _sq_norms(self.c32)

    def _read(self, start: int, stop: int) -> torch.Tensor:
        return self.read(start, stop).sub_(self._origin32)

    def result(self, n_iter: int) -> KMeansResult:
        return KMeansResult((self.centers + self.origin).cpu().numpy(), self.labels.cpu().numpy(),
                            self.inertia(), n_iter)

    def _measure(self, x: torch.Tensor, rows) -> torch.Tensor:
        """Distances from rows ``x`` (row numbers ``rows``) to every centre; their bounds and
        labels updated. Returns the labels."""
        d = _sq_distances(x, self.c32, self.row_sq[rows], self.c_sq).clamp_min_(0).sqrt_()
        near, idx = d.min(1)
        self.lower[rows], self.upper[rows] = d, near
        return idx

    def _add(self, idx: torch.Tensor, x: torch.Tensor, sq: torch.Tensor, sign: float) -> None:
        """Add (sign 1) or remove (sign -1) rows ``x`` to / from clusters ``idx``."""
        self.sums.add_(self._part.zero_().index_add_(0, idx, x).double(), alpha=sign)
        self.sq_sums.index_add_(0, idx, sq.double(), alpha=sign)
        self.counts.add_(torch.bincount(idx, minlength=len(self.counts)).double(), alpha=sign)

    def full_pass(self) -> int:
        """Measure every row against every centre; rebuild the sums. Returns how many rows changed."""
        for total in (self.sums, self.sq_sums, self.counts):
            total.zero_()
        changed, far = 0, -1.0
        for start, stop in _chunks(self.features, self.chunk):
            x = self._read(start, stop)
            if self.first:
                self.row_sq[start:stop] = _sq_norms(x)
            idx = self._measure(x, slice(start, stop))
            changed += int((idx != self.labels[start:stop]).sum())
            self.labels[start:stop] = idx
            self._add(idx, x, self.row_sq[start:stop], 1.0)
            top = int(self.upper[start:stop].argmax())
            if float(self.upper[start + top]) > far:
                far, self.far_row = float(self.upper[start + top]), start + top
        self.first = False
        return changed

    def bounded_pass(self) -> int:
        """Measure only the rows whose bounds allow a closer centre (Elkan's tests), first
        against their own centre alone, then the few still in doubt against all; move changed
        rows' sums. Returns how many rows changed."""
        c = self.centers
        half_between = (torch.cdist(c, c) / 2).float()  # a row nearer its centre than half the gap stays
        changed = 0
        for start, stop in _chunks(self.features, self.chunk):
            labels, upper = self.labels[start:stop], self.upper[start:stop]
            # a centre j can be nearer only if upper > max(lower bound to j, half the gap to j)
            bar = torch.maximum(self.lower[start:stop], half_between[labels])
            bar[torch.arange(len(bar), device=bar.device), labels] = float("inf")
            # small slack: rows within rounding of a tie are measured, never skipped
            rows = ((upper * (1 + 1e-5))[:, None] > bar).any(1).nonzero().flatten()
            if len(rows) == 0:
                continue
            if len(rows) > (stop - start) // 2:  # most of the chunk: measure it whole
                rows, x = torch.arange(stop - start, device=self.device), self._read(start, stop)
            else:  # the exact distance to the own centre settles most of them
                x = self.read.rows(start + rows.cpu().numpy()).sub_(self._origin32)
                own = labels[rows]
                exact = (self.row_sq[start + rows] - 2 * (x * self.c32[own]).sum(1) + self.c_sq[own])
                exact = exact.clamp_min_(0).sqrt_()
                self.upper[start + rows] = exact
                self.lower[start + rows, own] = exact
                doubt = ((exact * (1 + 1e-5))[:, None] > bar[rows]).any(1)
                rows, x = rows[doubt], x[doubt]
                if len(rows) == 0:
                    continue
            idx = self._measure(x, start + rows)
            moved = (idx != labels[rows]).nonzero().flatten()
            if len(moved):
                changed += len(moved)
                sq = self.row_sq[start + rows[moved]]
                self._add(labels[rows[moved]], x[moved], sq, -1.0)
                self._add(idx[moved], x[moved], sq, 1.0)
                self.labels[start + rows[moved]] = idx[moved]
        return changed

    def inertia(self) -> float:
        """Σ |x − c(x)|² over rows, from the per-cluster sums: Σ |x|² − 2 c·S + n |c|²."""
        c = self.centers
        return float((self.sq_sums - 2 * (c * self.sums).sum(1) + self.counts * (c * c).sum(1)).sum().clamp_min(0))

    def move_centres(self) -> list[int]:
        """Centres to their clusters' means (an empty cluster to the farthest row); loosen the
        bounds by how far each centre moved. Returns the empty clusters."""
        new = self.sums / self.counts.clamp_min(1)[:, None]
        empty = (self.counts < 0.5).nonzero().flatten().tolist()
        for j in empty:
            new[j] = torch.as_tensor(np.asarray(self.features[self.far_row], dtype=np.float64),
                                     device=self.device) - self.origin
        moved = torch.linalg.vector_norm(new - self.centers, dim=1).float()
        self.shift = float((moved.double() ** 2).sum())
        self._set_centres(new)
        self.upper += moved[self.labels]
        self.lower.sub_(moved).clamp_min_(0)
        return empty
