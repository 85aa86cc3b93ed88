"""Features from other tools into a store, and out again.

``import_features`` turns an ``(N, D)`` array (``.npy``, read memory-mapped, or
``.safetensors`` with one tensor) and an ``N``-line records JSONL (one object per row, each
with a unique ``id``) into a store of one layer, shard by shard: nnsight, TransformerLens or
vLLM extractions then feed concepts, vectors and shift analysis. float16 stays float16.
``export_features`` writes a layer of a store back as one array and a records JSONL.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from vlmsteer.data.identity import check_unique_ids, regular_file
from vlmsteer.data.io import read_jsonl
from vlmsteer.errors import VlmsteerError, input_error
from vlmsteer.layers import resolve_layer
from vlmsteer.outputs import atomic_write, atomic_write_text, make_folder
from vlmsteer.store import FeatureStore, StoreWriter

def _load_array(path: Path) -> np.ndarray:
    regular_file(path, "features file")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise input_error(path, f"not a readable .npy array ({str(exc).splitlines()[0]})") from None
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise input_error(path, f"not a readable safetensors file ({str(exc).splitlines()[0]})") from None
        if len(tensors) != 1:
            raise input_error(path, f"holds {len(tensors)} tensors ({', '.join(list(tensors)[:4])}); "
                                    "keep one (N, D) feature tensor per file")
        arr = next(iter(tensors.values()))
    else:
        raise input_error(path, "features must be a .npy or .safetensors file")
    if arr.ndim != 2:
        raise input_error(path, f"features must be a 2-D (samples, hidden) array, got shape {arr.shape}")
    if arr.dtype not in (np.float16, np.float32, np.float64):
        raise input_error(path, f"features must be float16, float32 or float64, got {arr.dtype}")
    if len(arr) == 0 or arr.shape[1] == 0:
        raise input_error(path, f"holds no features (shape {arr.shape}): nothing to import")
    return arr


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def import_features(features: str | Path, records: str | Path, layer: int, out: str | Path, *,
                    num_layers: int | None = None, model_id: str | None = None, shard_size: int | None = None,
                    progress: bool = False) -> FeatureStore:
    """A one-layer store at ``out`` from an ``(N, D)`` array and ``N`` records (see the module
    docstring). ``layer`` is the model layer the features come from; ``num_layers`` the
    model's depth (default ``layer + 1``), so negative layers resolve as for extracted stores.
    ``shard_size`` None writes one shard, which readers memory-map without copying."""
    from vlmsteer.progress import progress_bar

    features, records = Path(features), Path(records)
    arr = _load_array(features)
    rows = read_jsonl(records)
    if len(rows) != len(arr):
        raise input_error(records, f"{len(rows)} records for {len(arr)} feature rows: give one record per row")
    ids = [r.get("id") for r in rows]
    if any(not isinstance(i, (str, int)) for i in ids):
        bad = next(n for n, i in enumerate(ids, 1) if not isinstance(i, (str, int)))
        raise input_error(records, f"line {bad} has no string 'id'")
    check_unique_ids([str(i) for i in ids], records, lambda i: f"line {i + 1}")
    if layer < 0 and num_layers is None:
        raise VlmsteerError(f"a negative layer ({layer}) needs the model's number of layers", "num_layers")
    num_layers = num_layers if num_layers is not None else layer + 1
    absolute = resolve_layer(layer, num_layers, "the imported features' model")
    dtype = np.float16 if arr.dtype == np.float16 else np.float32
    shard_size = shard_size or len(rows)
    header = {"model_id": model_id, "hidden_size": int(arr.shape[1]), "num_layers": int(num_layers),
              "layers": [absolute], "dtype": np.dtype(dtype).name, "shard_size": shard_size,
              "selector": None, "selector_description": "imported", "n_samples": len(rows),
              # the inputs by content (compared on resume), and where they were (recorded only)
              "imported": {"features_sha256": _file_sha256(features), "records_sha256": _file_sha256(records)},
              "origin": {"features": str(features.resolve()), "records": str(records.resolve())}}
    with StoreWriter(out, header) as writer, progress_bar("importing", len(rows), enabled=progress) as advance:
        start = writer.samples_done  # resumes after the last complete shard
        advance(start)
        for a in range(start, len(rows), shard_size):
            b = min(len(rows), a + shard_size)
            chunk = np.asarray(arr[a:b], dtype=dtype)
            bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
            if len(bad):  # (row numbers from 0, as the array counts them)
                more = f" and {len(bad) - 1} more row{'s' if len(bad) > 2 else ''}" if len(bad) > 1 else ""
                raise input_error(features, f"row {a + int(bad[0])}{more} contain{'s' if not more else ''} NaN or "
                                            "infinite values")
            writer.write_shard([{**r, "id": str(r["id"])} for r in rows[a:b]], {absolute: chunk})
            advance(b - a)
        writer.finish(found=len(rows))
    return FeatureStore.open(out)


def export_features(store: FeatureStore, layer: int, features: str | Path, records: str | Path) -> int:
    """Layer ``layer`` of ``store`` as one ``.npy`` / ``.safetensors`` array (the store's
    dtype) and its records as JSONL, row for row; returns the number of rows."""
    features, records = Path(features), Path(records)
    absolute = store.layer_index(layer)
    idx = np.arange(len(store))
    if features.suffix not in (".npy", ".safetensors"):
        raise input_error(features, "features must be a .npy or .safetensors file")
    if features.resolve() == records.resolve():
        raise input_error(features, "the features and the records would be the same file; give two files")
    arr = store.features(absolute, indices=idx, dtype=None)
    make_folder(features.parent)
    if features.suffix == ".npy":
        atomic_write(features, lambda f: np.save(f, arr), durable=False)
    else:
        from safetensors.numpy import save

        data = save({"features": np.ascontiguousarray(arr)},
                    metadata={"layer": str(absolute), "model_id": str(store.header.get("model_id")),
                              "store_fingerprint": store.fingerprint})
        atomic_write(features, lambda f: f.write(data), durable=False)
    make_folder(records.parent)
    atomic_write_text(records, "".join(json.dumps(store.records[i]) + "\n" for i in idx))
    return len(idx)
