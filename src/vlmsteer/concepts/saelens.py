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

from vlmsteer.concepts.dictionary import check_weights
from vlmsteer.concepts.sae import SparseAutoencoder
from vlmsteer.concepts.sae_methods import JumpReLUSAE, ReLUSAE, TopKSAE
from vlmsteer.data.identity import regular_file
from vlmsteer.errors import VlmsteerError, input_error

CFG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
SAELENS_FORMAT = "6.0.0"  # the SAELens version whose layout save_saelens writes
ARCHITECTURES = {"standard": ReLUSAE, "topk": TopKSAE, "jumprelu": JumpReLUSAE}


def is_saelens_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CFG).is_file()


def load_saelens(folder: str | Path, ours: dict[str, type[SparseAutoencoder]] | None = None
                 ) -> tuple[SparseAutoencoder, dict]:
    """The SAE in ``folder`` and metadata (``layer`` from ``hook_layer`` where recorded,
    ``model_id``, ``hook_name``). A folder written by :func:`save_saelens` comes back as the
    vlmsteer class it records, looked up in ``ours`` (saved name -> class). Configs before
    SAELens 6 are read as SAELens reads them (its renames and defaults); every field that
    changes encode or decode is honoured or the folder refused in one line naming it."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = _read_config(folder)
    arch = cfg["architecture"]
    if not (folder / WEIGHTS).exists():
        raise input_error(folder, f"not an SAELens folder (no {WEIGHTS})")
    regular_file(folder / WEIGHTS, "SAE weights file")  # (a FIFO would block the read for ever)
    try:
        raw = load_file(str(folder / WEIGHTS))
    except Exception as exc:  # noqa: BLE001 - any unreadable weights file gets one line
        raise input_error(folder / WEIGHTS, f"unreadable SAE weights ({type(exc).__name__})") from None
    w = {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in raw.items()}
    need = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    missing = [k for k in need if k not in w]
    if missing:
        raise input_error(folder / WEIGHTS, f"missing {', '.join(missing)} for a {arch} SAE")
    w = {k: w[k] for k in need}
    check_weights(w, folder / WEIGHTS)
    if w["W_enc"].ndim != 2:
        raise input_error(folder / WEIGHTS, f"W_enc has shape {w['W_enc'].shape}, expected (d_in, d_sae)")
    d_in, d_sae = w["W_enc"].shape
    for field, size in (("d_in", d_in), ("d_sae", d_sae)):
        if cfg.get(field) is not None and cfg[field] != size:
            raise input_error(folder, f"{CFG} says {field} {cfg[field]} but the weights have {size}")
    w_enc, b_enc = w["W_enc"].astype(np.float64), w["b_enc"].astype(np.float64)
    w_dec = w["W_dec"].astype(np.float64)
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # SAELens scales the pre-activations by each decoder row's norm and divides the codes
        # by it before decoding: the same function as unit decoder rows, with W_enc and b_enc
        # scaled by the norms (SAELens's own fold_W_dec_norm)
        norms = np.linalg.norm(w_dec, axis=1)
        if not (norms > 0).all():
            raise input_error(folder / WEIGHTS, "rescale_acts_by_decoder_norm with a zero decoder row")
        w_enc, b_enc, w_dec = w_enc * norms, b_enc * norms, w_dec / norms[:, None]
    if not cfg.get("apply_b_dec_to_input", True):  # pre = x·W_enc + b_enc = (x − b_dec)·W_enc + (b_enc + b_dec·W_enc)
        b_enc = b_enc + w["b_dec"].astype(np.float64) @ w_enc
    sae = _ours(cfg, d_sae, ours or {})
    if sae is None:
        sae = ARCHITECTURES[arch](k=d_sae, l0=min(d_sae, int(cfg["k"])) if arch == "topk" else 1)
    state = {"components_": w_dec, "W_enc": np.ascontiguousarray(w_enc.T), "b_enc": b_enc, "b_dec": w["b_dec"]}
    if arch == "jumprelu":
        state["threshold"] = w["threshold"]
    try:
        sae.set_state(state)
    except VlmsteerError as exc:
        raise input_error(folder, str(exc)) from None
    if sae.components_.shape != (d_sae, d_in):
        raise input_error(folder, f"W_dec has shape {sae.components_.shape}, expected {(d_sae, d_in)}")
    meta = cfg["metadata"]
    layer = meta.get("hook_layer")
    return sae, {"layer": int(layer) if isinstance(layer, int) else None, "model_id": meta.get("model_name"),
                 "hook_name": meta.get("hook_name"), "source": str(folder)}


# pre-6 names of fields, renamed as SAELens 6 renames them when it loads an older folder
_RENAMED = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
            "activation_fn_str": "activation_fn"}
_METADATA = ("model_name", "hook_name", "hook_layer", "hook_head_index", "model_class_name",
             "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens", "neuronpedia_id",
             "context_size", "seqpos_slice", "dataset_path", "sae_lens_version", "sae_lens_training_version")


def _read_config(folder: Path) -> dict:
    """``cfg.json`` as SAELens 6 reads it: the architecture, the encode-changing fields (each one
    this reader cannot honour refused, named) and ``metadata``."""
    if not (folder / CFG).exists():
        raise input_error(folder, f"not an SAELens folder (no {CFG})")
    regular_file(folder / CFG, "SAELens config")
    try:
        cfg = json.loads((folder / CFG).read_text())
    except (OSError, ValueError) as exc:
        raise input_error(folder / CFG, f"unreadable SAELens config ({type(exc).__name__})") from None
    if not isinstance(cfg, dict):
        raise input_error(folder / CFG, "unreadable SAELens config (not a JSON object)")
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else cfg.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    if not _is_6(version):  # before SAELens 6: its renames and defaults
        cfg = {_RENAMED.get(k, k): v for k, v in cfg.items()}
        cfg.setdefault("architecture", "standard")
        kwargs = cfg.get("activation_fn_kwargs") or {}
        if cfg.get("activation_fn") == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
            cfg["architecture"], cfg["k"] = "topk", kwargs["k"]
        if isinstance(cfg.get("normalize_activations"), bool):
            cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
        act = cfg.get("activation_fn") or "relu"
        if cfg["architecture"] == "standard" and act != "relu":
            raise input_error(folder, f"SAELens activation_fn {act!r} is not supported (relu, or topk with "
                                      "activation_fn_kwargs.k)")
        if cfg.get("finetuning_scaling_factor"):
            raise input_error(folder, "SAELens finetuning_scaling_factor is not supported (fold it into W_dec "
                                      "first)")
        meta = {**{k: cfg[k] for k in _METADATA if k in cfg}, **meta}
    arch = cfg.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise input_error(folder, f"SAELens architecture {arch!r} is not supported (supported: "
                                  f"{', '.join(ARCHITECTURES)})")
    for field, hint in (("normalize_activations", "fold the normalisation into the weights first"),
                        ("reshape_activations", "SAEs of attention heads' outputs (hook_z) are not supported")):
        value = cfg.get(field) or "none"
        if value != "none":
            raise input_error(folder, f"SAELens {field} {value!r} is not supported (only 'none': {hint})")
    if arch == "topk":
        k = cfg.get("k", 100)  # SAELens's default
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise input_error(folder / CFG, f"SAELens k must be a positive integer, got {k!r}")
        cfg["k"] = k
    cfg["architecture"], cfg["metadata"] = arch, meta
    return cfg


def _is_6(version) -> bool:
    try:
        return int(str(version).split(".")[0]) >= 6
    except ValueError:
        return False


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
           # SAELens 6's layout: it reads a folder whose metadata says version 6 as is (an older
           # or missing version goes through its pre-6 path, which drops hook_name and model_name)
           "metadata": {**dict.fromkeys(_METADATA), "model_name": model_id, "hook_name": hook, "hook_layer": layer,
                        "sae_lens_version": SAELENS_FORMAT, "sae_lens_training_version": None},
           "vlmsteer": {"method": sae.method, "params": sae.params()}}
    if arch == "topk":
        cfg["k"] = sae.l0
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    atomic_write(folder / WEIGHTS, lambda f: f.write(save(weights)))
    atomic_write_json(folder / CFG, cfg, indent=2)
    return folder
