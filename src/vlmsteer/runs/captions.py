"""``vlmsteer eval captions``: generate captions, score them (CIDEr, style keywords), compare runs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vlmsteer.data.io import read_baseline, write_run_outputs
from vlmsteer.data.keywords import STYLE_KEYWORDS, KeywordSet
from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.captions import compare_caption_runs, evaluate_captions
from vlmsteer.evaluate.cider import Tokenizer, resolve_tokenizer
from vlmsteer.evaluate.shapes_captions import load_scenes
from vlmsteer.model import VLM
from vlmsteer.runs.generation import PARTS, generate_responses, generate_texts
from vlmsteer.evaluate.chair import chair_scores
from vlmsteer.runs.scoring import ChairAnnotations, coco_id
from vlmsteer.steer.steerer import Steering


def run_captions(vlm: VLM, samples: list[Sample], *, batch_size: int = 32, max_new_tokens: int = 32,
                 steering: Steering | None = None, progress: bool = False) -> list[str]:
    responses = generate_responses(vlm, samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   steering=steering, progress=progress, description="captioning")
    return [r.text for r in responses]


def _scenes(samples: list[Sample]) -> list[dict] | None:
    """Each image's scene where the samples come from one shapes world (its
    ``scenes_val2014.json`` beside the images' folder), else None."""
    roots = {Path(s.image_path).parent.parent for s in samples if s.image_path}
    root = next(iter(roots)) if len(roots) == 1 else None
    if root is None or not (root / "scenes_val2014.json").is_file():
        return None
    scenes = load_scenes(root)
    found = [scenes.get(s.meta.get("image_id")) for s in samples]
    return None if any(scene is None for scene in found) else found


def evaluate_caption_run(vlm: VLM, samples: list[Sample], out: str | Path, *, steering: Steering | None = None,
                         baseline: str | Path | None = None, tokenizer: Tokenizer = "auto", batch_size: int = 32,
                         max_new_tokens: int = 32, progress: bool = False,
                         part: tuple[int, int] | None = None, words: Sequence[str] = (),
                         engine: str = "transformers", chair: ChairAnnotations | None = None) -> dict | None:
    """``vlmsteer eval captions``: caption, score (CIDEr, style shares, the share of captions
    naming each of ``words``, and CHAIR against ``chair``'s annotations), compare with a baseline
    run folder, write ``predictions.jsonl`` and ``metrics.json`` to ``out``; returns the metrics
    (with ``part``, see :func:`~vlmsteer.runs.generation.generate_texts`: rank 0 only)."""
    resolve_tokenizer(tokenizer)  # fail before generating
    if any(not w.strip() for w in words):
        raise VlmsteerError("--word needs a word, not an empty string", "word")
    base = read_baseline(baseline, samples, what="images") if baseline is not None else None
    if chair is not None:  # the truth of every image, once, before generating (an unknown image fails here)
        ids = [coco_id(s.meta.get("image_id", s.id)) for s in samples]
        truth = chair.truth(ids)
    caps = generate_texts(vlm, samples, batch_size=batch_size, max_new_tokens=max_new_tokens, steering=steering,
                          progress=progress, description="captioning", part=part,
                          parts_dir=Path(out) / PARTS, engine=engine)
    if caps is None:
        return None
    styles = {**STYLE_KEYWORDS, **{w.strip(): KeywordSet(w.strip(), (w.strip(),)) for w in words}}
    report = evaluate_captions(samples, caps, styles, tokenizer=tokenizer)
    extra = {}
    if steering is not None:
        extra["steering"] = steering.describe()
    if base is not None:
        extra["vs_baseline"] = compare_caption_runs(base, caps, evaluate_captions(samples, base, styles,
                                                                                  tokenizer=tokenizer), report, styles,
                                                    _scenes(samples))
    rows = [{"id": s.id, "digest": s.digest, "prompt": s.prompt, "prediction": c, "cider": sc, "image": s.image_path}
            for s, c, sc in zip(samples, caps, report.per_sample_cider)]
    if chair is not None:
        scores = chair_scores(list(zip(ids, caps)), truth, chair.vocab)
        extra["chair"] = scores.summary()
        for row, r in zip(rows, scores.rows):
            row.update(image_id=r.image_id, objects=r.mentioned, hallucinated=[o for _, o in r.hallucinated])
        if base is not None:
            extra["vs_baseline"]["chair_baseline"] = chair_scores(list(zip(ids, base)), truth, chair.vocab).summary()
    write_run_outputs(out, rows, {**report.to_dict(), **extra})
    return {**report.to_dict(), **extra}
