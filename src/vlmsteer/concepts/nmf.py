"""Non-negative factorisations behind the dictionary contract: Semi-NMF (real concepts,
non-negative codes) and NMF (scikit-learn, for non-negative features)."""

from __future__ import annotations

import numpy as np

from vlmsteer.concepts.dictionary import ConceptDictionary, check_features
from vlmsteer.concepts.kmeans_concepts import KMeansConcepts
from vlmsteer.mapped import float64_rows
from vlmsteer.errors import VlmsteerError


class SemiNMFConcepts(ConceptDictionary):
    """Semi-NMF (Ding, Li & Jordan 2010): ``Z ≈ V·U`` with ``V >= 0`` and ``U`` real-valued,
    by multiplicative updates from a K-Means start.

    The features are read in float64 row chunks: what is held is ``V`` (N × K) and D × K
    products, never a float64 copy of ``Z`` (two passes over the rows per iteration; the
    error comes from ``Vᵀ·Z`` without one)."""

    method = "semi_nmf"
    CHUNK_ROWS = 2048

    def __init__(self, k: int = 20, seed: int = 0, n_iter: int = 200, tol: float = 1e-6):
        super().__init__(k, seed)
        self.n_iter = n_iter
        self.tol = tol

    @staticmethod
    def _update_codes(zu, u, v, n_iter, tol=0.0):
        """Multiplicative updates of codes ``v`` (N × K) for fixed ``u``, given ``zu = Z·Uᵀ``."""
        eps = 1e-12
        uut = u @ u.T
        uut_p, uut_n = (np.abs(uut) + uut) / 2, (np.abs(uut) - uut) / 2
        zu_p, zu_n = (np.abs(zu) + zu) / 2, (np.abs(zu) - zu) / 2
        for _ in range(n_iter):
            new = v * np.sqrt((zu_p + v @ uut_n + eps) / (zu_n + v @ uut_p + eps))
            done = np.abs(new - v).max() <= tol
            v = new
            if done:
                break
        return v

    def _project(self, z, u) -> np.ndarray:
        """``Z·Uᵀ`` (N × K)."""
        out = np.empty((len(z), len(u)))
        for i, rows in float64_rows(z, self.CHUNK_ROWS):
            out[i:i + len(rows)] = rows @ u.T
        return out

    def _gram(self, z, v) -> np.ndarray:
        """``Vᵀ·Z`` (K × D)."""
        vtz = np.zeros((v.shape[1], z.shape[1]))
        for i, rows in float64_rows(z, self.CHUNK_ROWS):
            vtz += v[i:i + len(rows)].T @ rows
        return vtz

    @staticmethod
    def _error(z_sq: float, v, u, vtz) -> float:
        """``‖Z − V·U‖`` from ``‖Z‖²``, ``Vᵀ·Z`` and ``V`` (no pass over Z):
        ‖Z‖² − 2⟨VᵀZ, U⟩ + ⟨VᵀV, U·Uᵀ⟩."""
        return float(np.sqrt(max(0.0, z_sq - 2 * float((vtz * u).sum()) + float(((v.T @ v) * (u @ u.T)).sum()))))

    @staticmethod
    def _solve(v, vtz) -> np.ndarray:
        """The least-squares ``U`` of ``V·U ≈ Z`` from the normal equations (K × K)."""
        return np.linalg.lstsq(v.T @ v, vtz, rcond=None)[0]

    def fit(self, features):
        z = check_features(features, self.k, dtype=None)
        km = KMeansConcepts(self.k, self.seed, hard=True).fit(z)
        v = km.encode(z) + 0.2
        z_sq = sum(float((rows ** 2).sum()) for _, rows in float64_rows(z, self.CHUNK_ROWS))
        vtz, prev = self._gram(z, v), np.inf
        for _ in range(self.n_iter):
            u = self._solve(v, vtz)
            v = self._update_codes(self._project(z, u), u, v, 1)
            vtz = self._gram(z, v)  # for this iterate's error and the next U
            err = self._error(z_sq, v, u, vtz)
            if abs(prev - err) <= self.tol * max(1.0, err):
                break
            prev = err
        self.components_ = self._solve(v, vtz)
        self.reconstruction_err_ = self._error(z_sq, v, self.components_, vtz)
        return self

    def encode(self, features):
        self._check_fitted()
        z = np.asarray(features)
        v = np.full((len(z), self.k), 1.0 / self.k)
        return self._update_codes(self._project(z, self.components_), self.components_, v, 500, tol=1e-9)

    def params(self):
        return {**super().params(), "n_iter": self.n_iter, "tol": self.tol}


class NMFConcepts(ConceptDictionary):
    """NMF (scikit-learn): only for non-negative features."""

    method = "nmf"

    def fit(self, features):
        from sklearn.decomposition import NMF

        z = check_features(features, self.k)
        if (z < 0).any():
            raise VlmsteerError("NMF needs non-negative features; residual-stream features have negative "
                                "values — use kmeans, pca or semi_nmf")
        self._nmf = NMF(n_components=self.k, random_state=self.seed, init="nndsvda", max_iter=500).fit(z)
        self.components_ = self._nmf.components_.astype(np.float64)
        self.reconstruction_err_ = float(self._nmf.reconstruction_err_)
        return self

    def encode(self, features):
        self._check_fitted()
        from sklearn.decomposition import non_negative_factorization

        z = np.asarray(features, dtype=np.float64)
        if (z < 0).any():
            raise VlmsteerError("NMF needs non-negative features")
        w, _, _ = non_negative_factorization(z, H=self.components_, n_components=self.k, init="custom",
                                             update_H=False, max_iter=500, random_state=self.seed)
        return w
