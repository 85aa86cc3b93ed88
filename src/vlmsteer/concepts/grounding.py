"""Grounding concepts in words (final norm + unembedding, real words only) and in images
(the most activating samples); T-Overlap between groundings; cosine similarity."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from vlmsteer.concepts.dictionary import ConceptDictionary
from vlmsteer.concepts.scan import Scan, scan_rows
from vlmsteer.store import FeatureStore

_WORD = re.compile(r"^[a-z][a-z'-]*[a-z]$|^[a-z]$|^[0-9]+$")
_SPACE_MARKERS = ("Ġ", "▁", " ")


@dataclass
class TextGrounding:
    words: list[str]
    logits: list[float]


@dataclass
class ImageGrounding:
    samples: list[dict] = field(default_factory=list)  # records with "activation"


# stopwords that are also common VQA answers stay groundable ("no", "two", "none", ...)
ANSWER_WORDS = frozenset({"no", "not", "none", "nothing", "nobody", "one", "two", "three", "four", "five", "six",
                          "seven", "eight", "nine", "ten", "eleven", "twelve", "fifteen", "twenty", "fifty",
                          "hundred", "top", "bottom", "front", "back", "left", "right", "up", "down", "side"})


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """scikit-learn's English stopwords less :data:`ANSWER_WORDS` (imported when first needed:
    scikit-learn takes 0.8 s to import, which no command should pay before it grounds words)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS - ANSWER_WORDS)


@lru_cache(maxsize=8)
def _word_mask(tokenizer) -> tuple[np.ndarray, tuple[str, ...]]:
    """Which vocabulary entries are real words (no fragments, stopwords, punctuation); digits
    and the answer words of :data:`ANSWER_WORDS` count as words."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    marked = any(str(t).startswith(_SPACE_MARKERS) for t in vocab if t)
    special = set(getattr(tokenizer, "all_special_tokens", []))
    keep = np.zeros(len(vocab), dtype=bool)
    stop = stopwords()
    words = []
    for i, tok in enumerate(vocab):
        tok = str(tok) if tok is not None else ""
        word = tok
        if marked:
            if not tok.startswith(_SPACE_MARKERS):
                words.append("")
                continue  # a continuation fragment
            word = tok.lstrip("".join(_SPACE_MARKERS))
        word = word.lower()
        ok = (tok not in special and bool(_WORD.match(word)) and word not in stop
              and (len(word) > 1 or word.isdigit()))
        keep[i] = ok
        words.append(word if ok else "")
    return keep, tuple(words)


@torch.no_grad()
def ground_text(vlm, dictionary: ConceptDictionary | np.ndarray, top_n: int = 15) -> list[TextGrounding]:
    """Per concept, the top ``top_n`` real words of ``unembed(norm(u_k))`` with their logits."""
    comps = dictionary.components_ if isinstance(dictionary, ConceptDictionary) else np.asarray(dictionary)
    param = next(vlm.unembed.parameters())
    keep, words = _word_mask(vlm.tokenizer)
    out = []
    for a in range(0, len(comps), 256):  # 256 concepts' logits at a time (thousands of SAE latents)
        u = torch.as_tensor(np.asarray(comps[a:a + 256]), dtype=param.dtype, device=param.device)
        out += _top_words(vlm.logits_from_hidden(u).float().cpu().numpy(), keep, words, top_n)
    return out


def _top_words(logits: np.ndarray, keep: np.ndarray, words: tuple[str, ...], top_n: int) -> list[TextGrounding]:
    keep = keep[:logits.shape[1]]
    out = []
    for row in logits:
        masked = np.where(keep, row[:len(keep)], -np.inf)
        order = np.argsort(-masked, kind="stable")
        chosen, seen = [], set()
        for i in order:
            if not np.isfinite(masked[i]) or len(chosen) >= top_n:
                break
            if words[i] in seen:
                continue
            seen.add(words[i])
            chosen.append((words[i], float(row[i])))
        out.append(TextGrounding([w for w, _ in chosen], [v for _, v in chosen]))
    return out


def ground_images(dictionary: ConceptDictionary, store: FeatureStore, layer: int, top_n: int = 8,
                  indices: np.ndarray | None = None, features: np.ndarray | None = None,
                  scan: Scan | None = None) -> list[ImageGrounding]:
    """Per concept, the ``top_n`` samples (store records) with the highest activation
    (``features``: the rows of ``indices`` already read, to avoid reading them twice; ``scan``:
    their :func:`~vlmsteer.concepts.scan.scan_rows`, to avoid encoding them twice)."""
    idx = store.select() if indices is None else np.asarray(indices)
    if scan is None or scan.top_rows.shape[1] < min(top_n, len(idx)):
        feats = store.features(layer, indices=idx, dtype=None) if features is None else features
        scan = scan_rows(dictionary, feats, top_n)
    records = store.records
    return [ImageGrounding([{**records[int(idx[b])], "activation": float(v)}
                            for b, v in zip(scan.top_rows[c, :top_n], scan.top_values[c, :top_n])])
            for c in range(dictionary.k)]


def t_overlap(words_a: list[str], words_b: list[str]) -> float:
    """T-Overlap(u, u') = 100 · |T(u) ∩ T(u')| / |T(u)|."""
    if not words_a:
        return 0.0
    return 100.0 * len(set(words_a) & set(words_b)) / len(set(words_a))


def mean_pairwise_overlap(groundings: list[TextGrounding]) -> float:
    """Mean T-Overlap over ordered pairs of different concepts (lower = more diverse)."""
    k = len(groundings)
    if k < 2:
        return 0.0
    vals = [t_overlap(groundings[i].words, groundings[j].words) for i in range(k) for j in range(k) if i != j]
    return float(np.mean(vals))


def cosine_matrix(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = a if b is None else np.asarray(b, dtype=np.float64)
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return an @ bn.T
