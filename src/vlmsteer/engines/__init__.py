"""How generation runs, behind one protocol (:class:`~vlmsteer.engines.base.GenerationEngine`)
and one registry (:data:`ENGINES`): ``transformers`` (the reference, the default) and ``vllm``
(the optional serving engine, :mod:`vlmsteer.engines.vllm_engine`). Both take the same
``Steering`` values and give the same :class:`Response` records; code outside this package
asks the registry for an engine and never which one it holds.

A new engine is one file: a class with ``name``, ``for_model(vlm, **options)``
and ``generate(samples, steering, ...)``, registered with ``ENGINES.add(name, EngineKind(...),
"one line")``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from vlmsteer.engines.base import GenerationEngine, Response
from vlmsteer.engines.transformers_engine import TransformersEngine
from vlmsteer.registry import Registry


@dataclass(frozen=True)
class EngineKind:
    start: Callable[..., GenerationEngine]  # (vlm, batch_size=...) -> the engine for that model
    check: Callable[[], object] = lambda: None  # before any model work: importable, versions in range
    one_process: bool = False  # schedules its own batches: refused under torchrun
    reads_features: bool = False  # can read features for `extract` (the transformers path needs no reader)


def _start_vllm(vlm, batch_size: int = 16):
    from vlmsteer.engines.vllm_engine import VllmEngine

    return VllmEngine.for_model(vlm)


def _check_vllm():
    from vlmsteer.engines.vllm_engine import require_vllm

    return require_vllm()


ENGINES: Registry[EngineKind] = Registry("engine", "--engine")
ENGINES.add("transformers", EngineKind(TransformersEngine.for_model), "the reference: transformers' generate, "
            "batched")
ENGINES.add("vllm", EngineKind(_start_vllm, _check_vllm, one_process=True, reads_features=True),
            "the optional serving engine (the vllm extra of vlmsteer); steered runs are checked to have been steered")


def start_engine(name: str, vlm, batch_size: int = 16) -> GenerationEngine:
    """The engine called ``name`` for ``vlm``."""
    return ENGINES.get(name).start(vlm, batch_size=batch_size)


__all__ = ["ENGINES", "EngineKind", "GenerationEngine", "Response", "TransformersEngine", "start_engine"]
