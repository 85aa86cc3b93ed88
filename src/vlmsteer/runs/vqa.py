"""``vlmsteer eval vqa``: generate answers for VQA samples and score them."""

from __future__ import annotations

from pathlib import Path

from vlmsteer.data.io import read_baseline, write_run_outputs
from vlmsteer.data.sample import Sample
from vlmsteer.evaluate.vqa import VQAReport, compare_runs, require_answers, score_vqa
from vlmsteer.model import VLM
from vlmsteer.runs.generation import PARTS, generate_responses, generate_texts
from vlmsteer.steer.steerer import Steering


def run_vqa(vlm: VLM, samples: list[Sample], *, batch_size: int = 32, max_new_tokens: int = 8,
            steering: Steering | None = None, progress: bool = False) -> tuple[list[str], VQAReport]:
    """Greedy answers (steered by ``steering`` if given) and their official accuracy."""
    require_answers(samples)
    responses = generate_responses(vlm, samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   steering=steering, progress=progress, description="answering")
    preds = [r.text for r in responses]
    return preds, score_vqa(samples, preds)


def evaluate_vqa_run(vlm: VLM, samples: list[Sample], out: str | Path, *, steering: Steering | None = None,
                     baseline: str | Path | None = None, source: str | None = None, target: str | None = None,
                     batch_size: int = 32, max_new_tokens: int = 8, progress: bool = False,
                     part: tuple[int, int] | None = None, engine: str = "transformers") -> dict | None:
    """``vlmsteer eval vqa``: answer, score, compare with a baseline run folder (answers
    changed, ``source`` -> ``target`` counts, accuracy deltas), write ``predictions.jsonl`` and
    ``metrics.json`` to ``out``; returns the metrics. With ``part=(rank, world)`` the ranks
    answer slices and rank 0 scores them all (the other ranks return None)."""
    require_answers(samples)
    base = read_baseline(baseline, samples, what="questions") if baseline is not None else None
    preds = generate_texts(vlm, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, steering=steering,
                           progress=progress, description="answering", part=part,
                           parts_dir=Path(out) / PARTS, engine=engine)
    if preds is None:
        return None
    report = score_vqa(samples, preds)
    extra = pope_metrics(samples, preds)
    if steering is not None:
        extra["steering"] = steering.describe()
    if base is not None:
        extra["vs_baseline"] = compare_to_baseline(base, samples, preds, report, source=source, target=target)
        if "pope" in extra:
            extra["vs_baseline"]["pope_baseline"] = pope_metrics(samples, base)["pope"]
    write_vqa_outputs(out, samples, preds, report, extra=extra)
    return {**report.to_dict(), **extra}


def pope_metrics(samples: list[Sample], predictions: list[str]) -> dict:
    """``{"pope": ...}``, POPE's figures of the answers, where the samples are POPE questions."""
    if not samples or any("pope_label" not in s.meta for s in samples):
        return {}
    from vlmsteer.evaluate.pope import pope_scores

    return {"pope": pope_scores(predictions, [s.meta["pope_label"] for s in samples]).to_dict()}


def write_vqa_outputs(out: str | Path, samples: list[Sample], predictions: list[str], report: VQAReport,
                      extra: dict | None = None) -> None:
    rows = [{"id": s.id, "digest": s.digest, "prompt": s.prompt, "prediction": p, "answer": s.answer,
             "answer_type": s.answer_type, "accuracy": acc, "image": s.image_path}
            for s, p, acc in zip(samples, predictions, report.per_sample)]
    write_run_outputs(out, rows, {**report.to_dict(), **(extra or {})})


def compare_to_baseline(base_preds: list[str], samples: list[Sample], predictions: list[str], report: VQAReport,
                        source: str | None = None, target: str | None = None) -> dict:
    """Answers changed, source/target count changes and per-type accuracy deltas vs baseline answers."""
    base_report = score_vqa(samples, base_preds)
    out = compare_runs(base_preds, predictions, source=source, target=target)
    out["accuracy_delta"] = {t: report.per_type[t] - base_report.per_type.get(t, 0.0) for t in report.per_type}
    out["baseline_accuracy"] = base_report.per_type
    return out
