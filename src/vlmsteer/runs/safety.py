"""``vlmsteer eval safety``: answer harmful prompts, count refusals and attack successes."""

from __future__ import annotations

from pathlib import Path

from vlmsteer.data.io import read_baseline, write_run_outputs
from vlmsteer.data.sample import Sample
from vlmsteer.evaluate.safety import compare_safety_runs, is_refusal, safety_report
from vlmsteer.model import VLM
from vlmsteer.runs.generation import PARTS, generate_texts
from vlmsteer.steer.steerer import Steering


def evaluate_safety_run(vlm: VLM, samples: list[Sample], out: str | Path, *, steering: Steering | None = None,
                        baseline: str | Path | None = None, batch_size: int = 16, max_new_tokens: int = 64,
                        progress: bool = False, part: tuple[int, int] | None = None,
                        engine: str = "transformers") -> dict | None:
    """``vlmsteer eval safety``: answer harmful prompts, count refusals and attack successes per
    category, compare with a baseline run folder, write ``predictions.jsonl`` and ``metrics.json``."""
    base = read_baseline(baseline, samples, field="response", what="prompts") if baseline is not None else None
    responses = generate_texts(vlm, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, steering=steering,
                               progress=progress, description="answering", part=part,
                               parts_dir=Path(out) / PARTS, engine=engine)
    if responses is None:  # a data-parallel rank other than 0
        return None
    metrics = safety_report(responses, [s.meta.get("category") for s in samples]).to_dict()
    if steering is not None:
        metrics["steering"] = steering.describe()
    if base is not None:
        metrics["vs_baseline"] = compare_safety_runs(base, responses)
    write_run_outputs(out, [{"id": s.id, "digest": s.digest, "prompt": s.prompt, "response": r,
                             "refused": is_refusal(r),
                             "category": s.meta.get("category"), "image": s.image_path}
                            for s, r in zip(samples, responses)], metrics)
    return metrics
