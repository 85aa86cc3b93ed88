"""``vlmsteer select``: rank candidate steering vectors by the paper's selection metric
(:mod:`vlmsteer.steer.selection`) on VQA answers, and write ``selection.json``."""

from __future__ import annotations

from pathlib import Path

from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError
from vlmsteer.model import VLM
from vlmsteer.outputs import atomic_write_json
from vlmsteer.positions import Region
from vlmsteer.runs.generation import generate_grid
from vlmsteer.steer.conditions import ConditionSpec
from vlmsteer.steer.selection import RELATIVE_TO, rank, selection_score
from vlmsteer.steer.steerer import Steering
from vlmsteer.steer.vector import SteeringVector


def rank_vectors(vlm: VLM, samples: list[Sample], candidates: dict[str, SteeringVector], *, alpha: float = 1.0,
                 region: Region | str = Region.LAST_PROMPT, top_n: int = 5, relative_to: str = "base",
                 distinct: bool = True, batch_size: int = 64, max_new_tokens: int = 3,
                 condition: ConditionSpec | None = None, progress: bool = False,
                 engine: str = "transformers") -> dict:
    """Answer ``samples`` without steering and with each candidate; score every candidate by
    the selection metric and rank them (``distinct``: the best per set of primary answers).
    Both forms of the metric are scored on the same answers: ``ranking`` follows
    ``relative_to``, ``rankings`` holds both side by side.
    With ``condition``, each candidate steers only where the condition holds (fine-grained).
    ``engine="vllm"`` answers every candidate in one vLLM pass."""
    region = Region.parse(region)
    built: dict[int, object] = {}  # one condition per steering layer

    def steering(vec: SteeringVector) -> Steering:
        first = min(vec.check_model(vlm))
        if condition is not None and first not in built:
            built[first] = condition.build(first)
        return Steering(vec, alpha, region=region, condition=built.get(first)).check(vlm)

    steerings = {name: steering(vec) for name, vec in candidates.items()}
    if relative_to not in RELATIVE_TO:
        raise VlmsteerError(f"unknown relative_to {relative_to!r}; choose base or total", "relative_to")
    base, *answers = generate_grid(vlm, samples, [None, *steerings.values()], batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, progress=progress, description="candidates",
                                   engine=engine)
    selections: dict[str, list] = {form: [] for form in RELATIVE_TO}
    for name, steered in zip(steerings, answers):
        for form in RELATIVE_TO:
            selections[form].append(selection_score(base, steered, top_n=top_n, name=name, relative_to=form))
    rankings = {form: [{**s.to_dict(), "source": candidates[s.name].source, "target": candidates[s.name].target}
                       for s in rank(found, distinct=distinct)] for form, found in selections.items()}
    ranking = rankings[relative_to]
    return {"alpha": alpha, "region": region.value, "n": len(samples), "relative_to": relative_to,
            "condition": next(iter(steerings.values())).describe()["condition"] if steerings else None,
            "ranking": ranking, "rankings": rankings}


def write_selection(result: dict, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "selection.json"
    atomic_write_json(path, result, durable=False, indent=2)
    return path
