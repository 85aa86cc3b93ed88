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


@contextmanager
def capture_layer_inputs(module: torch.nn.Module) -> Iterator[list[tuple]]:
    """Record the positional and keyword inputs of ``module`` (used to read attention masks)."""
    seen: list[tuple] = []

    def pre(mod, args, kwargs):
        seen.append((args, kwargs))

    h = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield seen
    finally:
        h.remove()


class PositionTracker:
    """Absolute position (index into the left-padded sequence) of the first token of the
    current forward call: 0 without a KV cache, the cache length with one."""

    def __init__(self):
        self.offset = 0


@contextmanager
def track_positions(first_layer: torch.nn.Module) -> Iterator[PositionTracker]:
    """Keep ``tracker.offset`` current, read from the KV cache before the first decoder layer runs."""
    tracker = PositionTracker()

    def pre(module, args, kwargs):
        cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
        tracker.offset = int(cache.get_seq_length()) if cache is not None else 0

    h = first_layer.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield tracker
    finally:
        h.remove()
