"""Running a model over samples in batches (greedy generation), with a progress bar."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

from vlmsteer.batching import shrinking_batches
from vlmsteer.data.sample import Sample
from vlmsteer.model import VLM
from vlmsteer.progress import progress_bar
from vlmsteer.steer.steerer import Steering


@dataclass
class Response:
    sample_id: str
    text: str
    n_tokens: int


def generate_responses(vlm: VLM, samples: Sequence[Sample], *, batch_size: int = 16, max_new_tokens: int = 16,
                       steering: Steering | None = None, progress: bool = False,
                       description: str = "generating") -> list[Response]:
    """Greedy responses for every sample, steered by ``steering`` if given (batches shrink on
    accelerator out-of-memory errors instead of failing)."""
    if steering is not None:
        steering = steering.check(vlm)

    def run(chunk):
        batch = vlm.prepare([s.image for s in chunk], [s.prompt for s in chunk])
        with (steering.apply(vlm, batch) if steering else nullcontext()):
            return vlm.generate(batch, max_new_tokens=max_new_tokens)

    out: list[Response] = []
    with progress_bar(description, len(samples), enabled=progress) as advance:
        for chunk, gen in shrinking_batches(samples, batch_size, run):
            out.extend(Response(s.id, t, n) for s, t, n in zip(chunk, gen.texts, gen.lengths))
            advance(len(chunk))
    return out
