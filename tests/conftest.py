from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from vlmsteer.testing.tiny_models import ARCHITECTURES, save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """``tiny_folder(name)`` -> folder holding the saved tiny model ``name`` (built once)."""
    cache: dict[str, object] = {}

    def make(name: str):
        if name not in cache:
            cache[name] = save_tiny(name, tmp_path_factory.mktemp(f"tiny_{name}"))
        return cache[name]

    return make


@pytest.fixture(scope="session")
def tiny_vlm(tiny_folder):
    """``tiny_vlm(name)`` -> VLM loaded by path from the saved tiny model."""
    from vlmsteer.model import VLM

    cache: dict[str, VLM] = {}

    def load(name: str) -> VLM:
        if name not in cache:
            cache[name] = VLM.load(tiny_folder(name))
        return cache[name]

    return load


ALL_ARCHITECTURES = list(ARCHITECTURES)
