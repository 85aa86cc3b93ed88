"""Reading input files with one-line errors that name the file and the problem, and writing
a run's outputs (``predictions.jsonl`` + ``metrics.json``)."""

from __future__ import annotations

import gc
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlmsteer.errors import input_error
from vlmsteer.outputs import atomic_write_json, atomic_write_text, make_folder


@contextmanager
def collector_paused():
    """Python's cyclic garbage collector paused while a dataset is read: it would otherwise
    re-scan every object built so far, again and again, although records hold no cycles.
    Measured on 103,161 VQAv2 questions: loading 4.1 -> 2.3 s. Restores the previous state,
    also on an error."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.exists():
        raise input_error(path, f"{what} not found")
    if path.is_dir():
        raise input_error(path, f"is a folder, not a {what}")
    if not path.is_file():  # a FIFO or a device would block or stream forever
        raise input_error(path, f"not a regular file; a {what} must be one")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise input_error(path, f"cannot read {what} ({exc.strerror or exc})") from None


def _decode(data: bytes, path: Path, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise input_error(path, f"not a UTF-8 text file (a {what} must be UTF-8)") from None


def _read_text(path: Path, what: str) -> str:
    return _decode(_read_bytes(path, what), path, what)


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise input_error(path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    return _parse_json(_read_text(path, what), path)


def read_json_and_digest(path: str | Path, what: str = "JSON file") -> tuple[Any, str]:
    """:func:`read_json` and the SHA-256 of the file's bytes, from one read (a run's identity
    names its inputs by content without reading a large file twice)."""
    import hashlib

    path = Path(path)
    data = _read_bytes(path, what)
    return _parse_json(_decode(data, path, what), path), hashlib.sha256(data).hexdigest()


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    rows = []
    for n, line in enumerate(_read_text(path, "JSONL file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise input_error(path, f"malformed JSON on line {n}: {exc.msg}") from None
        if not isinstance(row, dict):
            raise input_error(path, f"line {n} is not a JSON object")
        rows.append(row)
    return rows


def dataset_file(folder: str | Path, name: Any, source: str | Path, where: str,
                 allow_outside: bool = False) -> Path:
    """The file ``name`` (as written in the dataset file ``source``) inside the dataset folder
    ``folder``, as an absolute path with symlinks resolved. A name that leads outside the
    folder (``../``, an absolute path, or a symlink — of the file or of a folder on its way —
    pointing elsewhere) is refused unless ``allow_outside``."""
    if not isinstance(name, str) or not name.strip():
        raise input_error(source, f"{where}: the image path must be a non-empty string, got {name!r}")
    path = Path(name)
    return inside_folder(folder, path if path.is_absolute() else Path(folder) / path, source,
                         f"{where}: image path {name!r}", allow_outside)


def inside_folder(folder: str | Path, path: str | Path, source: str | Path, what: str,
                  allow_outside: bool = False) -> Path:
    """``path`` with symlinks resolved, checked to lie inside ``folder`` (also resolved)."""
    real = Path(os.path.realpath(path))
    if not allow_outside:
        base = os.path.realpath(folder)
        if os.path.commonpath([base, str(real)]) != base:
            shown = f" (a symlink to {real})" if os.path.normpath(os.path.abspath(path)) != str(real) else ""
            raise input_error(source, f"{what} leads outside the dataset folder {folder}{shown}; "
                                      "allow outside images to read it", "allow_outside_images")
    return real


def require_string(value: Any, source: str | Path, where: str) -> str:
    if not isinstance(value, str):
        raise input_error(source, f"{where} must be a string, got {type(value).__name__} {value!r}"[:200])
    return value


def require_strings(value: Any, source: str | Path, where: str) -> list[str]:
    """A string or a list of strings, as a list."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise input_error(source, f"{where} must be a string or a list of strings, got {value!r}"[:200])
    return list(items)


def require_keys(obj: Any, keys: list[str], path: str | Path, where: str = "top level") -> None:
    if not isinstance(obj, dict):
        raise input_error(path, f"expected a JSON object at {where}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise input_error(path, f"missing key(s) {', '.join(map(repr, missing))} at {where}")


def write_run_outputs(out: str | Path, predictions: list[dict], metrics: dict) -> None:
    """``out/predictions.jsonl`` (one object per sample) and ``out/metrics.json``, each written
    whole (a full disk is a one-line error; the CLI writes them into a staging folder)."""
    out = make_folder(out)
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in predictions))
    atomic_write_json(out / "metrics.json", metrics, durable=False, indent=2)


def read_baseline(folder: str | Path, samples: list, field: str = "prediction", what: str = "samples") -> list:
    """``field`` of a previous run's ``predictions.jsonl`` for each of ``samples`` (joined by id,
    in the samples' order); a baseline that lacks one of them, lists an id twice, or answered
    another version of a sample (its content digest differs) is a one-line error."""
    path = Path(folder) / "predictions.jsonl"
    by_id, digests, lines = {}, {}, {}
    for n, row in enumerate(read_jsonl(path), 1):
        if "id" not in row or field not in row:
            raise input_error(path, f"line {n} lacks 'id' or {field!r}: not a vlmsteer predictions file")
        key = row["id"]
        if not isinstance(key, (str, int)):
            raise input_error(path, f"line {n}: id {key!r} is not a string")
        if key in by_id:
            raise input_error(path, f"line {n}: id {key!r} is listed twice (also line {lines[key]})")
        by_id[key], digests[key], lines[key] = row[field], row.get("digest"), n
    missing = [s.id for s in samples if s.id not in by_id]
    if missing:
        raise input_error(path, f"baseline lacks {len(missing)} of these {what} (first: {missing[0]})")
    other = [s.id for s in samples if digests[s.id] is not None and s.digest is not None and digests[s.id] != s.digest]
    if other:
        raise input_error(path, f"baseline was run on other data: {len(other)} of these {what} differ in content "
                                f"(first: id {other[0]}, line {lines[other[0]]})")
    return [by_id[s.id] for s in samples]
