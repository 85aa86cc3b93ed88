"""Dictionary learning behind one contract: ``Z ≈ V·U`` with K concepts (rows of
``components_``, each a D-vector) and activations ``V``.

Every method has ``fit(Z)``, ``encode(Z) -> V``, ``decode(V) -> Z``, ``components_`` and
``save``/``load`` (safetensors + JSON). Fitted attributes end in ``_``, as in scikit-learn.
Seeded and deterministic.
"""

from __future__ import annotations

import json
import mmap
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from safetensors.numpy import load_file, save_file

from vlmsteer.data.identity import regular_file
from vlmsteer.errors import VlmsteerError, input_error
from vlmsteer.mapped import take_rows


def float64_rows(z, chunk: int):
    """``(start, rows)`` over ``z`` in chunks of ``chunk`` rows, each as float64 (no float64
    copy of the whole array)."""
    for i in range(0, len(z), chunk):
        yield i, np.asarray(z[i:i + chunk], dtype=np.float64)


class LazyRows:
    """A 2-D array read on demand (by slice or index array), never copied whole: subclasses
    say its ``shape``, ``dtype`` and how rows are read (``__getitem__``), and release the pages
    of the files they read (``release``)."""

    ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def release(self) -> None:
        pass


class Rows(LazyRows):
    """The rows ``index`` of a 2-D array (memory-mapped features are never copied whole): a
    train or held-out split of a store."""

    def __init__(self, array, index):
        self.array, self.index = array, np.sort(np.asarray(index, dtype=np.int64))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.index), self.array.shape[1]

    @property
    def dtype(self):
        return self.array.dtype

    def __getitem__(self, key) -> np.ndarray:
        return take_rows(self.array, self.index[key])

    def release(self) -> None:
        release_pages(self.array)


def release_pages(z) -> None:
    """Unmap the pages a memory-mapped feature file brought into this process (they stay in the
    OS page cache, and come back on the next read): resident memory holds the rows in use, not
    every row read so far."""
    if isinstance(z, LazyRows):
        z.release()
        return
    mm = getattr(z, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


def check_features(z: np.ndarray, k: int, dtype=np.float64) -> np.ndarray:
    """``z`` as a 2-D array of ``dtype`` (None: keep its own floating dtype, no copy; a
    :class:`LazyRows` view stays a view), checked for NaN/inf chunk by chunk and for having at
    least ``k`` rows."""
    if isinstance(z, LazyRows) and (dtype is None or z.dtype == dtype):
        pass
    else:
        z = np.asarray(z) if dtype is None else np.asarray(z, dtype=dtype)
    if z.ndim != 2:
        raise VlmsteerError(f"features must be a 2-D (samples, dims) array, got shape {z.shape}")
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float32)
    bad = sum(int((~np.isfinite(z[i:i + 8192])).any(axis=1).sum()) for i in range(0, len(z), 8192))
    if bad:
        raise VlmsteerError(f"features contain NaN or infinite values ({bad} of {len(z)} samples)")
    if k < 1:
        raise VlmsteerError(f"the number of concepts must be >= 1, got {k}")
    if len(z) < k:
        raise VlmsteerError(f"{len(z)} samples are fewer than the {k} concepts asked for")
    return z


class ConceptDictionary(ABC):
    method: ClassVar[str]

    def __init__(self, k: int = 20, seed: int = 0):
        self.k = int(k)
        self.seed = int(seed)

    # -- the contract
    @abstractmethod
    def fit(self, features: np.ndarray) -> "ConceptDictionary": ...

    @abstractmethod
    def encode(self, features: np.ndarray) -> np.ndarray: ...

    def decode(self, activations: np.ndarray) -> np.ndarray:
        return np.asarray(activations, dtype=np.float64) @ self.components_

    def assign(self, features: np.ndarray) -> np.ndarray:
        """The most active concept of each sample (encoded in chunks)."""
        from vlmsteer.concepts.scan import scan_rows

        return scan_rows(self, features).assign

    def assign_codes(self, codes: np.ndarray, features: np.ndarray) -> np.ndarray:
        """:meth:`assign` of rows ``features`` whose codes are ``codes`` (already encoded)."""
        return np.asarray(codes).argmax(axis=1)

    def active(self, codes: np.ndarray) -> np.ndarray:
        """Which concepts ``decode`` uses for each row of ``codes`` (bool, like ``codes``)."""
        return np.asarray(codes) != 0

    def sizes(self, features) -> np.ndarray:
        """Per concept, how many rows it describes (the rows assigned to it; a sparse
        autoencoder's latent: the rows it is active on)."""
        from vlmsteer.concepts.scan import scan_rows

        return scan_rows(self, features).sizes

    def count_codes(self, codes: np.ndarray, assign: np.ndarray) -> np.ndarray:
        """:meth:`sizes` of rows with these codes and assignments."""
        return np.bincount(assign, minlength=self.k)

    def fit_encode(self, features: np.ndarray) -> np.ndarray:
        return self.fit(features).encode(features)

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise VlmsteerError(f"{type(self).__name__} is not fitted yet")

    # -- files
    def params(self) -> dict[str, Any]:
        return {"k": self.k, "seed": self.seed}

    def state(self) -> dict[str, np.ndarray]:
        return {"components_": self.components_}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """The fitted attributes from a saved :meth:`state`."""
        for k, v in state.items():
            setattr(self, k, v.astype(np.float64))

    def save(self, path: str | Path, **meta: Any) -> Path:
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"method": self.method, "params": self.params(), "meta": meta}
        save_file({k: np.ascontiguousarray(v) for k, v in self.state().items()}, str(path),
                  metadata={"vlmsteer_dictionary": json.dumps(header)})
        return path


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


def clustering_methods() -> dict[str, type[ConceptDictionary]]:
    """The methods that take ``-k`` concepts, by name."""
    from vlmsteer.concepts.nmf import NMFConcepts, SemiNMFConcepts

    return {c.method: c for c in (KMeansConcepts, PCAConcepts, SemiNMFConcepts, NMFConcepts)}


def methods() -> dict[str, type[ConceptDictionary]]:
    """Every dictionary method by name: the clustering ones, the sparse autoencoders, the crosscoder."""
    from vlmsteer.concepts.sae_methods import PAIRED_METHODS, SAE_METHODS

    return {**clustering_methods(), **SAE_METHODS, **PAIRED_METHODS}


def make_dictionary(method: str, k: int, seed: int = 0, **options: Any) -> ConceptDictionary:
    key = method.lower().replace("-", "_")
    known = methods()
    if key not in known:
        raise VlmsteerError(f"unknown concept method {method!r}; choose one of: {', '.join(known)}")
    return known[key](k=k, seed=seed, **options)


def load_dictionary(path: str | Path) -> tuple[ConceptDictionary, dict]:
    """A saved dictionary and the metadata saved with it."""
    from safetensors import safe_open

    path = Path(path)
    from vlmsteer.concepts.saelens import is_saelens_folder, load_saelens

    if is_saelens_folder(path):
        return load_saelens(path)
    regular_file(path, "dictionary file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = json.loads((f.metadata() or {})["vlmsteer_dictionary"])
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
        raise input_error(path, f"not a vlmsteer dictionary ({type(exc).__name__})") from None
    if not (isinstance(header, dict) and isinstance(header.get("method"), str)
            and isinstance(header.get("params"), dict) and isinstance(header.get("meta", {}), dict)):
        raise input_error(path, "not a vlmsteer dictionary (malformed metadata)")
    try:
        d = make_dictionary(header["method"], **header["params"])
    except TypeError as exc:
        raise input_error(path, f"not a vlmsteer dictionary ({exc})") from None
    components = state.get("components_")
    if components is None or components.ndim != 2 or len(components) != d.k:
        raise input_error(path, f"not a vlmsteer dictionary (expected {d.k} concept rows in 'components_')")
    try:
        d.set_state(state)
    except VlmsteerError as exc:
        raise input_error(path, f"not a vlmsteer dictionary ({exc})") from None
    return d, header.get("meta", {})
