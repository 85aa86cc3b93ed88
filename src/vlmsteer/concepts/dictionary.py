"""Dictionary learning behind one contract: ``Z ≈ V·U`` with K concepts (rows of
``components_``, each a D-vector) and activations ``V``.

Every method has ``fit(Z)``, ``encode(Z) -> V``, ``decode(V) -> Z``, ``components_`` and
``save``/``load`` (safetensors + JSON). Fitted attributes end in ``_``, as in scikit-learn.
Seeded and deterministic.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from safetensors.numpy import save_file

from vlmsteer.errors import VlmsteerError
from vlmsteer.mapped import LazyRows
from vlmsteer.outputs import safetensors_writes


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


def check_weights(weights: dict[str, np.ndarray], where) -> None:
    """Weights read from a file: each of a floating dtype and finite, or a one-line error naming
    the array (an integer array would be cast to a silent zero; a NaN empties every answer)."""
    for name, value in sorted(weights.items()):
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            raise VlmsteerError(f"{where}: {name} has dtype {value.dtype}; weights must be floating point")
        bad = int(value.size - np.isfinite(value).sum())
        if bad:
            raise VlmsteerError(f"{where}: {name} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or "
                                f"infinite) of {value.size}")


class ConceptDictionary(ABC):
    """The contract every concept method follows (register a subclass in
    :data:`vlmsteer.concepts.methods.CONCEPT_METHODS`)."""

    method: ClassVar[str]
    family: ClassVar[str] = "clustering"  # clustering (-k concepts), sae (--latents, --l0) or paired
    FIT_OPTIONS: ClassVar[tuple[str, ...]] = ()  # the run settings its constructor takes besides k and seed
    loads_only: ClassVar[bool] = False  # read from files only (SAELens's standard SAE), never fitted here

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
        with safetensors_writes(path):
            save_file({k: np.ascontiguousarray(v) for k, v in self.state().items()}, str(path),
                      metadata={"vlmsteer_dictionary": json.dumps(header)})
        return path
