"""Running a model over samples in batches (greedy generation), with a progress bar."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

from vlmsteer.data.sample import Sample
from vlmsteer.model import VLM
from vlmsteer.progress import progress_bar
from vlmsteer.steer.steerer import Steering


@dataclass
class Response:
    sample_id: str
    text: str
    n_tokens: int


def batches(samples: Sequence[Sample], batch_size: int):
    if batch_size < 1:
        from vlmsteer.errors import VlmsteerError

        raise VlmsteerError(f"batch size must be >= 1, got {batch_size}")
    for start in range(0, len(samples), batch_size):
        yield samples[start:start + batch_size]


def generate_responses(vlm: VLM, samples: Sequence[Sample], *, batch_size: int = 16, max_new_tokens: int = 16,
                       steering: Steering | None = None, progress: bool = False,
                       description: str = "generating") -> list[Response]:
    """Greedy responses for every sample, steered by ``steering`` if given."""
    if steering is not None:
        steering = steering.check(vlm)
    out: list[Response] = []
    with progress_bar(description, len(samples), enabled=progress) as advance:
        for chunk in batches(samples, batch_size):
            batch = vlm.prepare([s.image for s in chunk], [s.prompt for s in chunk])
            with (steering.apply(vlm, batch) if steering else nullcontext()):
                gen = vlm.generate(batch, max_new_tokens=max_new_tokens)
            out.extend(Response(s.id, t, n) for s, t, n in zip(chunk, gen.texts, gen.lengths))
            advance(len(chunk))
    return out
