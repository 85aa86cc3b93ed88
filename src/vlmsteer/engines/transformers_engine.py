"""The reference engine: transformers' own ``generate`` in left-padded batches, steered by the
hooks of :mod:`vlmsteer.steer` (batches shrink on accelerator out-of-memory errors)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

from vlmsteer.batching import shrinking_batches
from vlmsteer.data.sample import Sample
from vlmsteer.engines.base import Response
from vlmsteer.errors import VlmsteerError
from vlmsteer.model import VLM
from vlmsteer.progress import progress_bar


class TransformersEngine:
    name = "transformers"

    def __init__(self, vlm: VLM, batch_size: int = 16):
        self.vlm, self.batch_size = vlm, batch_size

    @classmethod
    def for_model(cls, vlm: VLM, batch_size: int = 16) -> "TransformersEngine":
        return cls(vlm, batch_size)

    def generate(self, samples: Sequence[Sample], steering=None, *, max_new_tokens: int = 16, progress: bool = False,
                 description: str = "generating") -> list[Response]:
        """Greedy responses; requests under different steerings run as separate batches, in the
        order the steerings first appear, and come back in the samples' order."""
        per_request = list(steering) if isinstance(steering, (list, tuple)) else [steering] * len(samples)
        if len(per_request) != len(samples):
            raise VlmsteerError(f"{len(per_request)} steerings for {len(samples)} samples")
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(per_request):
            groups.setdefault(id(s), []).append(i)
        out: list[Response | None] = [None] * len(samples)
        with progress_bar(description, len(samples), enabled=progress) as advance:
            for rows in groups.values():
                chosen = per_request[rows[0]]
                for i, r in zip(rows, self._run([samples[i] for i in rows], chosen, max_new_tokens, advance)):
                    out[i] = r
        return out

    def _run(self, samples: Sequence[Sample], steering, max_new_tokens: int, advance) -> list[Response]:
        vlm = self.vlm
        if steering is not None:
            steering = steering.check(vlm)

        def run(chunk):
            batch = vlm.prepare([s.image for s in chunk], [s.prompt for s in chunk])
            with (steering.apply(vlm, batch) if steering else nullcontext()):
                return vlm.generate(batch, max_new_tokens=max_new_tokens)

        out: list[Response] = []
        for chunk, gen in shrinking_batches(samples, self.batch_size, run):
            out.extend(Response(s.id, t, n) for s, t, n in zip(chunk, gen.texts, gen.lengths))
            advance(len(chunk))
        return out
