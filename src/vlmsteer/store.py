"""A sharded, resumable feature store: ``.npy`` shards (memory-mapped reads) + JSON.

Layout::

    store/manifest.json                 model, layers, selector, dataset, dtype, shard list
    store/shard-00000.json              per-sample records of shard 0
    store/shard-00000.layer-12.npy      (n, hidden) features of layer 12 for shard 0
    ...

Every file is written to a temporary name and renamed, and a shard is listed in the
manifest only once all its files exist, so a killed run leaves a readable store and a
rerun resumes after the last complete shard. Only the manifest is forced to disk (one fsync
per shard); a resumed writer checks every listed shard and redoes any that a power loss
left short. A writer holds an exclusive lock on
``store/.lock`` (released when it finishes or its process dies), so two runs cannot write
one store. Readers refuse a store whose extraction did not finish unless asked to accept
a partial one, and name the file when a shard is corrupt.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from vlmsteer.data.filters import Filter, as_filter
from vlmsteer.data.identity import regular_file
from vlmsteer.errors import VlmsteerError, input_error
from vlmsteer.layers import resolve_layer
from vlmsteer.mapped import take_rows
from vlmsteer.outputs import atomic_write, atomic_write_json, differences, fingerprint, lock_file, make_folder

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _layer_file(shard: int, layer: int) -> str:
    return f"shard-{shard:05d}.layer-{layer}.npy"


def _records_file(shard: int) -> str:
    return f"shard-{shard:05d}.json"


def _lock(path: Path):
    """An exclusive lock on ``path/.lock``, released when the writer finishes or its process dies."""
    return lock_file(path / ".lock", "this store")


class StoreWriter:
    """Appends complete shards to a store; resumes an existing store with the same header.

    Use it as a context manager (or call :meth:`finish` / :meth:`close`) so its lock is released.
    """

    def __init__(self, path: str | Path, header: dict[str, Any]):
        self.path = Path(path)
        make_folder(self.path)
        self._lock = _lock(self.path)
        try:
            self._open(header)
        except BaseException:
            self.close()
            raise

    def _open(self, header: dict[str, Any]) -> None:
        mpath = self.path / MANIFEST
        if mpath.exists():
            manifest = _read_manifest(mpath)
            old, new = _compared(manifest["header"]), _compared(header)
            if old != new:
                diff = differences(old, new)
                detail = "; ".join(f"{k}: {_short(_get(old, k))} here, {_short(_get(new, k))} now" for k in diff[:3])
                raise VlmsteerError(f"{self.path}: a store made with other settings is already here; it differs in "
                                    f"{', '.join(diff)} ({detail}); choose another output folder")
            self.manifest = manifest
            self._drop_damaged_shards()
        else:
            foreign = [p.name for p in self.path.iterdir() if p.name != ".lock"]
            if foreign:
                raise VlmsteerError(f"{self.path}: holds other files ({', '.join(sorted(foreign)[:3])}), not a feature "
                                    "store; choose another output folder")
            self.manifest = {"format_version": FORMAT_VERSION, "header": header, "shards": [], "complete": False}
            atomic_write_json(mpath, self.manifest)

    def _drop_damaged_shards(self) -> None:
        """Keep the listed shards up to the first whose files are missing or short (data the
        system had not written to disk when it lost power); the rest are extracted again."""
        reader = FeatureStore(path=self.path, manifest=self.manifest)
        for i, shard in enumerate(self.manifest["shards"]):
            try:
                reader._read_records(shard)
                for layer in reader.layers:
                    reader._load_shard(shard, layer)
            except VlmsteerError as exc:
                log.warning("%s; extracting shard %d and later ones again", exc, i)
                self.manifest["shards"] = self.manifest["shards"][:i]
                self.manifest["complete"] = False
                atomic_write_json(self.path / MANIFEST, self.manifest)
                return

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
            atomic_write(self.path / _layer_file(index, layer), lambda f, a=arr: np.save(f, a), durable=False,
                         kept="the store keeps its complete shards; rerun to resume")
        atomic_write_json(self.path / _records_file(index), records, durable=False, indent=None)  # C encoder
        self.manifest["shards"].append({"index": index, "n": n})
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def finish(self, **summary: Any) -> None:
        self.manifest["complete"] = True
        self.manifest["summary"] = summary
        atomic_write_json(self.path / MANIFEST, self.manifest)
        self.close()

    def close(self) -> None:
        """Release the store's lock (the store stays resumable if not finished)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @staticmethod
    def merge_parts(path: str | Path, parts: list[str], header: dict[str, Any]) -> bool:
        """Write ``path/manifest.json`` listing the shards of the complete part stores
        ``path/<part>`` in order (a data-parallel run writes one part per rank); the shard files
        stay where they are. Returns False, writing nothing, while a part is unfinished."""
        path = Path(path)
        shards, found = [], 0
        for part in parts:
            mpath = path / part / MANIFEST
            if not mpath.exists():
                return False
            manifest = _read_manifest(mpath)
            if not manifest.get("complete"):
                return False
            shards += [{**s, "dir": part} for s in manifest["shards"]]
            found += int(manifest.get("summary", {}).get("found", 0))
        atomic_write_json(path / MANIFEST, {"format_version": FORMAT_VERSION, "header": header, "shards": shards,
                                            "complete": True, "summary": {"found": found,
                                                                          "total": sum(s["n"] for s in shards)},
                                            "parts": parts})
        return True

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# where the inputs were found (paths as given, the model's name): recorded, never compared,
# so the same model and data named by another path, or from another folder, resume the store
UNCOMPARED = ("model_id", "origin")


def _compared(header: dict) -> dict:
    return {k: v for k, v in header.items() if k not in UNCOMPARED}


def _get(obj: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def check_paired(a: "FeatureStore", b: "FeatureStore", what: str, same_model: bool = False,
                 same_samples: bool = False) -> None:
    """A one-line error when two stores that an analysis combines do not belong together: the
    token selector, mode and teacher-forced target must agree; ``same_model``: the model's
    weights too (a coarse vector's two sides); ``same_samples``: every sample both hold must
    have the same content (the fine-tuning shift compares two models on the same samples)."""
    if a.hidden_size != b.hidden_size:
        raise VlmsteerError(f"{a.path} and {b.path} have different hidden sizes ({a.hidden_size} vs {b.hidden_size}): "
                            f"they come from different models and cannot be combined for {what}")
    ha, hb = a.identity, b.identity
    keys = ["selector", "mode", "target"]
    diff = [k for k in keys if ha.get(k) != hb.get(k)]
    if same_model and (ha.get("model") or {}).get("weights") != (hb.get("model") or {}).get("weights"):
        diff.append("model weights")
    if diff:
        raise VlmsteerError(f"{a.path} and {b.path} cannot be combined for {what}: they were extracted with "
                            f"different {', '.join(diff)} ({_short(ha.get(diff[0].split()[0]))} vs "
                            f"{_short(hb.get(diff[0].split()[0]))})")
    if same_samples:
        digests = {r["id"]: r.get("digest") for r in b.records}
        for r in a.records:
            other = digests.get(r["id"])
            if other is not None and r.get("digest") is not None and other != r["digest"]:
                raise VlmsteerError(f"{a.path} and {b.path} cannot be combined for {what}: sample {r['id']!r} has "
                                    "different content in each (they were extracted from different datasets)")


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _regular(path: Path, what: str) -> Path:
    """``path``, refused in one line where it exists but is no regular file (a FIFO would block
    the read for ever); a missing one is left to the caller's own message."""
    if path.exists():
        regular_file(path, what)
    return path


def _read_manifest(path: Path) -> dict:
    try:
        m = json.loads(_regular(path, "store manifest").read_text())
    except json.JSONDecodeError as exc:
        raise input_error(path, f"malformed store manifest ({exc.msg})") from None
    if not isinstance(m, dict) or not isinstance(m.get("header"), dict) or not isinstance(m.get("shards"), list):
        raise input_error(path, "not a vlmsteer feature store manifest")
    for i, shard in enumerate(m["shards"]):
        part = shard.get("dir", "") if isinstance(shard, dict) else None
        if not (isinstance(shard, dict) and _count(shard.get("index")) and _count(shard.get("n"))
                and isinstance(part, str) and (part == "" or (part == Path(part).name and part not in (".", "..")))):
            raise input_error(path, f"malformed store manifest (shard {i}: an index, a count and, for a part, the "
                                    "name of a folder inside the store)")
    return m


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class FeatureStore:
    """Read a store: records, and memory-mapped ``(N, D)`` features per layer."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | Path, allow_partial: bool = False) -> "FeatureStore":
        """Open a store; one whose extraction did not finish is refused unless ``allow_partial``."""
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.exists():
            raise input_error(path, "not a feature store (no manifest.json)")
        store = cls(path=path, manifest=_read_manifest(mpath))
        if not store.complete and not allow_partial:
            total = store.header.get("n_samples")
            raise input_error(path, f"incomplete store ({len(store)} of {total if total is not None else '?'} "
                                    "samples: its extraction did not finish); rerun the extraction to complete "
                                    "it, or accept a partial store", "allow_partial")
        return store

    @property
    def header(self) -> dict:
        return self.manifest["header"]

    @property
    def identity(self) -> dict:
        """What made this store (model, data by content, selector, settings): its header without
        where the inputs were found."""
        return _compared(self.header)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity)

    @property
    def layers(self) -> list[int]:
        return list(self.header["layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.header["hidden_size"])

    @property
    def num_layers(self) -> int:
        """Decoder layers of the model the store was extracted from."""
        return int(self.header["num_layers"])

    def layer_index(self, layer: int) -> int:
        """A model layer (negative counts from the end) that this store holds, as an absolute index."""
        absolute = resolve_layer(layer, self.num_layers, f"the model of store {self.path}")
        if absolute not in self.layers:
            shown = f"{layer} (= {absolute})" if absolute != layer else str(layer)
            raise input_error(self.path, f"layer {shown} not in this store (layers: {', '.join(map(str, self.layers))})")
        return absolute

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def records(self) -> list[dict]:
        if not hasattr(self, "_records"):
            recs = []
            for s in self.manifest["shards"]:
                recs.extend(self._read_records(s))
            self._records = recs
        return self._records

    def _read_records(self, shard: dict) -> list[dict]:
        f = self.path / shard.get("dir", "") / _records_file(shard["index"])
        try:
            records = json.loads(_regular(f, "store shard").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise input_error(f, "store shard missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise input_error(f, f"corrupt store shard ({exc})") from None
        if not isinstance(records, list) or len(records) != shard["n"]:
            raise input_error(f, f"corrupt store shard (expected {shard['n']} records)")
        return records

    def __len__(self) -> int:
        return sum(s["n"] for s in self.manifest["shards"])

    def select(self, where: "Filter | str | Callable[[dict], bool] | None" = None,
               only_found: bool = True) -> np.ndarray:
        """Indices of records that pass ``where`` (a :class:`~vlmsteer.data.filters.Filter`, its
        text, or a predicate on the record) and, by default, where the word of interest occurred."""
        flt = as_filter(where)
        keep = flt.matches_record if isinstance(flt, Filter) else flt
        idx = [i for i, r in enumerate(self.records)
               if (not only_found or r.get("found", True)) and (keep is None or keep(r))]
        return np.asarray(idx, dtype=np.int64)

    def verify(self) -> "FeatureStore":
        """Read every records shard and every feature shard's header: a missing or corrupt
        file is a one-line error naming it, before any work starts."""
        _ = self.records
        for layer in self.layers:
            self.layer_arrays(layer)
        return self

    def layer_arrays(self, layer: int) -> list[np.ndarray]:
        layer = self.layer_index(layer)
        return [self._load_shard(s, layer) for s in self.manifest["shards"]]

    def _load_shard(self, shard: dict, layer: int) -> np.ndarray:
        f = self.path / shard.get("dir", "") / _layer_file(shard["index"], layer)
        try:
            arr = np.load(_regular(f, "store shard"), mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise input_error(f, "store shard missing") from None
        except (ValueError, OSError, EOFError) as exc:
            raise input_error(f, f"corrupt store shard ({str(exc).splitlines()[0]})") from None
        if arr.shape != (shard["n"], self.hidden_size):
            raise input_error(f, f"corrupt store shard (shape {arr.shape}, expected {(shard['n'], self.hidden_size)})")
        return arr

    def features(self, layer: int, indices: Iterable[int] | None = None,
                 where: "Filter | str | Callable[[dict], bool] | None" = None, only_found: bool = True,
                 dtype=np.float32) -> np.ndarray:
        """``(N, D)`` features of ``layer`` for the selected records (see :meth:`select`), as
        ``dtype`` (None: the store's own, e.g. float16 stays float16; one copy of the selected
        rows, read from memory-mapped shards)."""
        arrays = self.layer_arrays(layer)
        dtype = dtype or (arrays[0].dtype if arrays else np.float32)
        if indices is None:
            indices = self.select(where=where, only_found=only_found)
        indices = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), dtype=np.int64)
        if (len(arrays) == 1 and arrays[0].dtype == dtype and len(indices) == len(arrays[0])
                and (indices == np.arange(len(indices))).all()):
            return arrays[0]  # every row of one shard: the read-only memory map itself, no copy
        out = np.empty((len(indices), self.hidden_size), dtype=dtype)
        if len(indices) == 0:
            return out
        bounds = np.cumsum([0] + [a.shape[0] for a in arrays])
        shard_of = np.searchsorted(bounds, indices, side="right") - 1
        for s in np.unique(shard_of):
            rows = np.nonzero(shard_of == s)[0]
            out[rows] = take_rows(arrays[s], indices[rows] - bounds[s])  # (from the file: see take_rows)
        return out
