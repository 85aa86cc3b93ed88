"""``--engine``: the option (its choices from :data:`vlmsteer.engines.ENGINES`) and its check,
shared by the commands that generate or extract (eval, extract, select, sweep)."""

from __future__ import annotations

from vlmsteer.cli.common import registry_option
from vlmsteer.engines import ENGINES

_ENGINE = registry_option("transformers", registry=ENGINES, intro="Generation engine.")


def _engine(value: str) -> str:
    """The generation engine's name, checked before any model work (vLLM: importable, in the
    supported range, so its version also enters the run's identity)."""
    entry = ENGINES.entry(value)
    entry.value.check()
    return entry.name
