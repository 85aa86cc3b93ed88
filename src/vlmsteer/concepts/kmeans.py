"""K-Means in bounded memory: Lloyd iterations over row chunks in torch (CPU or GPU).

Features stay in their own dtype (float16 stores are read as float16); each chunk of rows is
cast to float32 on the device, distances come from one matmul per chunk
(``|x|² − 2·x·cᵀ + |c|²``), and per-cluster sums accumulate in float64. Peak memory beyond the
features is ``chunk × (D + K)`` floats, whatever N is. scikit-learn's ``KMeans`` stays the
reference (``benchmarks/kmeans.py`` compares the two from the same initial centres).
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
        rows = self.features[start:stop]
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
    c = torch.as_tensor(np.asarray(centers), dtype=torch.float32, device=device)
    c_sq = _sq_norms(c)
    labels = np.empty(len(features), dtype=np.int64)
    dist = np.empty(len(features), dtype=np.float64)
    read = _RowReader(features, device)
    for start, stop in _chunks(features, chunk):
        x = read(start, stop)
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


def lloyd(features, init: np.ndarray, max_iter: int = 300, tol: float = 1e-4, inertia_tol: float = 1e-4,
          chunk: int | None = None, device: str | torch.device = "cpu") -> KMeansResult:
    """Lloyd iterations from ``init``, chunked over rows. Stops when no label changes, when the
    centres move less than ``tol`` × the mean per-dimension variance of the data
    (scikit-learn's rule), or when an iteration lowers the inertia by less than
    ``inertia_tol`` of it (0 turns this off: then the iterations are scikit-learn's).

    Row norms are computed once; each pass is one matmul and one index-add per row chunk.
    """
    n, dim = features.shape
    k = len(init)
    f64 = dict(dtype=torch.float64, device=device)
    row_sq = torch.empty(n, dtype=torch.float32, device=device)  # row norms, filled during the first pass
    col_sum = torch.zeros(dim, **f64)  # for scikit-learn's tolerance: tol × the mean per-dimension variance
    threshold = 0.0
    read = _RowReader(features, device)

    centers = torch.as_tensor(np.asarray(init), **f64)
    labels = torch.full((n,), -1, dtype=torch.int64, device=device)
    previous = float("inf")
    n_iter = 0
    current = False  # do ``labels`` hold every row's nearest of the current centres?
    for n_iter in range(1, max_iter + 1):
        c32 = centers.float()
        c_sq = _sq_norms(c32)
        changed, inertia = 0, 0.0
        far_value, far_row = -1.0, 0
        sums, counts = torch.zeros(k, dim, **f64), torch.zeros(k, **f64)
        part = torch.empty(k, dim, dtype=torch.float32, device=device)
        for start, stop in _chunks(features, chunk):
            x = read(start, stop)
            if n_iter == 1:
                row_sq[start:stop] = _sq_norms(x)
                col_sum += x.sum(0).double()
            best, idx = _sq_distances(x, c32, row_sq[start:stop], c_sq).min(1)
            inertia += float(best.clamp_min(0).sum(dtype=torch.float64))
            changed += int((idx != labels[start:stop]).sum())
            labels[start:stop] = idx
            # per-cluster sums of this chunk in float32 (an index_add, ~5 × cheaper than a one-hot
            # matmul), accumulated over chunks in float64
            sums += part.zero_().index_add_(0, idx, x).double()
            counts += torch.bincount(idx, minlength=k).double()
            top = int(best.argmax())
            if float(best[top]) > far_value:
                far_value, far_row = float(best[top]), start + top
        current = True
        if n_iter == 1:  # mean variance = (mean |x|² − |mean x|²) / D, over every row
            mean = col_sum / n
            threshold = tol * float(row_sq.double().mean() - (mean * mean).sum()) / dim
        if changed == 0:  # strict convergence: the centres are already the means
            break
        if inertia_tol > 0 and previous - inertia < inertia_tol * inertia:
            break  # the labels and inertia of this pass belong to the current centres
        previous = inertia
        new = sums / counts.clamp_min(1)[:, None]
        empty = (counts < 0.5).nonzero().flatten().tolist()
        for j in empty:  # an empty cluster takes the row farthest from its centre
            new[j] = torch.as_tensor(np.asarray(features[far_row], dtype=np.float64), device=device)
        shift = float(((new - centers) ** 2).sum())
        centers, current = new, False
        if shift <= threshold and not empty:
            break
    if current:  # no final pass needed: this pass assigned every row to the centres returned
        return KMeansResult(centers.cpu().numpy(), labels.cpu().numpy(), inertia, n_iter)
    labels_np, dist = nearest(features, centers, chunk, device)
    return KMeansResult(centers.cpu().numpy(), labels_np, float(dist.sum()), n_iter)
