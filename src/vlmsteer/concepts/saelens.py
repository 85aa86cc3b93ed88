"""SAELens's on-disk format: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

``load_saelens`` reads the standard (ReLU), TopK and JumpReLU architectures as vlmsteer
dictionaries (public SAEs on VLM features; SAELens 6 field names: ``W_enc`` (d_in × d_sae),
``b_enc``, ``W_dec`` (d_sae × d_in), ``b_dec``, ``threshold``; ``apply_b_dec_to_input``,
``normalize_activations`` "none"); ``save_saelens`` writes ours so SAELens tools read them.
SAELens's encode: ``pre = (x − b_dec·apply_b_dec_to_input)·W_enc + b_enc``, then ReLU, TopK
(ReLU of each row's ``k`` largest) or ``relu(pre)·(pre > threshold)``; decode
``a·W_dec + b_dec``. A folder without ``apply_b_dec_to_input`` folds ``b_dec·W_enc`` into
``b_enc`` (the same function)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlmsteer.concepts.sae import SparseAutoencoder
from vlmsteer.concepts.sae_methods import JumpReLUSAE, ReLUSAE, TopKSAE
from vlmsteer.errors import VlmsteerError, input_error

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
ARCHITECTURES = {"standard": ReLUSAE, "topk": TopKSAE, "jumprelu": JumpReLUSAE}


def is_saelens_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CFG).is_file()


def load_saelens(folder: str | Path, ours: dict[str, type[SparseAutoencoder]] | None = None
                 ) -> tuple[SparseAutoencoder, dict]:
    """The SAE in ``folder`` and metadata (``layer`` from ``hook_layer`` where recorded,
    ``model_id``, ``hook_name``). A folder written by :func:`save_saelens` comes back as the
    vlmsteer class it records, looked up in ``ours`` (saved name -> class)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        cfg = json.loads((folder / CFG).read_text())
    except FileNotFoundError:
        raise input_error(folder, f"not an SAELens folder (no {CFG})") from None
    except (OSError, ValueError) as exc:
        raise input_error(folder / CFG, f"unreadable SAELens config ({type(exc).__name__})") from None
    if not isinstance(cfg, dict):
        raise input_error(folder / CFG, "unreadable SAELens config (not a JSON object)")
    arch = cfg.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise input_error(folder, f"SAELens architecture {arch!r} is not supported (supported: "
                                  f"{', '.join(ARCHITECTURES)})")
    norm = cfg.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise input_error(folder, f"SAELens normalize_activations {norm!r} is not supported (fold the scaling "
                                  "factor into the weights first: normalize_activations 'none')")
    try:
        w = {k: v.float().numpy() for k, v in load_file(str(folder / WEIGHTS)).items()}
    except FileNotFoundError:
        raise input_error(folder, f"not an SAELens folder (no {WEIGHTS})") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable weights file gets one line
        raise input_error(folder / WEIGHTS, f"unreadable SAE weights ({type(exc).__name__})") from None
    need = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    missing = [k for k in need if k not in w]
    if missing:
        raise input_error(folder / WEIGHTS, f"missing {', '.join(missing)} for a {arch} SAE")
    d_in, d_sae = w["W_enc"].shape
    b_enc = w["b_enc"].astype(np.float64)
    if not cfg.get("apply_b_dec_to_input", True):  # pre = x·W_enc + b_enc = (x − b_dec)·W_enc + (b_enc + b_dec·W_enc)
        b_enc = b_enc + w["b_dec"].astype(np.float64) @ w["W_enc"].astype(np.float64)
    sae = _ours(cfg, d_sae, ours or {})
    if sae is None:
        sae = ARCHITECTURES[arch](k=d_sae, l0=min(d_sae, int(cfg.get("k") or 1)))  # l0: TopK's k
    state = {"components_": w["W_dec"], "W_enc": np.ascontiguousarray(w["W_enc"].T), "b_enc": b_enc,
             "b_dec": w["b_dec"]}
    if arch == "jumprelu":
        state["threshold"] = w["threshold"]
    try:
        sae.set_state(state)
    except VlmsteerError as exc:
        raise input_error(folder, str(exc)) from None
    if sae.components_.shape != (d_sae, d_in):
        raise input_error(folder, f"W_dec has shape {sae.components_.shape}, expected {(d_sae, d_in)}")
    meta = cfg.get("meta") or cfg.get("metadata") or {}
    layer = meta.get("hook_layer", cfg.get("hook_layer"))
    return sae, {"layer": int(layer) if layer is not None else None,
                 "model_id": meta.get("model_name", cfg.get("model_name")),
                 "hook_name": meta.get("hook_name", cfg.get("hook_name")), "source": str(folder)}


def _ours(cfg: dict, d_sae: int, ours: dict[str, type[SparseAutoencoder]]) -> SparseAutoencoder | None:
    """The vlmsteer SAE a folder written by :func:`save_saelens` records (None for others)."""
    own = cfg.get("vlmsteer")
    if not (isinstance(own, dict) and own.get("method") in ours and isinstance(own.get("params"), dict)):
        return None
    try:
        return ours[own["method"]](**{**own["params"], "k": d_sae})
    except (TypeError, VlmsteerError):
        return None


def save_saelens(sae: SparseAutoencoder, folder: str | Path, layer: int | None = None,
                 model_id: str | None = None) -> Path:
    """``sae`` as an SAELens folder (BatchTopK and Matryoshka SAEs as JumpReLU with their
    inference threshold, as SAELens saves them)."""
    from safetensors.numpy import save

    from vlmsteer.outputs import atomic_write, atomic_write_json

    if not isinstance(sae, SparseAutoencoder):
        raise VlmsteerError(f"only sparse autoencoders have an SAELens form, not {sae.method}")
    sae._check_fitted()
    arch = sae.architecture  # (BatchTopK and Matryoshka: jumprelu, with their inference threshold)
    if arch not in ARCHITECTURES:
        raise VlmsteerError(f"{sae.method}'s activation ({arch}) has no SAELens form; SAELens knows "
                            f"{', '.join(ARCHITECTURES)}")
    weights = {"W_enc": np.ascontiguousarray(sae.W_enc_.T, dtype=np.float32),
               "b_enc": sae.b_enc_.astype(np.float32), "W_dec": sae.components_.astype(np.float32),
               "b_dec": sae.b_dec_.astype(np.float32)}
    if arch == "jumprelu":
        weights["threshold"] = sae.threshold_.astype(np.float32)
    d_sae, d_in = sae.components_.shape
    hook = f"model.layers.{layer}" if layer is not None else None
    cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "meta": {"model_name": model_id, "hook_name": hook, "hook_layer": layer, "model_class_name": None,
                    "hook_head_index": None, "model_from_pretrained_kwargs": None, "prepend_bos": None,
                    "exclude_special_tokens": None, "neuronpedia_id": None, "context_size": None,
                    "seqpos_slice": None, "dataset_path": None, "sae_lens_version": None,
                    "sae_lens_training_version": None},
           "vlmsteer": {"method": sae.method, "params": sae.params()}}
    if arch == "topk":
        cfg["k"] = sae.l0
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    atomic_write(folder / WEIGHTS, lambda f: f.write(save(weights)))
    atomic_write_json(folder / CFG, cfg, indent=2)
    return folder
