"""The official VQAv2 accuracy, question by question equal to the official evaluator.

Answers are normalized by :mod:`vlmsteer.data.text` (the official punctuation, number,
article and contraction steps). As in the official code (``vqaEval.py``, "Fixed processing
answers bug" revision):

- every answer is first whitespace-cleaned; the prediction and the references are
  normalized only when the (cleaned) references disagree, so "two" scores 0 against ten
  identical "2" references;
- the accuracy is the mean over the reference entries of ``min(#matches among the other
  entries / 3, 1)``, where "the other entries" are those not *equal* to the left-out one:
  with official annotations every entry has its own ``answer_id``, so exactly one is left
  out; entries that are identical as a whole (same text after normalization and same other
  fields) are left out together, as the official ``item != gtAnsDatum`` does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Hashable, Sequence

from vlmsteer.data.text import clean_whitespace, normalize_answer
from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError

__all__ = ["normalize_answer", "vqa_accuracy", "evaluate_vqa", "compare_runs", "VQAReport"]


def vqa_accuracy(prediction: str, references: Sequence[str], reference_ids: Sequence[Hashable] | None = None,
                 always_normalize: bool = False) -> float:
    """Official accuracy (0..1) of ``prediction`` against the reference answers.

    ``reference_ids`` (from :func:`vlmsteer.data.vqav2.entry_identity`) say which entries are distinct apart
    from their text; without them every entry is distinct, as with official annotations.
    ``always_normalize=True`` normalizes the prediction in every case (lmms-eval's choice).
    A single reference answer (a JSONL dataset's ``answer``) scores exact match after the same
    normalisation: the leave-one-out formula, made for ten annotators, would score it 0 whatever
    the prediction.
    """
    if not references:
        raise ValueError("no reference answers")
    if len(references) == 1:
        ref, pred = clean_whitespace(references[0]), clean_whitespace(prediction)
        if always_normalize:
            ref, pred = normalize_answer(ref), normalize_answer(pred)
        return float(pred == ref)
    ids = list(range(len(references))) if reference_ids is None or len(reference_ids) == 0 else list(reference_ids)
    if len(ids) != len(references):
        raise ValueError("references and reference ids differ in length")
    refs = [clean_whitespace(r) for r in references]
    pred = clean_whitespace(prediction)
    if len(set(refs)) > 1:
        refs = [normalize_answer(r) for r in refs]
        pred = normalize_answer(pred)
    elif always_normalize:
        pred = normalize_answer(pred)
    entries = list(zip(refs, ids))
    scores = []
    for left_out in entries:
        matches = sum(1 for e in entries if e != left_out and e[0] == pred)
        scores.append(min(1, float(matches) / 3))
    return float(sum(scores)) / len(scores)


@dataclass
class VQAReport:
    """Accuracy per answer type, micro and macro overall, and answer counts."""

    per_type: dict[str, float]
    counts_per_type: dict[str, int]
    micro: float
    macro: float
    answer_counts: dict[str, int]
    n: int
    per_sample: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"n": self.n, "accuracy": {"micro": self.micro, "macro": self.macro, **self.per_type},
                "questions_per_type": self.counts_per_type, "answer_counts": self.answer_counts}


def evaluate_vqa(predictions: list[str], references: list[list[str]], answer_types: list[str | None],
                 reference_ids: list[list[Hashable]] | None = None) -> VQAReport:
    if not (len(predictions) == len(references) == len(answer_types)):
        raise ValueError("predictions, references and answer types differ in length")
    if not predictions:
        raise VlmsteerError("no predictions to evaluate")
    ids = reference_ids if reference_ids is not None else [None] * len(predictions)
    scores = [vqa_accuracy(p, r, i) for p, r, i in zip(predictions, references, ids)]
    by_type: dict[str, list[float]] = {}
    for s, t in zip(scores, answer_types):
        by_type.setdefault(t or "unknown", []).append(s)
    per_type = {t: 100.0 * sum(v) / len(v) for t, v in sorted(by_type.items())}
    micro = 100.0 * sum(scores) / len(scores) if scores else 0.0
    macro = sum(per_type.values()) / len(per_type) if per_type else 0.0
    counts = Counter(normalize_answer(p) for p in predictions)
    return VQAReport(per_type=per_type, counts_per_type={t: len(v) for t, v in sorted(by_type.items())},
                     micro=micro, macro=macro, answer_counts=dict(counts.most_common()), n=len(scores),
                     per_sample=scores)


def compare_runs(baseline: list[str], steered: list[str], source: str | Sequence[str] | None = None,
                 target: str | Sequence[str] | None = None) -> dict:
    """How a steered run differs from its baseline on the same questions. ``source`` and
    ``target`` are an answer or several (e.g. ``["yes", "two"]``), compared normalized."""
    b = [normalize_answer(x) for x in baseline]
    s = [normalize_answer(x) for x in steered]
    out: dict = {"changed": sum(x != y for x, y in zip(b, s)), "n": len(b)}
    wanted = {name: _answer_set(words) for name, words in (("source", source), ("target", target))}
    for name, answers in wanted.items():
        if answers is not None:
            before, after = sum(x in answers for x in b), sum(x in answers for x in s)
            out[name] = {"answer": "|".join(sorted(answers)), "before": before, "after": after,
                         "delta": after - before}
    if wanted["source"] is not None and wanted["target"] is not None:
        src_rows = [i for i, x in enumerate(b) if x in wanted["source"]]
        out["source_moved_to_target"] = sum(1 for i in src_rows if s[i] in wanted["target"])
        out["source_moved_fraction"] = out["source_moved_to_target"] / len(src_rows) if src_rows else 0.0
    return out


def _answer_set(words: str | Sequence[str] | None) -> set[str] | None:
    if words is None:
        return None
    return {normalize_answer(w) for w in ([words] if isinstance(words, str) else words)}


def require_answers(samples: list[Sample]) -> None:
    missing = [s.id for s in samples if not s.answers]
    if missing:
        raise VlmsteerError(f"{len(missing)} samples have no reference answers (first: {missing[0]})")


def score_vqa(samples: list[Sample], predictions: list[str]) -> VQAReport:
    """Official accuracy of ``predictions`` on ``samples`` (their reference entries)."""
    return evaluate_vqa(predictions, [s.answers for s in samples], [s.answer_type for s in samples],
                        [s.answer_ids for s in samples])
