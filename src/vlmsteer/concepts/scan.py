"""One pass over the rows for what a concept report needs of every row: its concept, each
concept's size and each concept's most activating rows — the rows encoded once, in chunks
(never N × K codes at once)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Scan:
    assign: np.ndarray  # (N,) each row's concept (−1: a sparse code with no active latent)
    sizes: np.ndarray  # (K,) rows per concept (assigned; for sparse autoencoders: active on)
    top_rows: np.ndarray  # (K, n) row numbers, highest activation first (ties: the earlier row)
    top_values: np.ndarray  # (K, n) their activations


def scan_rows(dictionary, features, top_n: int = 0) -> Scan:
    """:class:`Scan` of ``features`` by a fitted concept dictionary, in one encoding pass (chunks
    of about 2²⁴ code values)."""
    n, k = len(features), dictionary.k
    assign = np.empty(n, dtype=np.int64)
    sizes = np.zeros(k, dtype=np.int64)
    vals, rows = torch.empty((k, 0), dtype=torch.float64), torch.empty((k, 0), dtype=torch.int64)
    step = int(np.clip(2 ** 24 // max(1, k), 64, 4096))
    for a in range(0, n, step):
        x = np.asarray(features[a:a + step])
        codes = np.asarray(dictionary.encode(x))
        chunk = dictionary.assign_codes(codes, x)
        assign[a:a + len(x)] = chunk
        sizes += dictionary.count_codes(codes, chunk)
        if top_n:  # a running top-n per concept; a stable sort keeps earlier rows first among ties
            vals = torch.cat([vals, torch.from_numpy(codes.astype(np.float64, copy=False)).T], 1)
            rows = torch.cat([rows, torch.arange(a, a + len(x)).expand(k, -1)], 1)
            order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, :top_n]
            vals, rows = vals.gather(1, order), rows.gather(1, order)
    return Scan(assign, sizes, rows.numpy(), vals.numpy())
