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


class _Differ(Exception):
    pass


@contextmanager
def encode_each_image_once(encoder: torch.nn.Module | None) -> Iterator[None]:
    """Run the image encoder once per distinct image of a batch: where the pixel tensor it is
    called with (a batch of whole images, ``(images, channels, height, width)``) repeats an
    image, e.g. several questions about one picture, only the distinct ones are encoded and
    every tensor of the output is expanded back to one row per image. Encoders called with
    another layout (Qwen2-VL's flattened patches) run as they are; ``None``: nothing to do."""
    if encoder is None:
        yield
        return
    inverse: list[tuple[torch.Tensor, int]] = []  # this call's row per image, and the rows encoded

    def distinct(module, args, kwargs):
        inverse.clear()
        pixels = args[0] if args else kwargs.get("pixel_values")
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or len(pixels) < 2:
            return None
        n = len(pixels)
        try:
            _, index = torch.unique(pixels.flatten(1), dim=0, return_inverse=True)
        except (RuntimeError, NotImplementedError):  # a device or dtype without it: encode every row
            return None
        first = torch.full((int(index.max()) + 1,), n, dtype=torch.long, device=index.device)
        first.scatter_reduce_(0, index, torch.arange(n, device=index.device), "amin")  # each one's first row
        if len(first) == n:
            return None

        def subset(value):  # every per-image input (Idefics2's patch masks) must repeat with the pixels
            if not (isinstance(value, torch.Tensor) and value.dim() >= 1 and len(value) == n):
                return value
            if not torch.equal(value[first][index], value):
                raise _Differ
            return value[first]

        try:
            args, kwargs = tuple(subset(a) for a in args), {k: subset(v) for k, v in kwargs.items()}
        except _Differ:
            return None
        inverse.append((index, len(first)))
        return args, kwargs

    def expand(value):
        index, n = inverse[0]
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and len(value) == n:
            return value[index]
        if isinstance(value, tuple):
            return tuple(expand(v) for v in value)
        return value

    def expanded(module, args, kwargs, output):
        if not inverse:
            return None
        if isinstance(output, dict):  # transformers' ModelOutput
            return type(output)(**{k: expand(v) for k, v in output.items()})
        return expand(output)

    handles = [encoder.register_forward_pre_hook(distinct, with_kwargs=True),
               encoder.register_forward_hook(expanded, with_kwargs=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


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
