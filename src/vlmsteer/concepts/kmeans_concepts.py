"""K-Means behind the dictionary contract: concepts are centroids (the paper's default method;
the algorithms and backends are in :mod:`vlmsteer.concepts.kmeans`)."""

from __future__ import annotations

import numpy as np

from vlmsteer.concepts.dictionary import ConceptDictionary, check_features
from vlmsteer.errors import VlmsteerError


class KMeansConcepts(ConceptDictionary):
    """K-Means: concepts are centroids; activation ``1 / (1 + distance)`` or one-hot (``hard``).

    ``backend``: ``"sklearn"`` (scikit-learn's ``KMeans`` with ``n_init`` restarts, float64:
    the reference), ``"torch"`` (greedy k-means++ then chunked float32 Lloyd on ``device``,
    ``n_init`` restarts: bounded memory, GPU-capable, see :mod:`vlmsteer.concepts.kmeans`),
    ``"faiss"`` (the same k-means++ start, faiss's Lloyd on a sample of 256 rows per concept:
    optional, ``vlmsteer[faiss]``), or ``"auto"``: sklearn while the features hold at most
    ``2**25`` values (≈ 32k × 1024), torch with one restart above.
    Assignment and encoding are chunked either way.
    """

    method = "kmeans"
    FIT_OPTIONS = ("backend", "device")
    AUTO_LIMIT = 2 ** 25

    def __init__(self, k: int = 20, seed: int = 0, hard: bool = False, n_init: int = 10, backend: str = "auto",
                 device: str = "cpu"):
        super().__init__(k, seed)
        if backend not in ("auto", "sklearn", "torch", "faiss"):
            raise VlmsteerError(f"unknown K-Means backend {backend!r}; choose auto, sklearn, torch or faiss")
        self.hard = hard
        self.n_init = n_init
        self.backend = backend
        self.device = device

    def chosen_backend(self, features) -> str:
        if self.backend != "auto":
            return self.backend
        return "sklearn" if features.shape[0] * features.shape[1] <= self.AUTO_LIMIT else "torch"

    def fit(self, features):
        z = check_features(features, self.k, dtype=None)
        if self.chosen_backend(z) == "sklearn":
            from sklearn.cluster import KMeans

            km = KMeans(n_clusters=self.k, random_state=self.seed, n_init=self.n_init).fit(np.asarray(z, np.float64))
            self.components_ = km.cluster_centers_.astype(np.float64)
            self.labels_ = km.labels_
            self.inertia_ = float(km.inertia_)
            return self
        from vlmsteer.concepts.kmeans import faiss_kmeans, kmeans_plus_plus, lloyd

        best = None
        for restart in range(max(1, self.n_init if self.backend in ("torch", "faiss") else 1)):
            init = kmeans_plus_plus(z, self.k, seed=self.seed + restart, device=self.device)
            run = faiss_kmeans if self.backend == "faiss" else lloyd
            result = run(z, init, device=self.device, seed=self.seed + restart)
            if best is None or result.inertia < best.inertia:
                best = result
        self.components_, self.labels_, self.inertia_ = best.centers, best.labels, best.inertia
        return self

    def encode(self, features):
        self._check_fitted()
        if self.hard:
            labels = self.assign(features)
            out = np.zeros((len(labels), self.k))
            out[np.arange(len(labels)), labels] = 1.0
            return out
        from vlmsteer.concepts.kmeans import distances

        return 1.0 / (1.0 + distances(features, self.components_))

    def assign(self, features):
        self._check_fitted()
        from vlmsteer.concepts.kmeans import nearest

        return nearest(features, self.components_)[0]

    def assign_codes(self, codes, features):
        return self.assign(features)  # the nearest centroid, exactly (not the argmax of rounded codes)

    def decode(self, activations):
        return self.active(activations).astype(np.float64) @ self.components_

    def active(self, codes):
        """One concept per row: the nearest centroid (what ``decode`` returns)."""
        a = np.asarray(codes)
        onehot = np.zeros(a.shape, dtype=bool)
        onehot[np.arange(len(a)), a.argmax(1)] = True
        return onehot

    def params(self):
        return {**super().params(), "hard": self.hard, "n_init": self.n_init, "backend": self.backend}
