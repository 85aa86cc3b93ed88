"""Loading what a run reads — the model (or only its head, for word grounding) and feature
stores — the same way for the CLI and the Python API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from vlmsteer.errors import VlmsteerError
from vlmsteer.runs.protocol import device_for_rank


def quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_model(model: str, adapter: Optional[Path] = None, dtype: str = "auto", device: str = "cpu",
               device_map: Optional[str] = None, trust_remote_code: bool = False,
               max_image_pixels: Optional[int] = None):
    quiet_transformers()
    from vlmsteer.model import VLM

    vlm = VLM.load(model, adapter=adapter, dtype=dtype, device=device_for_rank(device),
                   device_map=device_map or None, trust_remote_code=trust_remote_code)
    if max_image_pixels is not None:
        vlm.max_image_pixels = max_image_pixels
    return vlm


def load_head(model: str, dtype: str = "auto", device: str = "cpu", device_map: Optional[str] = None):
    """The final norm and unembedding alone, for word grounding (see :mod:`vlmsteer.head`); the
    whole model with a device map."""
    if device_map:
        return load_model(model, None, dtype, device, device_map)
    quiet_transformers()
    from vlmsteer.head import load_head as head

    return head(model, dtype=dtype, device=device_for_rank(device))


def grounding_identity(vlm, store) -> dict | None:
    """The grounding head's identity, after checking it reads vectors of the store's size."""
    if vlm is None:
        return None
    if vlm.hidden_size != store.hidden_size:
        raise VlmsteerError(f"{vlm.model_id} has hidden size {vlm.hidden_size} but the features of {store.path} have "
                            f"{store.hidden_size}: ground the words with the store's own model", "model")
    return vlm.identity


def open_store(path: Path, allow_partial: bool = False):
    from vlmsteer.store import FeatureStore

    return FeatureStore.open(path, allow_partial=allow_partial).verify()


def store_adapter(store) -> Optional[str]:
    """The LoRA adapter the store's features were extracted with (its folder), if any."""
    return ((store.header.get("origin") or {}).get("adapter") or {}).get("path")
