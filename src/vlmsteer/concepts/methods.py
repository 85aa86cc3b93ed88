"""The registry of concept methods (``vlmsteer concepts --method``): every dictionary method by
name, with a one-line description and the options it takes, and the two functions that build
one (:func:`make_dictionary`) or read one back (:func:`load_dictionary`, SAELens folders too).

A new method is one file: subclass :class:`~vlmsteer.concepts.dictionary.ConceptDictionary`
(or :class:`~vlmsteer.concepts.sae.SparseAutoencoder`, whose trainer needs only the
architecture's activation, see ``docs/concepts.md``) and call ``CONCEPT_METHODS.add(...)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.numpy import load_file

from vlmsteer.concepts.dictionary import ConceptDictionary, check_weights
from vlmsteer.concepts.kmeans_concepts import KMeansConcepts
from vlmsteer.concepts.nmf import NMFConcepts, SemiNMFConcepts
from vlmsteer.concepts.pca import PCAConcepts
from vlmsteer.concepts.sae_methods import (BatchTopKCrosscoder, BatchTopKSAE, JumpReLUSAE, MatryoshkaSAE, ReLUSAE,
                                           TopKSAE)
from vlmsteer.concepts.saelens import is_saelens_folder, load_saelens
from vlmsteer.data.identity import regular_file
from vlmsteer.errors import VlmsteerError, input_error
from vlmsteer.registry import Registry, canonical

CONCEPT_METHODS: Registry[type[ConceptDictionary]] = Registry("concept method", "--method")

CLUSTERING_OPTIONS = {"k": "number of concepts", "seed": "random seed"}
SAE_OPTIONS = {"latents": "number of latents", "l0": "active latents per row", "epochs": "passes over the rows",
               "batch_size": "rows per step", "lr": "Adam learning rate", "train_dtype": "float32 or bfloat16",
               "seed": "random seed", "saelens": "also write an SAELens folder"}

CONCEPT_METHODS.add("kmeans", KMeansConcepts, "K-Means centroids (the paper's default)",
                    {**CLUSTERING_OPTIONS, "backend": "sklearn, torch, faiss or auto", "device": "torch backend's device"})
CONCEPT_METHODS.add("pca", PCAConcepts, "principal directions of the centred features", CLUSTERING_OPTIONS)
CONCEPT_METHODS.add("semi_nmf", SemiNMFConcepts, "Semi-NMF: real concepts, non-negative codes", CLUSTERING_OPTIONS)
CONCEPT_METHODS.add("nmf", NMFConcepts, "NMF (non-negative features only)", CLUSTERING_OPTIONS)
CONCEPT_METHODS.add("topk-sae", TopKSAE, "sparse autoencoder keeping each row's l0 largest latents", SAE_OPTIONS)
CONCEPT_METHODS.add("batchtopk-sae", BatchTopKSAE, "sparse autoencoder keeping the batch's l0 x batch largest "
                    "latents", SAE_OPTIONS)
CONCEPT_METHODS.add("matryoshka-sae", MatryoshkaSAE, "BatchTopK SAE whose nested latent prefixes also "
                    "reconstruct", SAE_OPTIONS)
CONCEPT_METHODS.add("jumprelu-sae", JumpReLUSAE, "sparse autoencoder with learnt per-latent thresholds",
                    SAE_OPTIONS)
CONCEPT_METHODS.add("relu-sae", ReLUSAE, "SAELens's standard (L1) SAE, read from SAELens folders only", {})
CONCEPT_METHODS.add("batchtopk-crosscoder", BatchTopKCrosscoder, "BatchTopK crosscoder on two models' paired "
                    "features (vlmsteer diff --method crosscoder)", SAE_OPTIONS)


def family_of(method: str) -> str:
    """``clustering``, ``sae`` or ``paired`` (learns from two models' features side by side)."""
    return CONCEPT_METHODS.get(method).family


def methods_of(family: str) -> dict[str, type[ConceptDictionary]]:
    """The methods of one family by their saved name (``cls.method``)."""
    return {e.value.method: e.value for e in CONCEPT_METHODS if e.value.family == family}


def make_dictionary(method: str, k: int, seed: int = 0, **options: Any) -> ConceptDictionary:
    return CONCEPT_METHODS.get(method)(k=k, seed=seed, **options)


def _saved_method(name: str) -> type[ConceptDictionary] | None:
    """The class a saved file's ``method`` names (its ``cls.method``, or a registered name)."""
    for entry in CONCEPT_METHODS:
        if canonical(entry.value.method) == canonical(name):
            return entry.value
    return CONCEPT_METHODS.get(name) if name in CONCEPT_METHODS else None


def load_dictionary(path: str | Path) -> tuple[ConceptDictionary, dict]:
    """A saved dictionary and the metadata saved with it."""
    from safetensors import safe_open

    path = Path(path)
    if is_saelens_folder(path):
        return load_saelens(path, methods_of("sae"))
    regular_file(path, "dictionary file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = json.loads((f.metadata() or {})["vlmsteer_dictionary"])
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
        raise input_error(path, f"not a vlmsteer dictionary ({type(exc).__name__})") from None
    if not (isinstance(header, dict) and isinstance(header.get("method"), str)
            and isinstance(header.get("params"), dict) and isinstance(header.get("meta", {}), dict)):
        raise input_error(path, "not a vlmsteer dictionary (malformed metadata)")
    cls = _saved_method(header["method"])
    if cls is None:
        raise input_error(path, f"not a vlmsteer dictionary (unknown method {header['method']!r}; is the plugin "
                                "that registers it loaded?)")
    try:
        d = cls(**header["params"])
    except (TypeError, VlmsteerError) as exc:
        raise input_error(path, f"not a vlmsteer dictionary ({exc})") from None
    check_weights(state, path)
    components = state.get("components_")
    if components is None or components.ndim != 2 or len(components) != d.k:
        raise input_error(path, f"not a vlmsteer dictionary (expected {d.k} concept rows in 'components_')")
    try:
        d.set_state(state)
    except VlmsteerError as exc:
        raise input_error(path, f"not a vlmsteer dictionary ({exc})") from None
    return d, header.get("meta", {})
