"""CIDEr-D with pycocoevalcap's own scorer, and the tokenization that must come before it.

The COCO caption pipeline lower-cases and tokenizes every caption with Stanford's Java
``PTBTokenizer``, drops punctuation tokens, then scores with ``Cider``. We call that exact
pipeline when ``java`` is on the PATH; otherwise :func:`ptb_tokenize` does the same in pure
Python for ordinary captions (words, hyphenated words, numbers, contractions, possessives,
punctuation, quotes, brackets). ``tests/evaluate/test_cider.py`` checks that both give the same
tokens and the same scores (to 1e-6) on a fixture of 100+ images with 5 references each.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from typing import Literal

from vlmsteer.errors import VlmsteerError
from vlmsteer.extras import require

# the tokens pycocoevalcap removes after PTB tokenization
# (its list spells brackets upper-case, but tokens are lower-cased first, so -lrb- stays)
PUNCTUATIONS = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"}

_CONTRACTIONS = re.compile(r"(?i)(\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_CANNOT = re.compile(r"(?i)\b(can)(not)\b")
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
# a word: letters/digits with inner hyphens, periods between digits or letters (a.m., 3.5),
# commas between digits (1,000), inner apostrophes are split off above
_TOKEN = re.compile(r"""
    \.\.\.                               # ellipsis
  | --                                   # dash
  | n't | '(?:s|re|ve|ll|d|m)\b           # split contractions
  | (?:[a-z]\.){2,}                      # abbreviations such as u.s.
  | \d+(?:[.,]\d+)+                       # 3.5, 1,000
  | [\w&@#+*=~^<>|\\]+(?:[-'/][\w&@#+*=~^<>|\\]+)*   # words; inner hyphens and slashes kept
  | ``|''                                # quotes (already rewritten)
  | \S                                   # any other single character
""", re.VERBOSE)


def ptb_tokenize(text: str) -> str:
    """Lower-cased PTB tokens of ``text`` without punctuation, joined by spaces."""
    t = text.replace("\n", " ").lower()
    t = re.sub(r'(^|[\s(\[{])"', r"\1 `` ", t)
    t = t.replace('"', " '' ")
    t = _CANNOT.sub(r"\1 \2", t)
    t = _CONTRACTIONS.sub(r"\1 \2", t)
    tokens = []
    for tok in _TOKEN.findall(t):
        tok = _BRACKETS.get(tok, tok)
        if tok not in PUNCTUATIONS:
            tokens.append(tok)
    return " ".join(tokens)


Tokenizer = Literal["auto", "java", "python"]


def resolve_tokenizer(tokenizer: Tokenizer = "auto") -> Literal["java", "python"]:
    if tokenizer == "auto":
        return "java" if shutil.which("java") else "python"
    if tokenizer == "java" and not shutil.which("java"):
        raise VlmsteerError("the Java PTB tokenizer needs `java` on the PATH; choose the python tokenizer",
                            "tokenizer")
    if tokenizer not in ("java", "python"):
        raise VlmsteerError(f"unknown tokenizer {tokenizer!r}; choose auto, java or python")
    return tokenizer


def tokenize_captions(captions: dict[str, list[str]], tokenizer: Tokenizer = "auto") -> dict[str, list[str]]:
    """``{image id: [caption, ...]}`` → the same with each caption tokenized."""
    if resolve_tokenizer(tokenizer) == "java":
        PTBTokenizer = require("pycocoevalcap.tokenizer.ptbtokenizer", "the Java PTB tokenizer").PTBTokenizer

        with _quiet_stderr():  # the Java tokenizer prints a line per call
            return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    return {k: [ptb_tokenize(c) for c in v] for k, v in captions.items()}


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cider(predictions: dict[str, str], references: dict[str, list[str]],
          tokenizer: Tokenizer = "auto") -> tuple[float, dict[str, float]]:
    """Corpus CIDEr-D of one prediction per image against its references, and per image.

    The document frequencies come from the references given, as in the COCO evaluation,
    so scores depend on the whole set: compare runs on the same images.
    """
    Cider = require("pycocoevalcap.cider.cider", "CIDEr").Cider

    if not predictions:
        raise VlmsteerError("no captions to score")
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise VlmsteerError(f"{len(missing)} captions have no reference captions (first: {missing[0]})")
    keys = list(predictions)
    gts = tokenize_captions({k: references[k] for k in keys}, tokenizer)
    res = tokenize_captions({k: [predictions[k]] for k in keys}, tokenizer)
    score, per_image = Cider().compute_score(gts, res)
    return float(score), {k: float(s) for k, s in zip(keys, per_image)}
