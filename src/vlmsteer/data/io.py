"""Reading input files with one-line errors that name the file and the problem, and writing
a run's outputs (``predictions.jsonl`` + ``metrics.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmsteer.errors import input_error


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.exists():
        raise input_error(path, f"{what} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise input_error(path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise input_error(path, "not a UTF-8 text file") from None


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise input_error(path, "JSONL file not found")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
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


def require_keys(obj: Any, keys: list[str], path: str | Path, where: str = "top level") -> None:
    if not isinstance(obj, dict):
        raise input_error(path, f"expected a JSON object at {where}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise input_error(path, f"missing key(s) {', '.join(map(repr, missing))} at {where}")


def write_run_outputs(out: str | Path, predictions: list[dict], metrics: dict) -> None:
    """``out/predictions.jsonl`` (one object per sample) and ``out/metrics.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in predictions))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
