"""Where a word of interest lies among a sequence's tokens (any tokenizer's spacing rules): the
word selector's part of :mod:`vlmsteer.positions`."""

from __future__ import annotations

import re


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
