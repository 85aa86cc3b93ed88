"""Sweeps of a coarse vector over layers × alphas × regions × number of samples, of a
dictionary edit (clamp / scale values) over values × regions, or of visual steering over
layers × alphas × regions."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Sequence

from vlmsteer.data.filters import ANSWER_FIELDS, Filter, as_filter
from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.vqa import compare_runs, require_answers, score_vqa
from vlmsteer.model import VLM
from vlmsteer.positions import Region
from vlmsteer.runs.generation import generate_grid
from vlmsteer.steer.builders import coarse_vector
from vlmsteer.steer.conditions import ConditionSpec
from vlmsteer.steer.dictionary_edit import DictionarySteering, EditMode
from vlmsteer.steer.steerer import Steering
from vlmsteer.store import FeatureStore


@dataclass
class SweepGrid:
    layers: Sequence[int]
    alphas: Sequence[float]
    regions: Sequence[Region]
    n_samples: Sequence[int | None]

    def __len__(self) -> int:
        return len(self.layers) * len(self.alphas) * len(self.regions) * len(self.n_samples)


def run_sweep(vlm: VLM, store: FeatureStore | None, source: Filter | str, target: Filter | str,
              samples: list[Sample], grid: SweepGrid, batch_size: int = 64, max_new_tokens: int = 3, seed: int = 0,
              condition: ConditionSpec | None = None, progress: bool = False,
              edit: DictionarySteering | None = None, engine: str = "transformers", visual: bool = False) -> dict:
    """VQA answers steered by the coarse vector ``mean(target) - mean(source)`` of ``store`` at
    every grid point: answers changed, share of ``source`` answers moved to the ``target``
    answer (when the filters name one answer each), accuracy deltas per answer type. With
    ``condition``, steering applies only where it holds (built at each swept layer). With
    ``edit`` (no store), the dictionary edit at its own layer, its value swept over
    ``grid.alphas`` (clamp values or scale factors; splice and zero take none) and the regions.
    ``engine="vllm"`` answers the whole grid in one vLLM pass. With ``visual`` (no store, no
    edit), VISTA-style visual steering (:class:`~vlmsteer.steer.visual.VisualSteering`) at each
    layer, strength and region."""
    source, target = as_filter(source), as_filter(target)
    if visual and (edit is not None or store is not None or condition is not None):
        raise VlmsteerError("a visual sweep takes no store, dictionary edit or condition")
    if edit is None and not visual:
        if store is None:
            raise VlmsteerError("a vector sweep needs a feature store to build the vector from")
        missing = [l for l in grid.layers if l not in store.layers]
        if missing:
            raise VlmsteerError(f"{store.path}: layers {missing} not in this store (has {store.layers})")
        for name, flt in (("source", source), ("target", target)):
            if len(store.select(flt)) == 0:
                raise VlmsteerError(f"{store.path}: no samples match the {name} filter ({flt})")
    source_answer, target_answer = (f.value_of(*ANSWER_FIELDS) for f in (source, target))
    points: list[tuple[object, dict]] = []  # (steering, what the row says of it)
    if visual:
        from vlmsteer.steer.visual import VisualSteering

        for layer, alpha, region in itertools.product(grid.layers, grid.alphas, grid.regions):
            points.append((VisualSteering(alpha, (layer,), region),
                           {"layer": layer, "alpha": alpha, "region": region.value, "n_samples": None,
                            "vector_samples": None}))
    elif edit is not None:
        values = grid.alphas if edit.mode in (EditMode.CLAMP, EditMode.SCALE) else [edit.value]
        for value, region in itertools.product(values, grid.regions):
            points.append((replace(edit, value=value, region=region),
                           {"layer": edit.layer, "alpha": value, "region": region.value, "n_samples": None,
                            "vector_samples": None}))
    else:
        for layer, n in itertools.product(grid.layers, grid.n_samples):
            vec = coarse_vector(store, source, target=target, layers=[layer], max_samples=n, seed=seed)
            cond = condition.build(layer) if condition is not None else None
            for alpha, region in itertools.product(grid.alphas, grid.regions):
                points.append((Steering(vec, alpha, region=region, condition=cond),
                               {"layer": layer, "alpha": alpha, "region": region.value, "n_samples": n,
                                "vector_samples": vec.n_source + vec.n_target}))
    require_answers(samples)
    answers = generate_grid(vlm, samples, [None] + [p for p, _ in points], batch_size=batch_size,
                            max_new_tokens=max_new_tokens, progress=progress, description="sweep", engine=engine)
    base, base_rep = answers[0], score_vqa(samples, answers[0])
    rows = []
    for (_, row), preds in zip(points, answers[1:]):
        rep = score_vqa(samples, preds)
        cmp = compare_runs(base, preds, source=source_answer, target=target_answer)
        rows.append({**row, "changed": cmp["changed"], "moved_fraction": cmp.get("source_moved_fraction"),
                     "target_after": cmp.get("target", {}).get("after"), "accuracy": rep.per_type,
                     "accuracy_delta": {t: rep.per_type[t] - base_rep.per_type[t] for t in rep.per_type}})
    return _sweep_result(source, target, None if edit is not None else condition and vars(condition),
                         edit.describe() if edit is not None else None, base, base_rep, samples, rows, target_answer,
                         visual)


def _sweep_result(source, target, condition, edit, base, base_rep, samples, rows, target_answer, visual) -> dict:
    return {"source": str(source), "target": str(target), "condition": condition, "edit": edit, "visual": visual,
            "baseline_accuracy": base_rep.per_type, "n": len(samples), "rows": rows,
            "target_before": compare_runs(base, base, target=target_answer).get("target", {}).get("before")}


