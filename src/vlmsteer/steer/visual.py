"""Visual steering (after VISTA, Li et al., ICML 2025): a steering vector per sample, the residual
stream at the last prompt token with the image minus the same with a blank image, added back
``alpha`` times at chosen layers while the sample generates — to make a model lean on what it
sees rather than on what its text prior expects (a hallucination mitigation).

The blank image is a uniform one: every pixel input set to :data:`BLANK` (after the processor's
normalisation: a light grey; not zero, which Idefics reads as a padding image; the same for every
row, so a sample's vector does not depend on its batch). Every architecture keeps the same token
layout, so the two passes differ only in what the image tokens show. VISTA also reweights the logits of early layers
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
from vlmsteer.hooks import capture_residual, stop_after
from vlmsteer.model import VLM, Batch
from vlmsteer.positions import Region
from vlmsteer.steer.vector import SteeringVector

# the inputs that carry pixels, per architecture (video frames included)
PIXEL_INPUTS = ("pixel_values", "pixel_values_videos")
BLANK = 0.5  # the blank image's every (normalised) pixel input


@dataclass(frozen=True)
class VisualSteering:
    alpha: float
    layers: tuple[int, ...] | None = None  # None: every layer
    region: Region = Region.GENERATED
    control: bool = False  # the random control: each vector replaced by a random direction of its norm

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
        uniform = {k: torch.full_like(batch.inputs[k], BLANK) for k in keys}
        blank = replace(batch, inputs={**batch.inputs, **uniform})
        layers = self.check(vlm).layers
        states = []
        for inputs in (batch, blank):
            with capture_residual(vlm.layers, layers) as seen, stop_after(vlm.layers[max(layers)]):
                vlm.forward(inputs)  # (the layers after the last one steered are not needed)
            states.append({l: seen[l][0][:, -1].float() for l in layers})  # left padded: the last prompt token
        diffs = {l: states[0][l] - states[1][l] for l in layers}
        return {l: _random_like(d) for l, d in diffs.items()} if self.control else diffs

    @contextmanager
    def apply(self, vlm: VLM, batch: Batch) -> Iterator[dict]:
        from vlmsteer.steer.steerer import NORM_LIMIT, cast_once, edit_region

        if self.alpha == 0:
            yield {"rows": None}
            return
        vectors = self.vectors(vlm, batch)
        size = max(float(v.norm(dim=-1).max()) for v in vectors.values()) * abs(self.alpha)
        if not math.isfinite(size) or size > NORM_LIMIT:
            raise VlmsteerError(f"visual steering strength {self.alpha:g} makes a vector of norm {size:.3g}, more than "
                                f"the model's normalisation can square", "alpha")

        with edit_region(vlm, batch, list(vectors), self.region,
                         lambda layer: cast_once(self.alpha * vectors[layer][:, None, :])) as state:
            yield state

    def identity(self) -> dict[str, Any]:
        return self.describe()

    def describe(self) -> dict[str, Any]:
        layers = list(self.layers) if self.layers is not None else None
        what = "a random direction of the norm of" if self.control else ""
        return {"kind": "visual", "alpha": self.alpha, "layers": layers, "region": self.region.value,
                "reference": "blank image", "control": self.control,
                "summary": f"visual steering ({what} image minus blank image, per sample) x {self.alpha:g} at "
                           f"layers {'all' if layers is None else ', '.join(map(str, layers))}, "
                           f"region {self.region.value}".replace("( ", "(")}


def _random_like(rows: torch.Tensor) -> torch.Tensor:
    """Per row, a random direction with that row's norm, drawn from a generator seeded by the row's
    values (reproducible: the same run draws the same directions)."""
    import hashlib

    from vlmsteer.steer.vector import random_direction

    return torch.stack([random_direction(row, int.from_bytes(hashlib.sha256(row.cpu().numpy().tobytes()).digest()[:8],
                                                              "little")) for row in rows])


def _principal_direction(d: torch.Tensor) -> torch.Tensor:
    """The rows' first principal direction, signed and scaled like their mean (its projection)."""
    mean = d.mean(0)
    _, _, v = torch.linalg.svd(d - mean, full_matrices=False)
    direction = v[0] if float(v[0] @ mean) >= 0 else -v[0]
    return direction * float(direction @ mean)


# how the per-sample differences become one direction per layer (``vectors visual --method``)
SUMMARIES = {"pca": _principal_direction, "mean": lambda d: d.mean(0)}


def visual_shift_vector(vlm: VLM, samples, layers=None, *, method: str = "pca", batch_size: int = 16,
                        progress: bool = False) -> SteeringVector:
    """A fixed visual shift direction (after VTI, Liu et al., ICLR 2025): over ``samples`` (a few
    dozen suffice), each one's image-minus-blank-image difference at its last prompt token
    (:meth:`VisualSteering.vectors`), summarised per layer as their mean (``mean``) or as their
    first principal direction, signed and scaled like the mean (``pca``: the projection of the
    mean on it). Unlike :class:`VisualSteering` it is one vector for every input: any engine adds
    it. VTI's vision-encoder half is not this."""
    from vlmsteer.progress import progress_bar

    if method not in SUMMARIES:
        raise VlmsteerError(f"method must be one of {', '.join(SUMMARIES)}, got {method!r}", "method")
    if len(samples) < 2:
        raise VlmsteerError(f"a visual shift needs at least 2 samples with images, got {len(samples)}")
    steering = VisualSteering(1.0, tuple(layers) if layers is not None else None).check(vlm)
    diffs: dict[int, list[torch.Tensor]] = {l: [] for l in steering.layers}
    with progress_bar("visual shifts", len(samples), enabled=progress) as advance:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            if any(s.image is None for s in chunk):
                raise VlmsteerError("a visual shift needs an image for every sample")
            batch = vlm.prepare([s.image for s in chunk], [s.prompt for s in chunk])
            for layer, v in steering.vectors(vlm, batch).items():
                diffs[layer].append(v.cpu())
            advance(len(chunk))
    out = {layer: SUMMARIES[method](torch.cat(parts)) for layer, parts in diffs.items()}
    return SteeringVector(out, model_id=vlm.model_id, method=f"visual-{method}", source="blank image",
                          target="the image", n_source=len(samples), n_target=len(samples),
                          options={"model": vlm.identity, "reference": f"uniform image ({BLANK} after normalisation)"})
