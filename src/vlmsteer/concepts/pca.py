"""PCA behind the dictionary contract: concepts are principal directions of the centred features."""

from __future__ import annotations

import numpy as np

from vlmsteer.concepts.dictionary import ConceptDictionary, check_features
from vlmsteer.mapped import float64_rows


class PCAConcepts(ConceptDictionary):
    """PCA: concepts are the principal directions; activations are centred projections."""

    method = "pca"

    CHUNK_ROWS = 2048  # rows per float64 chunk (64 MiB at D = 4096)

    def fit(self, features):
        z = check_features(features, self.k, dtype=None)
        n, dim = z.shape
        if n <= dim:  # few rows: the SVD of the centred rows
            z = np.asarray(z, dtype=np.float64)
            self.mean_ = z.mean(0)
            _, s, vt = np.linalg.svd(z - self.mean_, full_matrices=False)
            variance = s[:self.k] ** 2 / max(1, n - 1)
        else:  # many rows: the D × D covariance, accumulated chunk by chunk (memory independent of N)
            self.mean_ = sum(rows.sum(0) for _, rows in float64_rows(z, self.CHUNK_ROWS)) / n
            cov = np.zeros((dim, dim))
            for _, rows in float64_rows(z, self.CHUNK_ROWS):
                c = rows - self.mean_
                cov += c.T @ c
            values, vectors = np.linalg.eigh(cov / max(1, n - 1))
            top = np.argsort(values)[::-1][:self.k]
            vt, variance = vectors[:, top].T, values[top].clip(0)
        # deterministic sign: the largest-magnitude entry of each component is positive
        signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
        self.components_ = (vt * signs[:, None])[:self.k]
        self.explained_variance_ = variance
        return self

    def encode(self, features):
        self._check_fitted()
        z = np.asarray(features)
        out = np.empty((len(z), len(self.components_)))
        for i, rows in float64_rows(z, self.CHUNK_ROWS):
            out[i:i + len(rows)] = (rows - self.mean_) @ self.components_.T
        return out

    def decode(self, activations):
        return np.asarray(activations, dtype=np.float64) @ self.components_ + self.mean_

    def state(self):
        return {"components_": self.components_, "mean_": self.mean_}
