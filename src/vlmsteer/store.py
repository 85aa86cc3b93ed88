"""A sharded, resumable feature store: ``.npy`` shards (memory-mapped reads) + JSON.

Layout::

    store/manifest.json                 model, layers, selector, dataset, dtype, shard list
    store/shard-00000.json              per-sample records of shard 0
    store/shard-00000.layer-12.npy      (n, hidden) features of layer 12 for shard 0
    ...

Every file is written to a temporary name and renamed, and a shard is listed in the
manifest only once all its files exist, so a killed run leaves a readable store and a
rerun resumes after the last complete shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from vlmsteer.errors import VlmsteerError, input_error

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def _layer_file(shard: int, layer: int) -> str:
    return f"shard-{shard:05d}.layer-{layer}.npy"


def _records_file(shard: int) -> str:
    return f"shard-{shard:05d}.json"


class StoreWriter:
    """Appends complete shards to a store; resumes an existing store with the same header."""

    def __init__(self, path: str | Path, header: dict[str, Any]):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        mpath = self.path / MANIFEST
        if mpath.exists():
            manifest = _read_manifest(mpath)
            if manifest["header"] != header:
                diff = sorted(k for k in set(header) | set(manifest["header"])
                              if header.get(k) != manifest["header"].get(k))
                raise VlmsteerError(f"{self.path}: a store made with other options is already here "
                                    f"(differs in: {', '.join(diff)}); choose a new --out")
            self.manifest = manifest
        else:
            self.manifest = {"format_version": FORMAT_VERSION, "header": header, "shards": [], "complete": False}
            atomic_write_json(mpath, self.manifest)

    @property
    def samples_done(self) -> int:
        return sum(s["n"] for s in self.manifest["shards"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def write_shard(self, records: list[dict], features: dict[int, np.ndarray]) -> None:
        index = len(self.manifest["shards"])
        n = len(records)
        for layer, arr in features.items():
            if arr.shape[0] != n:
                raise ValueError("features and records differ in length")
            _atomic_write_bytes(self.path / _layer_file(index, layer), lambda f, a=arr: np.save(f, a))
        atomic_write_json(self.path / _records_file(index), records)
        self.manifest["shards"].append({"index": index, "n": n})
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def finish(self, **summary: Any) -> None:
        self.manifest["complete"] = True
        self.manifest["summary"] = summary
        atomic_write_json(self.path / MANIFEST, self.manifest)


def _read_manifest(path: Path) -> dict:
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise input_error(path, f"malformed store manifest ({exc.msg})") from None
    if not isinstance(m, dict) or "header" not in m or "shards" not in m:
        raise input_error(path, "not a vlmsteer feature store manifest")
    return m


@dataclass
class FeatureStore:
    """Read a store: records, and memory-mapped ``(N, D)`` features per layer."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.exists():
            raise input_error(path, "not a feature store (no manifest.json)")
        return cls(path=path, manifest=_read_manifest(mpath))

    @property
    def header(self) -> dict:
        return self.manifest["header"]

    @property
    def layers(self) -> list[int]:
        return list(self.header["layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.header["hidden_size"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def records(self) -> list[dict]:
        if not hasattr(self, "_records"):
            recs = []
            for s in self.manifest["shards"]:
                recs.extend(json.loads((self.path / _records_file(s["index"])).read_text()))
            self._records = recs
        return self._records

    def __len__(self) -> int:
        return sum(s["n"] for s in self.manifest["shards"])

    def select(self, where: Callable[[dict], bool] | None = None, only_found: bool = True,
               **equals: Any) -> np.ndarray:
        """Indices of records that pass ``where``, match every ``field=value`` (a value may be a
        list/set of accepted values) and, by default, where the word of interest occurred."""
        idx = []
        for i, r in enumerate(self.records):
            if only_found and not r.get("found", True):
                continue
            if any(not _matches(record_value(r, k), v) for k, v in equals.items()):
                continue
            if where is not None and not where(r):
                continue
            idx.append(i)
        return np.asarray(idx, dtype=np.int64)

    def layer_arrays(self, layer: int) -> list[np.ndarray]:
        if layer not in self.layers:
            raise VlmsteerError(f"{self.path}: layer {layer} not in this store (layers: "
                                f"{', '.join(map(str, self.layers))})")
        return [np.load(self.path / _layer_file(s["index"], layer), mmap_mode="r") for s in self.manifest["shards"]]

    def features(self, layer: int, indices: Iterable[int] | None = None, where: Callable[[dict], bool] | None = None,
                 only_found: bool = True, dtype=np.float32, **equals: Any) -> np.ndarray:
        """``(N, D)`` features of ``layer`` for the selected records (see :meth:`select`)."""
        arrays = self.layer_arrays(layer)
        if indices is None:
            indices = self.select(where=where, only_found=only_found, **equals)
        indices = np.asarray(list(indices), dtype=np.int64)
        out = np.empty((len(indices), self.hidden_size), dtype=dtype)
        if len(indices) == 0:
            return out
        bounds = np.cumsum([0] + [a.shape[0] for a in arrays])
        shard_of = np.searchsorted(bounds, indices, side="right") - 1
        for s in np.unique(shard_of):
            rows = np.nonzero(shard_of == s)[0]
            out[rows] = arrays[s][indices[rows] - bounds[s]]
        return out


def record_value(record: dict, key: str) -> Any:
    """A record field; ``"meta.style"`` reads nested fields."""
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _matches(value: Any, accepted: Any) -> bool:
    if isinstance(accepted, (list, tuple, set, frozenset)):
        return value in accepted
    return value == accepted
