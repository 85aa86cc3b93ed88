"""The steerer: ``with steer(vlm, vector, batch, alpha, layers, region): vlm.generate(batch)``.

Adds ``alpha * v`` to the residual stream after each chosen decoder layer, at the chosen
token region. Positions are absolute indices into the left-padded sequence, counted from the
tokens each forward call passes through the first decoder layer (and checked against the KV
cache wherever the call shows one; a mismatch raises), so steering with and without the cache, and for
left-padded batches, gives the same tokens. An optional ``condition`` decides per sample,
from its feature at the steering layer at the last prompt position (before steering),
whether to steer it at all (fine-grained, concept-conditioned application).
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Sequence

import torch

from vlmsteer.errors import VlmsteerError
from vlmsteer.hooks import edit_residual, track_positions
from vlmsteer.model import Batch, VLM
from vlmsteer.positions import Region, region_mask
from vlmsteer.steer.vector import SteeringVector

# (batch, hidden) features at the steering layer, last prompt position -> (batch,) bool: steer this row?
SteeringCondition = Callable[[torch.Tensor], torch.Tensor]


# the largest residual a model's normalisation can take: it squares the values (in float32 at
# least), and a square above float32's largest number turns the layer's output into zeros or NaN
NORM_LIMIT = math.sqrt(torch.finfo(torch.float32).max)


def check_scale(vlm: VLM, vector: SteeringVector, alpha: float, layers: Sequence[int]) -> None:
    """``alpha * |v|`` must fit the model's dtype (1e40 overflows float32) and its normalisation
    (above ~1.8e19 the squares the norm takes overflow float32: every answer would be nonsense)."""
    dtype = next(vlm.model.parameters()).dtype
    top = min(torch.finfo(dtype).max if dtype.is_floating_point else math.inf, NORM_LIMIT)
    for layer in layers:
        size = abs(alpha) * vector.at(layer).norm().item()
        if not math.isfinite(size) or size > top:
            raise VlmsteerError(f"alpha {alpha:g} times the vector's norm ({vector.at(layer).norm().item():.4g}) at "
                                f"layer {layer} is {size:.3g}, which overflows the model's "
                                f"{str(dtype).replace('torch.', '')} residual or the squares its normalisation takes "
                                f"(largest {top:.3g})", "alpha")


@contextmanager
def steer(vlm: VLM, vector: SteeringVector, batch: Batch, alpha: float = 1.0,
          layers: Sequence[int] | None = None, region: Region | str = Region.PROMPT,
          condition: SteeringCondition | None = None) -> Iterator[dict]:
    """Steer every forward call on ``batch`` inside the block; hooks are removed on exit.

    Yields a dict that records, once known, which rows were steered (``"rows"``).
    """
    if not math.isfinite(alpha):
        raise VlmsteerError(f"alpha must be a finite number, got {alpha}")
    chosen = vector.check_model(vlm, list(layers) if layers is not None else None, allow_other_model=True)
    check_scale(vlm, vector, alpha, chosen)
    if alpha == 0 or all(float(vector.at(l).abs().max()) == 0 for l in chosen):
        yield {"rows": None}  # nothing to add: leave the model untouched, bit for bit
        return

    with edit_region(vlm, batch, chosen, region, lambda layer: cast_once(alpha * vector.at(layer)),
                     condition) as state:
        yield state


def cast_once(value: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A delta for :func:`edit_region`: ``value`` in the dtype and on the device of the hidden
    states it is added to, converted once per (dtype, device)."""
    cache: dict = {}

    def delta(hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.dtype, hidden.device)
        if key not in cache:
            cache[key] = value.to(dtype=hidden.dtype, device=hidden.device)
        return cache[key]

    return delta


@contextmanager
def edit_region(vlm: VLM, batch: Batch, layers: Sequence[int], region: Region | str,
                make_delta: Callable[[int], Callable[[torch.Tensor], torch.Tensor]],
                condition: SteeringCondition | None = None) -> Iterator[dict]:
    """Add ``make_delta(layer)(hidden)`` (a tensor broadcastable to ``hidden``) to the residual
    after each of ``layers``, at the positions of ``region`` (absolute, KV-cache-safe) and, with
    a ``condition``, only in the rows it accepts: what every kind of steering shares."""
    region = Region.parse(region)
    state: dict = {"rows": None}
    norms: list[torch.Tensor] = []  # each edited position's norm, as the next layer's norm computes it

    def watched(edited: torch.Tensor) -> torch.Tensor:
        norms.append(torch.linalg.vector_norm(edited, dim=-1, dtype=torch.float32))  # (no synchronisation)
        return edited

    if batch.answer_spans is not None and region.covers_generated:
        raise VlmsteerError("teacher-forced batches have no generated region; steer the prompt instead")
    # the condition reads the residual at the last prompt position after its own layer (default:
    # the first steered one, before it is edited)
    read_layer = min(layers) if getattr(condition, "layer", None) is None else condition.layer
    with ExitStack() as stack:
        p = batch.prompt_length
        tracker = stack.enter_context(track_positions(vlm.layers[0], p))

        def read(hidden: torch.Tensor, start: int) -> None:
            if state["rows"] is None and start <= p - 1 < start + hidden.shape[1]:
                state["rows"] = condition(hidden[:, p - 1 - start].float()).to(torch.bool)

        def make_edit(layer: int):
            delta = make_delta(layer)

            def edit(hidden: torch.Tensor, kwargs: dict):
                t = hidden.shape[1]
                start = tracker.require()
                if condition is not None and layer == read_layer:
                    read(hidden, start)
                if start >= p:  # decoding steps: every position is a generated one
                    if not region.covers_generated:
                        return None
                    if condition is None:
                        return watched(hidden + delta(hidden))
                    rows = state["rows"]
                    if rows is None:
                        raise VlmsteerError("the steering condition needs the prompt pass first")
                    return watched(hidden + rows.to(hidden.device)[:, None, None].to(hidden.dtype) * delta(hidden))
                positions = torch.arange(start, start + t)
                mask = region_mask(batch.regions, region, positions).to(hidden.device)
                if condition is not None:
                    if state["rows"] is None:
                        raise VlmsteerError("the steering condition needs the prompt pass first")
                    mask = mask & state["rows"].to(hidden.device)[:, None]
                if not bool(mask.any()):
                    return None
                return watched(hidden + mask[..., None].to(hidden.dtype) * delta(hidden))

            return edit

        edits = {layer: make_edit(layer) for layer in layers}
        if condition is not None and read_layer not in edits:
            def reader(hidden: torch.Tensor, kwargs: dict):
                read(hidden, tracker.require())
                return None

            edits[read_layer] = reader
        stack.enter_context(edit_residual(vlm.layers, edits))
        yield state
        if norms and not bool(torch.isfinite(torch.cat([n.flatten() for n in norms])).all()):  # one sync per block
            raise VlmsteerError("steering stopped: the residual it wrote is not finite or too large for the model's "
                                "normalisation (its sum of squares overflows float32), which would answer from "
                                "NaN or zeros: the steering is too strong for this model; lower alpha or the edit "
                                "value", "alpha")


@dataclass(frozen=True)
class Steering:
    """What to add where, as one value: runners take it, ``run.json`` records it.

    ``layers`` None means the vector's own layers. ``condition`` (see
    :mod:`vlmsteer.steer.conditions`) restricts steering to the samples it accepts.
    """

    vector: SteeringVector
    alpha: float = 1.0
    layers: tuple[int, ...] | None = None
    region: Region = Region.PROMPT
    condition: SteeringCondition | None = None

    def __post_init__(self):
        object.__setattr__(self, "region", Region.parse(self.region))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(l) for l in self.layers))
        if not math.isfinite(self.alpha):
            raise VlmsteerError(f"alpha must be a finite number, got {self.alpha}")

    def check(self, vlm: VLM) -> "Steering":
        """The same steering with its layers resolved against ``vlm`` (sizes, ranges and that
        ``alpha * v`` fits the model's dtype checked; whether the vector was made for this
        model is checked where it is loaded, see :func:`~vlmsteer.steer.vector.load_vector`)."""
        layers = self.vector.check_model(vlm, list(self.layers) if self.layers is not None else None,
                                         allow_other_model=True)
        check_scale(vlm, self.vector, self.alpha, layers)
        check_condition = getattr(self.condition, "check_model", None)
        if check_condition is not None:  # the sizes its concepts have
            check_condition(vlm, allow_other_model=True)
        first = min(layers)
        wanted = getattr(self.condition, "layer", None)
        if wanted is not None and not 0 <= wanted <= first:
            raise VlmsteerError(f"the steering condition reads layer {wanted} but steering starts at layer {first}: "
                                "it must read the stream before it is steered (a layer from 0 to the first steered "
                                "one)", "layer")
        return Steering(self.vector, self.alpha, tuple(layers), self.region, self.condition)

    def apply(self, vlm: VLM, batch: Batch) -> ContextManager[dict]:
        """``with steering.apply(vlm, batch): vlm.generate(batch)``."""
        return steer(vlm, self.vector, batch, alpha=self.alpha, layers=self.layers, region=self.region,
                     condition=self.condition)

    def identity(self) -> dict[str, Any]:
        """:meth:`describe` plus digests of the vector and the condition: two steerings with the
        same identity add the same values at the same places."""
        digest = getattr(self.condition, "digest", None)
        return {**self.describe(), "vector_sha256": self.vector.digest(),
                "condition_sha256": digest() if digest else None if self.condition is None else repr(self.condition)}

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the vector's provenance, alpha, layers, region and condition."""
        describe_condition = getattr(self.condition, "describe", None)
        return {"vector": {"method": self.vector.method, "source": self.vector.source, "target": self.vector.target,
                           "norm": round(self.vector.norm(), 6), "layers": self.vector.layers},
                "alpha": self.alpha, "layers": list(self.layers) if self.layers is not None else None,
                "region": self.region.value,
                "condition": (describe_condition() if describe_condition else
                              None if self.condition is None else repr(self.condition))}
