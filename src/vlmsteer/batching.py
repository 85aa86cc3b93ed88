"""Batches that shrink instead of crashing: on an accelerator out-of-memory error the batch
is retried at half the size, and later batches keep the smaller size (one warning each time)."""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence, TypeVar

import torch

from vlmsteer.errors import VlmsteerError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def shrinking_batches(items: Sequence[T], batch_size: int, run: Callable[[Sequence[T]], R]) \
        -> Iterator[tuple[Sequence[T], R]]:
    """``(chunk, run(chunk))`` over ``items`` in order, ``batch_size`` at a time while memory allows."""
    if batch_size < 1:
        raise VlmsteerError(f"batch size must be >= 1, got {batch_size}", "batch_size")
    start, size = 0, batch_size
    while start < len(items):
        chunk = items[start:start + size]
        try:
            result = run(chunk)
        except OOM:
            if size == 1:
                raise VlmsteerError("out of accelerator memory with a batch of one sample: use a smaller dtype "
                                    "(bfloat16), fewer new tokens, or spread the model over devices "
                                    "(device_map='auto')", "device_map") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            size = max(1, size // 2)
            log.warning("out of accelerator memory: batch size lowered to %d", size)
            continue
        yield chunk, result
        start += len(chunk)


def rank_slice(items: Sequence[T], rank: int, world: int) -> Sequence[T]:
    """The rank-th of ``world`` contiguous, near-equal slices of ``items`` (a data-parallel
    run's share; the slices in rank order are ``items`` again)."""
    if not 0 <= rank < world:
        raise VlmsteerError(f"rank {rank} is outside a world of {world} processes")
    return items[len(items) * rank // world:len(items) * (rank + 1) // world]


def part_name(rank: int, world: int) -> str:
    """The name of rank ``rank``'s part of a data-parallel output (a folder or file stem)."""
    return f"rank-{rank:05d}-of-{world:05d}"
