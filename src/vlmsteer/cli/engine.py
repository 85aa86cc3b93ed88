"""``--engine``: the option (its choices from :data:`vlmsteer.engines.ENGINES`) and its check,
shared by the commands that generate or extract (eval, extract, select, sweep)."""

from __future__ import annotations

from vlmsteer.cli.common import registry_option
from vlmsteer.engines import ENGINES
from vlmsteer.errors import VlmsteerError

_ENGINE = registry_option("transformers", registry=ENGINES, intro="Generation engine.")


def _engine(value: str) -> str:
    """The generation engine's name, checked before any model work (vLLM: importable, in the
    supported range, so its version also enters the run's identity)."""
    from vlmsteer.runs.protocol import rank_and_world

    entry = ENGINES.entry(value)
    world = rank_and_world()[1]
    if world > 1 and entry.value.one_process:  # every rank refuses before anything starts
        raise VlmsteerError(f"the {entry.name} engine runs in one process (it schedules its own batches): start "
                            f"the command without torchrun (WORLD_SIZE is {world})", "engine", every_rank=True)
    entry.value.check()
    return entry.name
