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
