"""Steering through a concept dictionary, beside adding vectors: at one layer, on a token region,
encode the residual, change it, decode, and keep what the dictionary does not explain.

- ``clamp``: set latents to ``value`` (``h + Σ (value − a_i)·d_i``, the reconstruction error kept);
- ``scale``: multiply latents by ``value`` (``h + Σ (value − 1)·a_i·d_i``);
- ``splice``: replace the residual by the dictionary's reconstruction (what the dictionary
  loses; the error is dropped) — the downstream cost of a dictionary;
- ``zero``: replace the residual by zeros (the reference point of "loss recovered").

Clamping and scaling need a sparse autoencoder (a linear decoder of sparse codes); splice and
zero take any dictionary.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Callable, Iterator, Sequence

import logging
import math

import numpy as np
import torch

from vlmsteer.concepts.dictionary import ConceptDictionary
from vlmsteer.concepts.sae import SparseAutoencoder
from vlmsteer.errors import VlmsteerError, parse_choice
from vlmsteer.model import Batch, VLM
from vlmsteer.positions import Region

log = logging.getLogger("vlmsteer")


class EditMode(str, Enum):
    CLAMP = "clamp"
    SCALE = "scale"
    SPLICE = "splice"
    ZERO = "zero"


def dictionary_delta(dictionary: ConceptDictionary, mode: EditMode, latents: Sequence[int] = (),
                     value: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``hidden -> edited − hidden`` for residual rows ``(..., D)`` (in ``hidden``'s dtype)."""
    mode = parse_choice(EditMode, mode, "edit")
    idx = list(latents)

    def delta(hidden: torch.Tensor) -> torch.Tensor:
        h = hidden.reshape(-1, hidden.shape[-1]).float()
        if mode is EditMode.ZERO:
            out = -h
        elif isinstance(dictionary, SparseAutoencoder):
            codes = dictionary.encode_tensor(h)
            if mode is EditMode.SPLICE:
                out = dictionary.decode_tensor(codes) - h
            else:
                a = codes[:, idx]
                change = (value - a) if mode is EditMode.CLAMP else (value - 1.0) * a
                out = change @ dictionary.tensors(h.device)["components_"][idx]
        else:  # any other dictionary: its own encode/decode, in numpy
            x = h.detach().cpu().double().numpy()
            out = torch.from_numpy(dictionary.decode(dictionary.encode(x)) - x).to(h.device, torch.float32)
        return out.reshape(hidden.shape).to(hidden.dtype)

    return delta


@dataclass(frozen=True)
class DictionarySteering:
    """A dictionary edit as a steering value: runners take it like :class:`Steering` (``check``,
    ``apply``, ``identity``, ``describe``)."""

    dictionary: ConceptDictionary
    layer: int
    mode: EditMode = EditMode.CLAMP
    latents: tuple[int, ...] = ()
    value: float = 0.0
    region: Region = Region.PROMPT
    source: str | None = None
    labels: list[str] | None = field(default=None, compare=False)
    model: dict | None = field(default=None, compare=False)  # the model identity it was trained on, if recorded
    trained_layer: int | None = field(default=None, compare=False)  # the layer of its training features, if recorded

    def __post_init__(self):
        object.__setattr__(self, "mode", parse_choice(EditMode, self.mode, "edit"))
        object.__setattr__(self, "region", Region.parse(self.region))
        object.__setattr__(self, "latents", tuple(int(i) for i in self.latents))
        if not math.isfinite(self.value):
            raise VlmsteerError(f"the edit value must be a finite number, got {self.value}", "value")
        if self.mode in (EditMode.CLAMP, EditMode.SCALE):
            if not isinstance(self.dictionary, SparseAutoencoder):
                raise VlmsteerError(f"{self.mode.value} needs a sparse autoencoder dictionary (topk_sae, "
                                    f"batchtopk_sae, matryoshka_sae, jumprelu_sae or an SAELens folder), not "
                                    f"{self.dictionary.method}", "edit")
            if not self.latents:
                raise VlmsteerError(f"{self.mode.value}: name the latent(s) to change (--latent)", "latent")
        bad = [i for i in self.latents if not 0 <= i < self.dictionary.k]
        if bad:
            raise VlmsteerError(f"latent {bad[0]} out of range (the dictionary has {self.dictionary.k}: "
                                f"0..{self.dictionary.k - 1})", "latent")

    def check(self, vlm: VLM, allow_other_model: bool = False) -> "DictionarySteering":
        """Sizes, the layer and, where recorded, the model it was trained on (as for vectors)."""
        from vlmsteer.steer.vector import check_same_model

        size = self.dictionary.components_.shape[1]
        if size != vlm.hidden_size:
            raise VlmsteerError(f"{self.source or 'the dictionary'}: its concepts have size {size} but "
                                f"{vlm.model_id} has hidden size {vlm.hidden_size}")
        check_same_model(self.model, vlm, "dictionary", allow_other_model)
        layer = vlm.layer_index(self.layer)
        if self.trained_layer is not None and vlm.layer_index(self.trained_layer) != layer:
            log.warning("%s was trained on layer %d features; it is applied at layer %d, as asked",
                        self.source or "the dictionary", vlm.layer_index(self.trained_layer), layer)
        return self if layer == self.layer else replace(self, layer=layer)

    @contextmanager
    def apply(self, vlm: VLM, batch: Batch) -> Iterator[dict]:
        from vlmsteer.steer.steerer import edit_region

        delta = dictionary_delta(self.dictionary, self.mode, self.latents, self.value)
        with edit_region(vlm, batch, [self.layer], self.region, lambda layer: delta) as state:
            yield state

    def identity(self) -> dict[str, Any]:
        import hashlib

        state = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
                 for k, v in sorted(self.dictionary.state().items())}
        return {**self.describe(), "dictionary_state": state, "params": self.dictionary.params()}

    def describe(self) -> dict[str, Any]:
        names = [self.labels[i] if self.labels and i < len(self.labels) else str(i) for i in self.latents]
        what = {EditMode.CLAMP: f"latents {', '.join(names)} clamped to {self.value:g}",
                EditMode.SCALE: f"latents {', '.join(names)} scaled by {self.value:g}",
                EditMode.SPLICE: "the residual replaced by its reconstruction",
                EditMode.ZERO: "the residual zeroed"}[self.mode]
        return {"kind": "dictionary", "mode": self.mode.value, "dictionary": self.source,
                "method": self.dictionary.method, "latents": names, "value": self.value,
                "layers": [self.layer], "region": self.region.value,
                "summary": f"{self.dictionary.method} dictionary at layer {self.layer}: {what}, "
                           f"region {self.region.value}"}


def load_dictionary_steering(path, mode: EditMode | str, latents: Sequence[int | str] = (), value: float = 0.0,
                             layer: int | None = None, region: Region | str = Region.PROMPT) -> DictionarySteering:
    """From a ``dictionary.safetensors`` or an SAELens folder; latents by index or by top word
    (every latent whose label has it); the layer is the dictionary's own unless given."""
    from vlmsteer.concepts import load_dictionary
    from vlmsteer.steer.conditions import concept_indices

    dictionary, meta = load_dictionary(path)
    chosen = sorted({i for a in latents for i in concept_indices(a, meta.get("labels"), path)})
    own = meta.get("layer")
    layer = layer if layer is not None else own
    if layer is None:
        raise VlmsteerError(f"{path}: no layer recorded; pass --layer", "layer")
    return DictionarySteering(dictionary, int(layer), mode, tuple(chosen), value, region, str(path),
                              meta.get("labels"), meta.get("model"), int(own) if own is not None else None)
