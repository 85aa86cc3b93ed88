"""``vlmsteer eval vqa``: generate answers for VQA samples and score them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from vlmsteer.data.sample import Sample
from vlmsteer.evaluate.vqa import VQAReport, evaluate_vqa
from vlmsteer.model import VLM
from vlmsteer.evaluate.runner import generate_responses


def run_vqa(vlm: VLM, samples: list[Sample], *, batch_size: int = 32, max_new_tokens: int = 8,
            context: Callable | None = None, progress: bool = True) -> tuple[list[str], VQAReport]:
    from vlmsteer.errors import VlmsteerError

    missing = [s.id for s in samples if not s.answers]
    if missing:
        raise VlmsteerError(f"{len(missing)} samples have no reference answers (first: {missing[0]})")
    responses = generate_responses(vlm, samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   context=context, progress=progress, description="answering")
    preds = [r.text for r in responses]
    return preds, score_vqa(samples, preds)


def score_vqa(samples: list[Sample], predictions: list[str]) -> VQAReport:
    """Official accuracy of ``predictions`` on ``samples`` (their reference entries)."""
    return evaluate_vqa(predictions, [s.answers for s in samples], [s.answer_type for s in samples],
                        [s.answer_ids for s in samples])


def write_vqa_outputs(out: str | Path, samples: list[Sample], predictions: list[str], report: VQAReport,
                      extra: dict | None = None) -> None:
    from vlmsteer.data.io import write_run_outputs

    rows = [{"id": s.id, "prompt": s.prompt, "prediction": p, "answer": s.answer, "answer_type": s.answer_type,
             "accuracy": acc, "image": s.image_path} for s, p, acc in zip(samples, predictions, report.per_sample)]
    write_run_outputs(out, rows, {**report.to_dict(), **(extra or {})})


def read_predictions(path: str | Path) -> list[dict]:
    from vlmsteer.data.io import read_jsonl

    return read_jsonl(path)


def compare_to_baseline(baseline: str | Path, samples: list[Sample], predictions: list[str], report: VQAReport,
                        source: str | None = None, target: str | None = None) -> dict:
    """Answers changed, source/target count changes and per-type accuracy deltas vs a baseline run."""
    from vlmsteer.errors import input_error
    from vlmsteer.evaluate.vqa import compare_runs

    base = Path(baseline)
    rows = read_predictions(base / "predictions.jsonl")
    by_id = {r["id"]: r for r in rows}
    missing = [s.id for s in samples if s.id not in by_id]
    if missing:
        raise input_error(base / "predictions.jsonl", f"baseline lacks {len(missing)} of these questions "
                                                      f"(first: {missing[0]})")
    base_preds = [by_id[s.id]["prediction"] for s in samples]
    base_report = score_vqa(samples, base_preds)
    out = compare_runs(base_preds, predictions, source=source, target=target)
    out["accuracy_delta"] = {t: report.per_type[t] - base_report.per_type.get(t, 0.0) for t in report.per_type}
    out["baseline_accuracy"] = base_report.per_type
    return out
