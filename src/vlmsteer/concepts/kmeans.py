"""K-Means in bounded memory: Lloyd iterations over row chunks in torch (CPU or GPU).

Features stay in their own dtype (float16 stores are read as float16); each chunk of rows is
cast to float32 on the device, distances come from one matmul per chunk
(``|x|² − 2·x·cᵀ + |c|²``), and per-cluster sums accumulate in float64. Peak memory beyond the
features is ``chunk × (D + K)`` floats, whatever N is. scikit-learn's ``KMeans`` stays the
reference (``benchmarks/kmeans.py`` compares the two from the same initial centres).
"""

from __future__ import annotations

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


def _rows(features, start: int, stop: int, device) -> torch.Tensor:
    # a writable copy of the chunk in its own dtype (features may be a read-only float16 memory
    # map), converted to float32 by torch (several times faster than numpy's float16 cast)
    return torch.from_numpy(np.array(features[start:stop])).to(device=device, dtype=torch.float32)


def _sq_distances(x: torch.Tensor, c: torch.Tensor, x_sq: torch.Tensor | None = None,
                  c_sq: torch.Tensor | None = None) -> torch.Tensor:
    """``(len(x), len(c))`` squared distances as ``|x|² − 2·x·cᵀ + |c|²`` (one matmul); pass
    the squared norms when they are already known."""
    x_sq = (x * x).sum(1) if x_sq is None else x_sq
    c_sq = (c * c).sum(1) if c_sq is None else c_sq
    return x_sq[:, None] - 2.0 * (x @ c.T) + c_sq[None]


def nearest(features, centers: np.ndarray | torch.Tensor, chunk: int | None = None,
            device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """For each row: the index of its nearest centre and the squared distance to it."""
    c = torch.as_tensor(np.asarray(centers), dtype=torch.float32, device=device)
    c_sq = (c * c).sum(1)
    labels = np.empty(len(features), dtype=np.int64)
    dist = np.empty(len(features), dtype=np.float64)
    for start, stop in _chunks(features, chunk):
        x = _rows(features, start, stop, device)
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
    x_sq = (x * x).sum(1)
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
        d = _sq_distances(cx, x, c_sq=x_sq).clamp_min(0)
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

    Row norms are computed once; per-cluster sums change only for rows that change cluster.
    """
    n, dim = features.shape
    k = len(init)
    f64 = dict(dtype=torch.float64, device=device)
    # scikit-learn's tolerance, tol × the mean per-dimension variance, from a seeded sample
    # of rows (a tolerance needs no more precision than that)
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, 20000), replace=False))
    z = torch.from_numpy(np.asarray(features[sample], dtype=np.float64))
    threshold = tol * float(z.var(0, unbiased=False).mean())
    del z
    row_sq = None  # row norms, filled during the first pass

    centers = torch.as_tensor(np.asarray(init), **f64)
    labels = torch.full((n,), -1, dtype=torch.int64, device=device)
    sums, counts = torch.zeros(k, dim, **f64), torch.zeros(k, **f64)
    previous = float("inf")
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        c32 = centers.float()
        c_sq = (c32 * c32).sum(1)
        changed, inertia = 0, 0.0
        far_value, far_row = -1.0, 0
        for start, stop in _chunks(features, chunk):
            x = _rows(features, start, stop, device)
            if row_sq is None:
                row_sq = torch.empty(n, dtype=torch.float32, device=device)
            if n_iter == 1:
                row_sq[start:stop] = (x * x).sum(1)
            best, idx = _sq_distances(x, c32, row_sq[start:stop], c_sq).min(1)
            inertia += float(best.clamp_min(0).sum(dtype=torch.float64))
            old = labels[start:stop]
            moved = (idx != old).nonzero().flatten()
            if len(moved):
                changed += len(moved)
                was, now = old[moved], idx[moved]
                # signed one-hot: +1 at the new cluster, -1 at the old one (none on the first pass)
                delta = torch.zeros(len(moved), k, dtype=torch.float32, device=device)
                delta[torch.arange(len(moved), device=device), now] = 1.0
                had = was >= 0
                delta[torch.arange(len(moved), device=device)[had], was[had]] = -1.0
                sums += (delta.T @ x[moved]).double()  # one matmul per chunk
                counts += delta.sum(0).double()
                labels[start:stop] = idx
            top = int(best.argmax())
            if float(best[top]) > far_value:
                far_value, far_row = float(best[top]), start + top
        if changed == 0:  # strict convergence: the centres are already the means
            break
        if inertia_tol > 0 and previous - inertia < inertia_tol * inertia:
            break
        previous = inertia
        new = sums / counts.clamp_min(1)[:, None]
        empty = (counts < 0.5).nonzero().flatten().tolist()
        for j in empty:  # an empty cluster takes the row farthest from its centre
            new[j] = torch.as_tensor(np.asarray(features[far_row], dtype=np.float64), device=device)
        shift = float(((new - centers) ** 2).sum())
        centers = new
        if shift <= threshold and not empty:
            break
    labels_np, dist = nearest(features, centers, chunk, device)
    return KMeansResult(centers.cpu().numpy(), labels_np, float(dist.sum()), n_iter)
