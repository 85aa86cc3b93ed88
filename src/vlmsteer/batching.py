"""Batches that shrink instead of crashing: on an accelerator out-of-memory error the batch
is retried at half the size, and later batches keep the smaller size (one warning each time);
optionally prepared one batch ahead in a background thread."""

from __future__ import annotations

import copyreg
import io
import logging
import multiprocessing
import pickle
from concurrent.futures import Future, ThreadPoolExecutor
from enum import Enum
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.utils.data

from vlmsteer.errors import VlmsteerError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
P = TypeVar("P")
OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class Prefetch(str, Enum):
    """Where the next batch is prepared while the model runs the current one."""

    NONE = "none"  # in line
    THREAD = "thread"  # a background thread: for accelerators, whose forward releases the GIL
    PROCESS = "process"  # a forked worker process (torch DataLoader): for CPU runs with a spare core


def choose_prefetch(device: torch.device) -> Prefetch:
    """A thread beside an accelerator; on CPU a worker process only when this process may use
    more CPUs than torch's threads (two threads of one process fight over the GIL: measured
    15 % slower with the shipped model), and only where ``fork`` exists."""
    if device.type != "cpu":
        return Prefetch.THREAD
    from vlmsteer.threads import default_threads

    spare = default_threads() > torch.get_num_threads()
    return Prefetch.PROCESS if spare and "fork" in multiprocessing.get_all_start_methods() else Prefetch.NONE


class _Chunks(torch.utils.data.Dataset):
    def __init__(self, items: Sequence, start: int, size: int, prepare: Callable):
        self.items, self.start, self.size, self.prepare = items, start, size, prepare

    def __len__(self) -> int:
        return -(-(len(self.items) - self.start) // self.size)

    def __getitem__(self, i: int) -> bytes:
        a = self.start + i * self.size
        # pickled here, whole: tensors travel inline through the pipe. Left to the DataLoader, each
        # tensor would go through shared memory, its file descriptor fetched from this worker's
        # sharer thread, which waits for the GIL while the next batch is being prepared: the main
        # process then waited longer per batch than preparing it in line costs (measured).
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.dispatch_table = {**copyreg.dispatch_table, torch.Tensor: _tensor_as_array}
        pickler.dump(self.prepare(self.items[a:a + self.size]))
        return buffer.getvalue()


def _tensor_as_array(t: torch.Tensor):
    """A CPU tensor pickled as its numpy array (torch's own pickling writes each storage with
    ``torch.save``, several times slower for a batch's small tensors); others as torch does."""
    if t.device.type == "cpu" and t.layout == torch.strided and not t.requires_grad and t.dtype in _NUMPY_DTYPES:
        return torch.from_numpy, (t.numpy(),)
    return t.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


_NUMPY_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16,
                           torch.int8, torch.uint8, torch.bool})


def _as_is(x):
    return x


def _quiet_worker(worker_id: int) -> None:
    """In a prefetch worker: a connection its parent dropped (Ctrl-C, SIGTERM) while a batch was
    being handed over ends the worker quietly, with no traceback on the user's terminal."""
    import sys
    import threading

    default_thread_hook, default_hook = threading.excepthook, sys.excepthook
    dropped = (ConnectionError, EOFError)  # EOFError: the parent died in the middle of a handshake

    def thread_hook(args):
        if not issubclass(args.exc_type, dropped):
            default_thread_hook(args)

    def hook(exc_type, exc, tb):  # multiprocessing's resource sharer reports through this one
        if not issubclass(exc_type, dropped):
            default_hook(exc_type, exc, tb)

    threading.excepthook, sys.excepthook = thread_hook, hook


def shrinking_batches(items: Sequence[T], batch_size: int, run: Callable[[P], R],
                      prepare: Callable[[Sequence[T]], P] | None = None,
                      prefetch: Prefetch = Prefetch.NONE) -> Iterator[tuple[Sequence[T], R]]:
    """``(chunk, run(prepare(chunk)))`` over ``items`` in order, ``batch_size`` at a time while
    memory allows (``prepare`` defaults to passing the chunk through).

    With ``prefetch``, ``prepare`` (loading images, tokenizing: CPU work) runs one batch ahead
    in a background thread or a worker process, overlapped with ``run``; its errors surface, in
    order, when its batch comes up. In a thread, ``prepare`` must be the only user of anything
    it shares with ``run`` that is not thread-safe (e.g. the tokenizer); in a process, it must
    keep tensors on the CPU."""
    if batch_size < 1:
        raise VlmsteerError(f"batch size must be >= 1, got {batch_size}", "batch_size")
    prep = prepare or _as_is
    pool = ThreadPoolExecutor(1, thread_name_prefix="vlmsteer-prefetch") if prefetch is Prefetch.THREAD else None
    ahead: dict[tuple[int, int], Future] = {}
    worker: list = []  # [(start, size, iterator over prepared batches)] of a worker process

    def prepared(start: int, size: int):
        if prefetch is Prefetch.PROCESS:
            if not worker or worker[0][:2] != (start, size):  # first batch, or the size changed
                loader = torch.utils.data.DataLoader(_Chunks(items, start, size, prep), batch_size=None,
                                                     num_workers=1, prefetch_factor=2, collate_fn=_as_is,
                                                     multiprocessing_context="fork", worker_init_fn=_quiet_worker)
                worker[:] = [(start, size, iter(loader))]
            result = pickle.loads(next(worker[0][2]))
            worker[0] = (start + size, size, worker[0][2])
            return result
        if pool is None:
            return prep(items[start:start + size])
        # one worker thread runs every prepare call, in order, so they never overlap each other
        future = ahead.pop((start, size), None) or pool.submit(prep, items[start:start + size])
        for stale in ahead.values():  # prepared for a batch size that has changed since
            stale.cancel()
        ahead.clear()
        if start + size < len(items):
            ahead[(start + size, size)] = pool.submit(prep, items[start + size:start + 2 * size])
        return future.result()

    start, size = 0, batch_size
    try:
        while start < len(items):
            chunk = items[start:start + size]
            try:
                result = run(prepared(start, size))
            except OOM:
                if size == 1:
                    raise VlmsteerError("out of accelerator memory with a batch of one sample: use a smaller "
                                        "dtype (bfloat16), fewer new tokens, or spread the model over devices "
                                        "(device_map='auto')", "device_map") from None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                size = max(1, size // 2)
                log.warning("out of accelerator memory: batch size lowered to %d", size)
                continue
            yield chunk, result
            start += len(chunk)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        worker.clear()  # ends the worker process


def rank_slice(items: Sequence[T], rank: int, world: int) -> Sequence[T]:
    """The rank-th of ``world`` contiguous, near-equal slices of ``items`` (a data-parallel
    run's share; the slices in rank order are ``items`` again)."""
    if not 0 <= rank < world:
        raise VlmsteerError(f"rank {rank} is outside a world of {world} processes")
    return items[len(items) * rank // world:len(items) * (rank + 1) // world]


def part_name(rank: int, world: int) -> str:
    """The name of rank ``rank``'s part of a data-parallel output (a folder or file stem)."""
    return f"rank-{rank:05d}-of-{world:05d}"
