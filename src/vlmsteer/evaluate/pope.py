"""POPE (Li et al., 2023: "Evaluating Object Hallucination in Large Vision-Language Models"),
scored exactly as its reference ``evaluate.py`` (RUCAIBox/POPE) does, case by case:

- an answer keeps only its text before the first ``.``, loses every ``,``, and is split on
  single spaces (not on any whitespace); it is "no" when one of the pieces is exactly ``No``,
  ``no`` or ``not``, else "yes" (so ``NO``, ``Not`` and ``no\\n`` read as yes, and an answer
  starting with ``.`` is empty, hence yes);
- a label is negative when it is exactly ``no``, positive otherwise;
- accuracy, precision, recall and F1 of "yes" (the positive class), and the share of "yes".

Where the reference crashes or truncates, this refuses in one line instead: it divides by zero
when the model never says yes (precision) or gets no positive right (F1), and ``zip`` silently
scores only as many questions as the shorter of answers and labels; here undefined metrics are
None and unequal lengths are an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from vlmsteer.errors import VlmsteerError

NEGATIVE_WORDS = ("No", "not", "no")  # the reference's list, case and all


def pope_answer(text: str) -> str:
    """``"yes"`` or ``"no"``, as the reference reads a model's answer."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in words for w in NEGATIVE_WORDS) else "yes"


@dataclass
class PopeScores:
    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float
    precision: float | None  # None where the reference divides by zero (no "yes" at all)
    recall: float | None  # None where there is no positive label
    f1: float | None
    yes_ratio: float

    def to_dict(self) -> dict:
        return asdict(self)


def pope_scores(answers: Sequence[str], labels: Sequence[str]) -> PopeScores:
    """The reference's five figures (and its confusion counts) for model ``answers`` (raw text)
    against POPE ``labels`` (``"yes"`` / ``"no"``), question by question."""
    if len(answers) != len(labels):
        raise VlmsteerError(f"{len(answers)} answers for {len(labels)} POPE labels: score one answer per question")
    if not answers:
        raise VlmsteerError("no POPE answers to score")
    preds = [pope_answer(a) != "no" for a in answers]
    truth = [label != "no" for label in labels]
    tp = sum(p and t for p, t in zip(preds, truth))
    fp = sum(p and not t for p, t in zip(preds, truth))
    tn = sum(not p and not t for p, t in zip(preds, truth))
    fn = sum(not p and t for p, t in zip(preds, truth))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall else None)
    return PopeScores(len(answers), tp, fp, tn, fn, (tp + tn) / len(answers), precision, recall, f1,
                      sum(preds) / len(preds))
