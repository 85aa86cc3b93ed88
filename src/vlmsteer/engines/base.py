"""What every generation engine gives and takes: :class:`Response` records, and the
:class:`GenerationEngine` protocol (greedy generation with one ``Steering`` for all requests or
one per request)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence


@dataclass
class Response:
    sample_id: str
    text: str
    n_tokens: int
    tokens: list[int] | None = None  # the response's token ids, where the engine gives them


class GenerationEngine(Protocol):
    name: str

    def generate(self, samples: Sequence[Any], steering: Any = None, *, max_new_tokens: int = 16,
                 progress: bool = False, description: str = "generating") -> list[Response]:
        """Greedy responses; ``steering`` is one ``Steering`` (or None) for every request, or a
        sequence with one per request."""
        ...
