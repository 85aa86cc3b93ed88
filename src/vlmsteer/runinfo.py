"""``run.json``: what produced an output folder (command, options, versions, seed, model)."""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("vlmsteer", "torch", "transformers", "peft", "safetensors", "numpy", "scikit-learn")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_run_json(out: str | Path, *, options: dict[str, Any], seed: int | None = None,
                   model_id: str | None = None, revision: str | None = None, **extra: Any) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join(["vlmsteer"] + sys.argv[1:]) if Path(sys.argv[0]).name == "vlmsteer" else " ".join(sys.argv),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
        "seed": seed, "model_id": model_id, "model_revision": revision,
        "versions": versions(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra,
    }
    path = out / "run.json"
    path.write_text(json.dumps(record, indent=2, default=str))
    return path
