"""How generation runs: ``transformers`` (the reference, the default) or ``vllm`` (the optional
serving engine, :mod:`vlmsteer.engines.vllm_engine`); both take the same ``Steering`` values and
give the same :class:`Response` records."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Engine(str, Enum):
    TRANSFORMERS = "transformers"
    VLLM = "vllm"

    @classmethod
    def parse(cls, value: "str | Engine") -> "Engine":
        from vlmsteer.errors import parse_choice

        return parse_choice(cls, value, "engine")


@dataclass
class Response:
    sample_id: str
    text: str
    n_tokens: int
    tokens: list[int] | None = None  # the response's token ids, where the engine gives them
