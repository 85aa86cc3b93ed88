"""Helpers shared by the benchmarks: the model to measure and a quiet environment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def quiet() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def load_model(name: str):
    """``shapes-llava`` (the shipped model) or ``tiny:<arch>`` (a tiny fixture model)."""
    quiet()
    from vlmsteer.model import VLM

    if name.startswith("tiny:"):
        from vlmsteer.testing.tiny_models import save_tiny

        folder = Path(tempfile.mkdtemp()) / name[5:]
        save_tiny(name[5:], folder)
        return VLM.load(folder)
    return VLM.load(name)


def shapes_vqa(n_questions: int, seed: int = 99):
    """At least ``n_questions`` held-out shapes VQA samples (in a temporary folder)."""
    from vlmsteer.data import load_vqav2, shapes

    root = Path(tempfile.mkdtemp()) / "shapes"
    shapes.write_dataset(root, n=n_questions // 8 + 1, seed=seed)
    return load_vqav2(root)[:n_questions]


def mean_sd(values):
    """Mean and sample sd over seeds, as ``[mean, sd]``, for numbers or dicts of numbers."""
    import numpy as np

    if isinstance(values[0], dict):
        return {k: mean_sd([v[k] for v in values]) for k in values[0]}
    arr = np.asarray(values, dtype=float)
    return [float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0]


def over_worlds(args, one_world) -> list[dict]:
    """``one_world(vlm, seed, args, tmp)`` for each of ``args.seeds`` (comma-separated) with
    ``args.model`` on 2 CPU threads, in a temporary folder removed afterwards."""
    import torch

    torch.set_num_threads(2)
    vlm = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        return [one_world(vlm, int(s), args, Path(tmp)) for s in args.seeds.split(",")]


def print_and_save(result: dict, path=None) -> None:
    """A benchmark's one-run figures: printed as JSON, and written to ``path`` when given."""
    import json

    print(json.dumps(result, indent=2))
    if path:
        Path(path).write_text(json.dumps(result, indent=2))


def write_result(path, args, **parts) -> None:
    """The benchmark's settings (its parsed options) and results as JSON at ``path``."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "json"}, **parts},
                               indent=2) + "\n")


def vlmsteer(args: list[str]) -> None:
    """Run a ``vlmsteer`` command in this process; a failure ends the benchmark."""
    from vlmsteer.cli import main

    if main(args) != 0:
        raise SystemExit(f"vlmsteer {' '.join(args)} failed")
