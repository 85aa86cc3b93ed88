"""Model compatibility with vLLM, handled once: which models the engine can run here (head sizes
of vLLM's CPU attention, checked before loading), and a vLLM-ready view of a model folder.

vLLM reads a LLaVA checkpoint's vision tower under ``vision_tower.vision_model.*`` (the layout of
``CLIPVisionModel``); transformers 5 saves it as ``vision_tower.*`` (the shipped shapes-llava, and
every LLaVA a test or a user saves). Such a folder gets a copy whose weights are renamed, cached by
the weights' digest in ``$VLMSTEER_CACHE`` (default ``~/.cache/vlmsteer``), written beside and
renamed into place; a folder already in vLLM's layout, or a hub id, is used as it is.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from vlmsteer.errors import VlmsteerError
from vlmsteer.model import VLM
from vlmsteer.outputs import fingerprint

CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vLLM 0.32's CPU attention
VISION = "vision_tower."
VLLM_VISION = "vision_tower.vision_model."


def cache_root() -> Path:
    return Path(os.environ.get("VLMSTEER_CACHE") or Path.home() / ".cache" / "vlmsteer")


def check_supported(vlm: VLM, device: str = "cpu") -> None:
    """One-line errors, before vLLM loads anything, for what it cannot run here."""
    if vlm.adapter is not None:
        raise VlmsteerError("the vLLM engine runs merged weights only; merge the LoRA adapter into the model "
                            "(peft's merge_and_unload) and save it as a folder", "engine")
    text = vlm.model.config.get_text_config()
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if device == "cpu" and head not in CPU_HEAD_SIZES:
        raise VlmsteerError(f"{vlm.model_id}: attention head size {head} is not one vLLM's CPU attention supports "
                            f"({', '.join(map(str, CPU_HEAD_SIZES))}); use the transformers engine", "engine")


def vllm_ready_folder(vlm: VLM) -> Path | str:
    """The folder (or hub id) vLLM should load for ``vlm``."""
    source = vlm.source or {}
    folder = Path(source.get("path", vlm.model_id))
    if not folder.is_dir():
        return vlm.model_id
    weights = sorted(folder.glob("*.safetensors"))
    if not weights or not _needs_renaming(weights):
        return folder
    target = cache_root() / "vllm" / fingerprint(source)[:32]
    if (target / "config.json").exists():
        return target
    return _write_renamed(folder, weights, target)


def _needs_renaming(weights: list[Path]) -> bool:
    from safetensors import safe_open

    for path in weights:
        with safe_open(str(path), "pt") as f:
            if any(k.startswith(VISION) and not k.startswith(VLLM_VISION) for k in f.keys()):
                return True
    return False


def _renamed(key: str) -> str:
    return VLLM_VISION + key[len(VISION):] if key.startswith(VISION) and not key.startswith(VLLM_VISION) else key


def _write_renamed(folder: Path, weights: list[Path], target: Path) -> Path:
    from safetensors.torch import load_file, save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    for f in folder.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, stage / f.name)
    for path in weights:
        tensors = {_renamed(k): v for k, v in load_file(str(path)).items()}
        save_file(tensors, str(stage / path.name), metadata={"format": "pt"})
    index = stage / "model.safetensors.index.json"
    if index.exists():  # a sharded checkpoint names every tensor's shard
        data = json.loads(index.read_text())
        data["weight_map"] = {_renamed(k): v for k, v in data.get("weight_map", {}).items()}
        index.write_text(json.dumps(data, indent=2))
    try:
        stage.rename(target)
    except OSError:  # another process published it first
        shutil.rmtree(stage, ignore_errors=True)
    return target
