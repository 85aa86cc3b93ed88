"""Running a model over samples in batches (greedy generation), with a progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from vlmsteer.batching import part_name, rank_slice
from vlmsteer.data.identity import dataset_identity
from vlmsteer.data.sample import Sample
from vlmsteer.engines import ENGINES, Response, start_engine
from vlmsteer.errors import VlmsteerError
from vlmsteer.model import VLM
from vlmsteer.outputs import atomic_write_json, fingerprint
from vlmsteer.steer.steerer import Steering

PARTS = "parts"  # the folder of an output where a data-parallel run's ranks leave their answers (resumable)


def run_fingerprint(vlm: VLM, samples: Sequence[Sample], steering: Steering | None, **settings) -> str:
    """The fingerprint of a generation run: the model's identity, the samples by content, the
    whole steering (vector and condition digests included) and ``settings``."""
    return fingerprint({"model": vlm.identity, "data": dataset_identity(samples),
                        "steering": steering.identity() if steering is not None else None, "settings": settings})


def generate_responses(vlm: VLM, samples: Sequence[Sample], *, batch_size: int = 16, max_new_tokens: int = 16,
                       steering: Steering | None = None, progress: bool = False,
                       description: str = "generating", engine: str = "transformers") -> list[Response]:
    """Greedy responses for every sample, steered by ``steering`` if given, by the engine called
    ``engine`` (:data:`vlmsteer.engines.ENGINES`; the transformers engine's batches shrink on
    accelerator out-of-memory errors instead of failing)."""
    return start_engine(engine, vlm, batch_size).generate(samples, steering, max_new_tokens=max_new_tokens,
                                                          progress=progress, description=description)


def generate_grid(vlm: VLM, samples: Sequence[Sample], steerings: Sequence[object | None], *, batch_size: int = 16,
                  max_new_tokens: int = 16, progress: bool = False, description: str = "grid",
                  engine: str = "transformers") -> list[list[str]]:
    """Greedy response texts of ``samples`` under each steering of ``steerings`` (None: none),
    one list per steering, asked of the engine as one call with a steering per request (the
    transformers engine runs one steering after another; vLLM schedules the whole grid at once)."""
    flat = start_engine(engine, vlm, batch_size).generate(
        list(samples) * len(steerings), [s for s in steerings for _ in samples], max_new_tokens=max_new_tokens,
        progress=progress, description=description)
    n = len(samples)
    return [[r.text for r in flat[k * n:(k + 1) * n]] for k in range(len(steerings))]


def generate_texts(vlm: VLM, samples: Sequence[Sample], *, batch_size: int = 16, max_new_tokens: int = 16,
                   steering: Steering | None = None, progress: bool = False, description: str = "generating",
                   part: tuple[int, int] | None = None, parts_dir: str | Path | None = None,
                   identity: str | None = None, engine: str = "transformers") -> list[str] | None:
    """Greedy response texts for every sample; with ``part=(rank, world)`` (a data-parallel
    run), this process answers the rank-th contiguous slice and saves it to
    ``parts_dir/rank-R-of-W.json`` (reused on a rerun: resumable per rank); rank 0 waits for
    every slice and returns all texts in sample order, the other ranks return None.

    A part is reused only if it was made by a run of the same ``identity`` (the fingerprint of
    model, data, steering and settings) on samples of the same ids and content digests: a
    rerun with another vector, model or dataset never picks up the old answers. ``engine``: see
    :func:`generate_responses` (vLLM runs in one process: it parallelises on its own)."""
    def answer(chunk: Sequence[Sample]) -> list[str]:
        return [r.text for r in generate_responses(vlm, chunk, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                                   steering=steering, progress=progress, description=description,
                                                   engine=engine)]

    if part is None or part[1] == 1:
        return answer(samples)
    if ENGINES.get(engine).one_process:
        raise VlmsteerError(f"the {engine} engine runs in one process (it schedules its own batches); run without "
                            "torchrun", "engine")
    identity = identity or run_fingerprint(vlm, samples, steering, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size, description=description)
    rank, world = part
    if parts_dir is None:
        raise VlmsteerError("a data-parallel run needs a folder for its parts")
    parts_dir = Path(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    slices = [rank_slice(samples, r, world) for r in range(world)]
    files = [parts_dir / f"{part_name(r, world)}.json" for r in range(world)]

    def made_of(r: int) -> dict:
        return {"identity": identity, "ids": [s.id for s in slices[r]], "digests": [s.digest for s in slices[r]]}

    def saved(r: int) -> list[str] | None:
        try:
            data = json.loads(files[r].read_text())
        except (OSError, ValueError):  # not there yet (or being replaced)
            return None
        if not isinstance(data, dict) or any(data.get(k) != v for k, v in made_of(r).items()):
            return None
        return data.get("texts")

    if saved(rank) is None:
        atomic_write_json(files[rank], {**made_of(rank), "texts": answer(slices[rank])})
    if rank != 0:
        return None
    parts = [saved(r) for r in range(world)]
    while any(p is None for p in parts):  # the other ranks are still answering
        time.sleep(0.1)
        parts = [p if p is not None else saved(r) for r, p in enumerate(parts)]
    return [t for p in parts for t in p]
