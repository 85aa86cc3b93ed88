"""Checkpoints of sparse autoencoder training: a long training resumes where it stopped, to
the same result, and only a checkpoint of the same method, settings and data is resumed."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlmsteer.outputs import safetensors_writes

log = logging.getLogger("vlmsteer")


def checkpoint_identity(sae) -> str:
    """What a checkpoint must match to be resumed: the method, its settings, the data (by a sample)."""
    return json.dumps({"method": sae.method, "params": sae.params(), "data": sae._data_identity}, sort_keys=True)


def save_checkpoint(sae, t: dict, opt, train: dict, step: int) -> None:
    """Parameters, Adam moments and the dead-latent counters at ``step``, written beside the
    checkpoint and renamed onto it (tensor by tensor: no serialized copy in memory)."""
    tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in t.items()}
    for name in sorted(t):
        s = opt.state.get(t[name], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in s:
                tensors[f"adam.{name}.{key}"] = s[key].detach().cpu().contiguous()
    tensors["train.since_fired"] = train["since_fired"].cpu()
    meta = {"identity": checkpoint_identity(sae), "step": str(step),
            "adam_step": str(int(opt.state[t["components_"]]["step"])) if t["components_"] in opt.state else "0",
            "train": json.dumps({k: v for k, v in train.items() if not isinstance(v, torch.Tensor)})}
    path = Path(sae.checkpoint)
    partial = path.with_name(path.name + ".partial")
    with safetensors_writes(partial, "the previous checkpoint is kept"):
        save_file(tensors, str(partial), metadata=meta)
    os.replace(partial, path)


def resume(sae, t: dict, opt, train: dict) -> int:
    """The step a checkpoint of this same training reached, its state restored (0 without one)."""
    if sae.checkpoint is None or not Path(sae.checkpoint).is_file():
        return 0
    try:
        with safe_open(str(sae.checkpoint), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("identity") != checkpoint_identity(sae):
                return 0
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is started over, not trusted
        return 0
    bad = [k for k, v in sorted(tensors.items()) if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # (never written so: training stops before saving one; an older or damaged file)
        log.warning("%s: %s hold non-finite values: training starts over", sae.checkpoint, ", ".join(bad))
        return 0
    with torch.no_grad():
        for k, v in t.items():
            v.copy_(tensors[f"param.{k}"])
    adam_step = torch.tensor(float(meta["adam_step"]))
    for name in sorted(t):
        if f"adam.{name}.exp_avg" in tensors:
            opt.state[t[name]] = {"step": adam_step.clone().to(t[name].device),
                                  "exp_avg": tensors[f"adam.{name}.exp_avg"].to(t[name].device),
                                  "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].to(t[name].device)}
    train["since_fired"].copy_(tensors["train.since_fired"])
    train.update(json.loads(meta["train"]))
    return int(meta["step"])
