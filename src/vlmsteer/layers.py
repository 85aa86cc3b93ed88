"""Layer indices: the one place where a negative layer (counted from the end) is resolved."""

from __future__ import annotations

from vlmsteer.errors import VlmsteerError


def resolve_layer(layer: int, num_layers: int, owner: str) -> int:
    """``layer`` as an index in ``0..num_layers-1`` (negative counts from the end), or a
    one-line error naming ``owner`` (a model or a store) and the valid range."""
    layer = int(layer)
    if not -num_layers <= layer < num_layers:
        raise VlmsteerError(f"layer {layer} is out of range for {owner} ({num_layers} layers: 0..{num_layers - 1}"
                            f" or -{num_layers}..-1)")
    return layer % num_layers
