"""Token selectors: which position(s) of a (prompt + response) sequence give a sample's feature.

Typed options, never substrings. For a word of interest the store records whether the
feature is the position **of** the word (its last sub-token: the model has read the whole
word) or the position that **predicts** it (the token before its first sub-token: the
state from which the model produced the word). The default is ``predicts``; for a one-word
VQA answer that is the last prompt position, where steering vectors act.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import Enum

from vlmsteer.errors import VlmsteerError, parse_choice


class SelectorKind(str, Enum):
    LAST_PROMPT = "last_prompt"
    WORD = "word"
    MEAN_RESPONSE = "mean_response"  # mean over response tokens (before the end token)
    MEAN_IMAGE = "mean_image"
    MEAN_TEXT = "mean_text"  # mean over text prompt tokens


class WordSource(str, Enum):
    RESPONSE = "response"
    PROMPT = "prompt"


class WordPosition(str, Enum):
    OF = "of"
    PREDICTS = "predicts"


@dataclass(frozen=True)
class Selector:
    kind: SelectorKind = SelectorKind.LAST_PROMPT
    word: str | None = None
    source: WordSource = WordSource.RESPONSE
    position: WordPosition = WordPosition.PREDICTS

    def __post_init__(self):
        object.__setattr__(self, "kind", parse_choice(SelectorKind, self.kind, "selector"))
        object.__setattr__(self, "source", parse_choice(WordSource, self.source, "word source"))
        object.__setattr__(self, "position", parse_choice(WordPosition, self.position, "word position"))
        if self.kind is SelectorKind.WORD and not (self.word and self.word.strip()):
            raise VlmsteerError("the word selector needs a word", "word")
        if self.kind is not SelectorKind.WORD and self.word:
            raise VlmsteerError(f"a word is only used with the word selector, not {self.kind.value}", "word")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in d.items()}

    def describe(self) -> str:
        if self.kind is SelectorKind.WORD:
            return f"position that {self.position.value} the word {self.word!r} in the {self.source.value}" \
                if self.position is WordPosition.PREDICTS else \
                f"position of the word {self.word!r} in the {self.source.value}"
        return self.kind.value.replace("_", " ")


def word_spans(text: str, word: str) -> list[tuple[int, int]]:
    """Character spans of ``word`` in ``text`` as a whole word, case-insensitive.

    "no" does not match "none" or "no-one"; multi-word terms allow any whitespace.
    """
    parts = [re.escape(p) for p in word.strip().split()]
    pattern = re.compile(r"(?<![\w'-])" + r"\s+".join(parts) + r"(?![\w'-])", re.IGNORECASE)
    return [m.span() for m in pattern.finditer(text)]


def token_offsets(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded text of ``ids`` and each token's character span in it, in linear time.

    Incremental decoding over a short moving window (the method of streaming detokenizers):
    each step decodes only the tokens since the last complete piece of text, so it is exact
    for any tokenizer's spacing rules (SentencePiece's dropped leading space, byte-level
    BPE); a token that ends inside a multi-byte character gets an empty span and the token
    that completes the character gets the whole of it.
    """

    def decode(part: list[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    text, spans = "", []
    prefix = read = 0  # ids[prefix:read] is the decoded context of the next piece
    for k in range(len(ids)):
        before = decode(ids[prefix:read])
        after = decode(ids[prefix:k + 1])
        if len(after) > len(before) and after.startswith(before) and not after.endswith("\ufffd"):
            start = len(text)
            text += after[len(before):]
            spans.append((start, len(text)))
            prefix, read = read, k + 1
        else:
            spans.append((len(text), len(text)))
    return text, spans


def word_token_indices(tokenizer, ids: list[int], word: str) -> list[int] | None:
    """Indices (into ``ids``) of the sub-tokens of the first whole-word occurrence of ``word``."""
    text, spans = token_offsets(tokenizer, ids)
    found = word_spans(text, word)
    if not found:
        return None
    s, e = found[0]
    idx = [i for i, (a, b) in enumerate(spans) if b > a and a < e and b > s]
    return idx or None
