"""The only module that registers torch hooks.

Every hook lives inside a context manager whose ``finally`` removes it, so leaving the
context (normally or by an exception) restores the model exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch


def _hidden(output):
    """Decoder layers return a tensor in transformers 5.x, a tuple in older versions."""
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden: torch.Tensor):
    if isinstance(output, tuple):
        return (hidden,) + tuple(output[1:])
    return hidden


@contextmanager
def capture_residual(layers: torch.nn.ModuleList, indices: Sequence[int]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Record the residual stream after each of ``layers[i]`` for ``i`` in ``indices``.

    Yields a dict ``layer -> list of (batch, seq, hidden) tensors``, one per forward call
    (generation makes several calls: the prompt, then one per new token).
    """
    store: dict[int, list[torch.Tensor]] = {i: [] for i in indices}
    handles = []
    try:
        for i in indices:
            def hook(module, args, output, i=i):
                store[i].append(_hidden(output).detach())
            handles.append(layers[i].register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


class _StopForward(Exception):
    pass


@contextmanager
def stop_after(layer: torch.nn.Module) -> Iterator[None]:
    """End the forward pass right after ``layer`` (the later layers and the LM head are
    skipped); the ``with`` block swallows the stop. Use around a forward whose output is
    not needed, e.g. when only hooks' captures are."""
    def hook(module, args, output):
        raise _StopForward

    h = layer.register_forward_hook(hook)
    try:
        yield
    except _StopForward:
        pass
    finally:
        h.remove()


EditFn = Callable[[torch.Tensor, dict], torch.Tensor | None]


@contextmanager
def edit_residual(layers: torch.nn.ModuleList, edits: dict[int, EditFn]) -> Iterator[None]:
    """Replace the output of ``layers[i]`` by ``edits[i](hidden, kwargs)`` (if not None).

    The edit function receives the layer's keyword arguments, among them
    ``cache_position``/``position_ids`` where the model passes them, so edits can use
    absolute positions.
    """
    handles = []
    try:
        for i, fn in edits.items():
            def hook(module, args, kwargs, output, fn=fn):
                new = fn(_hidden(output), kwargs)
                return None if new is None else _replace_hidden(output, new)
            handles.append(layers[i].register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


class PositionError(RuntimeError):
    """A steering hook cannot tell which absolute positions a forward call covers."""


class PositionTracker:
    """Absolute position (index into the left-padded sequence) of the first token of the
    current forward call, counted from the tokens that pass through the first decoder layer.

    A call holding at least ``prompt_length`` tokens starts at 0 (the prompt pass, or an
    uncached generation step that re-reads the whole sequence); a shorter call continues where
    the previous one ended (a cached decoding step). Where the call also shows a KV cache or a
    ``cache_position`` (under whatever argument name a transformers release gives it), the two
    must agree; if they do not, or a short call comes first, :class:`PositionError` is raised:
    a hook that cannot tell where it is never guesses.
    """

    def __init__(self, prompt_length: int):
        if prompt_length < 1:
            raise ValueError("prompt_length must be at least 1")
        self.prompt_length = prompt_length
        self.offset: int | None = None  # start of the current call
        self.length = 0  # tokens in the current call
        self.calls = 0

    def observe(self, length: int, cache_length: int | None = None) -> int:
        """Record a forward call of ``length`` tokens; return its first absolute position."""
        # (a one-token call after a one-token prompt is read as a decoding step)
        if length >= self.prompt_length and (length > 1 or self.offset is None):
            start = 0
        elif self.offset is not None:
            start = self.offset + self.length
        else:
            raise PositionError(
                f"the first forward call while steering has {length} tokens, fewer than the "
                f"{self.prompt_length}-token prompt: cannot tell which positions it holds"
            )
        if cache_length is not None and cache_length != start:
            raise PositionError(
                f"forward call {self.calls + 1}: the KV cache holds {cache_length} tokens but "
                f"{start} were counted before this call; steering positions would be wrong"
            )
        self.offset, self.length = start, length
        self.calls += 1
        return start

    def require(self) -> int:
        """The current call's first position; raises if no call was observed."""
        if self.offset is None:
            raise PositionError("a steering hook ran before the first decoder layer: positions unknown")
        return self.offset


def _cache_length(args: tuple, kwargs: dict) -> int | None:
    """Tokens already in the KV cache, found by type (not by argument name), or from a
    ``cache_position`` argument; None where the call shows neither."""
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # pragma: no cover - transformers is a dependency
        Cache = ()
    for value in list(kwargs.values()) + list(args[1:]):
        if isinstance(value, Cache):
            return int(value.get_seq_length())
    pos = kwargs.get("cache_position")
    if isinstance(pos, torch.Tensor) and pos.numel():
        return int(pos.reshape(-1)[0])
    return None


@contextmanager
def track_positions(first_layer: torch.nn.Module, prompt_length: int) -> Iterator[PositionTracker]:
    """Keep a :class:`PositionTracker` current from a pre-hook on the first decoder layer."""
    tracker = PositionTracker(prompt_length)

    def pre(module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
            raise PositionError("the first decoder layer received no (batch, seq, hidden) tensor: positions unknown")
        tracker.observe(hidden.shape[1], _cache_length(args, kwargs))

    h = first_layer.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield tracker
    finally:
        h.remove()
