"""Visual steering (after VISTA, Li et al., ICML 2025): a steering vector per sample, the residual
stream at the last prompt token with the image minus the same with a blank image, added back
``alpha`` times at chosen layers while the sample generates — to make a model lean on what it
sees rather than on what its text prior expects (a hallucination mitigation).

The blank image is a uniform one: every pixel input set to the batch's mean pixel value (after
the processor's normalisation; not zero, which Idefics reads as a padding image). Every
architecture keeps the same token layout, so the two passes differ only in what the image
tokens show. VISTA also reweights the logits of early layers
(its "self-logits augmentation"); that part is not this. Runners take it like
:class:`~vlmsteer.steer.steerer.Steering` (``check``, ``apply``, ``identity``, ``describe``); the
transformers engine runs it (two extra prompt passes per batch), the vLLM engine refuses it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import torch

from vlmsteer.errors import VlmsteerError
from vlmsteer.hooks import capture_residual
from vlmsteer.model import VLM, Batch
from vlmsteer.positions import Region

# the inputs that carry pixels, per architecture (video frames included)
PIXEL_INPUTS = ("pixel_values", "pixel_values_videos")


@dataclass(frozen=True)
class VisualSteering:
    alpha: float
    layers: tuple[int, ...] | None = None  # None: every layer
    region: Region = Region.GENERATED

    def __post_init__(self):
        object.__setattr__(self, "region", Region.parse(self.region))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(l) for l in self.layers))
        if not math.isfinite(self.alpha):
            raise VlmsteerError(f"the visual steering strength must be a finite number, got {self.alpha}", "alpha")

    def check(self, vlm: VLM, allow_other_model: bool = False) -> "VisualSteering":
        layers = tuple(vlm.layer_index(l) for l in (self.layers if self.layers is not None else range(vlm.num_layers)))
        if not layers:
            raise VlmsteerError("visual steering needs at least one layer", "layer")
        return replace(self, layers=layers)

    def vectors(self, vlm: VLM, batch: Batch) -> dict[int, torch.Tensor]:
        """Per layer, the (rows, hidden) visual vectors of ``batch``: the last prompt token's
        residual with each row's image minus with a blank one."""
        keys = [k for k in PIXEL_INPUTS if isinstance(batch.inputs.get(k), torch.Tensor)]
        if not keys:
            raise VlmsteerError("visual steering needs an image in every prompt (this batch has none)")
        uniform = {k: torch.full_like(batch.inputs[k], float(batch.inputs[k].float().mean())) for k in keys}
        blank = replace(batch, inputs={**batch.inputs, **uniform})
        layers = self.check(vlm).layers
        states = []
        for inputs in (batch, blank):
            with capture_residual(vlm.layers, layers) as seen:
                vlm.forward(inputs)
            states.append({l: seen[l][0][:, -1].float() for l in layers})  # left padded: the last prompt token
        return {l: states[0][l] - states[1][l] for l in layers}

    @contextmanager
    def apply(self, vlm: VLM, batch: Batch) -> Iterator[dict]:
        from vlmsteer.steer.steerer import NORM_LIMIT, edit_region

        if self.alpha == 0:
            yield {"rows": None}
            return
        vectors = self.vectors(vlm, batch)
        size = max(float(v.norm(dim=-1).max()) for v in vectors.values()) * abs(self.alpha)
        if not math.isfinite(size) or size > NORM_LIMIT:
            raise VlmsteerError(f"visual steering strength {self.alpha:g} makes a vector of norm {size:.3g}, more than "
                                f"the model's normalisation can square", "alpha")

        def make_delta(layer: int):
            cache: dict = {}

            def delta(hidden: torch.Tensor) -> torch.Tensor:
                key = (hidden.dtype, hidden.device)
                if key not in cache:
                    cache[key] = (self.alpha * vectors[layer])[:, None, :].to(dtype=hidden.dtype, device=hidden.device)
                return cache[key]

            return delta

        with edit_region(vlm, batch, list(vectors), self.region, make_delta) as state:
            yield state

    def identity(self) -> dict[str, Any]:
        return self.describe()

    def describe(self) -> dict[str, Any]:
        layers = list(self.layers) if self.layers is not None else None
        return {"kind": "visual", "alpha": self.alpha, "layers": layers, "region": self.region.value,
                "reference": "blank image",
                "summary": f"visual steering (image minus blank image, per sample) x {self.alpha:g} at layers "
                           f"{'all' if layers is None else ', '.join(map(str, layers))}, region {self.region.value}"}
