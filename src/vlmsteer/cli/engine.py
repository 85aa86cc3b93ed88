"""``--engine transformers|vllm``: the option and its check, shared by the commands that generate
or extract (eval, extract, select, sweep)."""

from __future__ import annotations

import typer

_ENGINE = typer.Option("transformers", help="Generation engine: transformers (the reference) or vllm (the "
                                            "optional serving engine: pip install \"vlmsteer[vllm]\"; steered "
                                            "runs are checked to have been steered).")


def _engine(value: str) -> str:
    """The generation engine's name, checked before any model work (vLLM: importable, in the
    supported range, so its version also enters the run's identity)."""
    from vlmsteer.engines import Engine

    engine = Engine.parse(value)
    if engine is Engine.VLLM:
        from vlmsteer.engines.vllm_engine import require_vllm

        require_vllm()
    return engine.value
