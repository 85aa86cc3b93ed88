"""The official VQAv2 accuracy.

A predicted answer is normalized (lower case, punctuation, number words to digits,
articles dropped, contractions restored). Its accuracy against 10 human answers is the
mean, over the 10 leave-one-out subsets of 9 answers, of ``min(#matches / 3, 1)``.
As in the official evaluation, reference answers are normalized only when they disagree.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Contractions written without their apostrophe, mapped back (the official list's pattern).
_CONTRACTED = [
    "aren't", "can't", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't", "hadn't've", "hasn't",
    "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's", "i'd", "i'd've", "i'm", "i've", "isn't",
    "it'd", "it'd've", "it'll", "let's", "ma'am", "mightn't", "mightn't've", "might've", "mustn't", "must've",
    "needn't", "not've", "o'clock", "oughtn't", "'ow's'at", "shan't", "she'd", "she'd've", "she'll", "she's",
    "should've", "shouldn't", "shouldn't've", "somebody'd", "somebody'd've", "somebody'll", "somebody's",
    "someone'd", "someone'd've", "someone'll", "someone's", "something'd", "something'd've", "something'll",
    "that's", "there'd", "there'd've", "there're", "there's", "they'd", "they'd've", "they'll", "they're",
    "they've", "'twas", "wasn't", "we'd", "we'd've", "we'll", "we're", "we've", "weren't", "what'll", "what're",
    "what's", "what've", "when's", "where'd", "where's", "where've", "who'd", "who'd've", "who'll", "who's",
    "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't", "wouldn't've", "y'all", "y'all'll",
    "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
]
_CONTRACTIONS = {c.replace("'", ""): c for c in _CONTRACTED}
_CONTRACTIONS.update({"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "cant": "can't", "wont": "won't"})


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _digits_articles(text: str) -> str:
    words = []
    for w in text.lower().split():
        w = _NUMBERS.get(w, w)
        if w not in _ARTICLES:
            words.append(w)
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """Normalize one answer as the official VQAv2 evaluation does."""
    a = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    return _digits_articles(_punctuation(a))


def vqa_accuracy(prediction: str, references: list[str], always_normalize: bool = False) -> float:
    """Official accuracy of ``prediction`` against (usually 10) reference answers.

    Faithful to the official code, the prediction (like the references) is normalized only
    when the references disagree, so "two" scores 0 against ten identical "2" references.
    ``always_normalize=True`` normalizes the prediction in every case (lmms-eval's choice).
    """
    if not references:
        raise ValueError("no reference answers")
    refs = [r.replace("\n", " ").replace("\t", " ").strip() for r in references]
    pred = prediction.replace("\n", " ").replace("\t", " ").strip()
    if len(set(refs)) > 1:
        refs = [normalize_answer(r) for r in refs]
        pred = normalize_answer(pred)
    elif always_normalize:
        pred = normalize_answer(pred)
    scores = []
    for i in range(len(refs)):
        others = refs[:i] + refs[i + 1:]
        scores.append(min(1.0, sum(r == pred for r in others) / 3.0))
    return sum(scores) / len(scores)


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


def evaluate_vqa(predictions: list[str], references: list[list[str]], answer_types: list[str | None]) -> VQAReport:
    if not (len(predictions) == len(references) == len(answer_types)):
        raise ValueError("predictions, references and answer types differ in length")
    scores = [vqa_accuracy(p, r) for p, r in zip(predictions, references)]
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


def compare_runs(baseline: list[str], steered: list[str], source: str | None = None,
                 target: str | None = None) -> dict:
    """How a steered run differs from its baseline on the same questions."""
    b = [normalize_answer(x) for x in baseline]
    s = [normalize_answer(x) for x in steered]
    out: dict = {"changed": sum(x != y for x, y in zip(b, s)), "n": len(b)}
    for name, word in (("source", source), ("target", target)):
        if word is not None:
            w = normalize_answer(word)
            before, after = b.count(w), s.count(w)
            out[name] = {"answer": w, "before": before, "after": after, "delta": after - before}
    if source is not None and target is not None:
        ws, wt = normalize_answer(source), normalize_answer(target)
        src_rows = [i for i, x in enumerate(b) if x == ws]
        out["source_moved_to_target"] = sum(1 for i in src_rows if s[i] == wt)
        out["source_moved_fraction"] = out["source_moved_to_target"] / len(src_rows) if src_rows else 0.0
    return out
