"""One model of token positions, used by the steerer, extraction and every engine: token
**regions** (where a steering vector is added) and extraction **selectors** (which positions give
a sample's feature), both computed from a prompt's token ids and the model's special tokens.

Positions are absolute indices into the padded prompt (left padding), followed by the response
or generated tokens; they do not depend on how a forward pass is chunked or cached. A region is
one :data:`REGIONS` entry (:class:`Region`: which prompt positions it covers, whether it covers
generated tokens); a selector one :data:`SELECTORS` entry. A new region or selector is one
``REGIONS.add`` / ``SELECTORS.add`` call (see ``docs/steering.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Callable, Sequence

import torch

from vlmsteer.errors import VlmsteerError, parse_choice
from vlmsteer.registry import Registry


@dataclass(frozen=True)
class TokenRegions:
    """Boolean (batch, prompt_length) masks over a left-padded prompt batch, and its token ids."""

    image: torch.Tensor
    text: torch.Tensor
    last_prompt: torch.Tensor
    padding: torch.Tensor
    ids: torch.Tensor | None = None

    @property
    def prompt(self) -> torch.Tensor:
        return ~self.padding

    @property
    def prompt_length(self) -> int:
        return self.padding.shape[1]

    def mask(self, region: "Region | str") -> torch.Tensor:
        """Mask over prompt positions for a region (its prompt side)."""
        return Region.parse(region).prompt_mask(self)

    @classmethod
    def from_batch(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   image_token_ids: set[int] | frozenset[int] | torch.Tensor) -> "TokenRegions":
        padding = attention_mask == 0
        ids = torch.as_tensor(sorted(image_token_ids) if isinstance(image_token_ids, (set, frozenset))
                              else image_token_ids, dtype=input_ids.dtype, device=input_ids.device)
        image = torch.isin(input_ids, ids) & ~padding
        text = ~padding & ~image
        last = torch.zeros_like(padding)
        # last non-padding position of each row (left padding puts it at the end, but be general)
        idx = torch.arange(padding.shape[1], device=padding.device).expand_as(padding)
        last_pos = torch.where(~padding, idx, torch.full_like(idx, -1)).max(dim=1).values
        rows = torch.arange(padding.shape[0], device=padding.device)
        last[rows, last_pos.clamp(min=0)] = last_pos >= 0
        return cls(image=image, text=text, last_prompt=last, padding=padding, ids=input_ids)

    @classmethod
    def of_prompt(cls, prompt: Sequence[int], image_token_ids) -> "TokenRegions":
        """The regions of one unpadded prompt (an engine's request)."""
        ids = torch.as_tensor(list(prompt), dtype=torch.long)[None]
        return cls.from_batch(ids, torch.ones_like(ids), image_token_ids)


class Region(str):
    """A token region: its name (the string itself, as options and records spell it), a one-line
    description, the prompt positions it covers (``prompt_mask(regions) -> (batch, p)`` bool) and
    whether it covers generated (response) tokens."""

    def __new__(cls, name: str, description: str, prompt_mask: Callable[[TokenRegions], torch.Tensor],
                covers_generated: bool = False):
        self = super().__new__(cls, name)
        self.description, self.prompt_mask, self.covers_generated = description, prompt_mask, covers_generated
        return self

    @property
    def value(self) -> str:
        return str(self)

    def __reduce__(self):  # pickled (a forked worker) as its name, found again in the registry
        return (Region.parse, (str(self),))

    @staticmethod
    def parse(value: "Region | str") -> "Region":
        return value if isinstance(value, Region) else REGIONS.get(value)

    # the built-in regions, set below
    PROMPT: "Region"
    IMAGE: "Region"
    TEXT: "Region"
    LAST_PROMPT: "Region"
    GENERATED: "Region"
    ALL: "Region"


REGIONS: Registry[Region] = Registry("region", "--region")


def add_region(name: str, description: str, prompt_mask: Callable[[TokenRegions], torch.Tensor],
               covers_generated: bool = False) -> Region:
    """Register a region (see :class:`Region`) and return it."""
    region = Region(name, description, prompt_mask, covers_generated)
    REGIONS.add(name, region, description)
    return region


Region.PROMPT = add_region("prompt", "every prompt token", lambda r: r.prompt)
Region.IMAGE = add_region("image", "the image tokens", lambda r: r.image)
Region.TEXT = add_region("text", "the prompt tokens that are not image tokens", lambda r: r.text)
Region.LAST_PROMPT = add_region("last_prompt", "the last prompt token (it predicts the first response token)",
                                lambda r: r.last_prompt)
Region.GENERATED = add_region("generated", "the generated tokens", lambda r: torch.zeros_like(r.padding), True)
Region.ALL = add_region("all", "every prompt and generated token", lambda r: r.prompt, True)


def region_mask(regions: TokenRegions, region: Region | str, positions: torch.Tensor) -> torch.Tensor:
    """(batch, len(positions)) bool: which of these absolute positions belong to ``region``
    (positions past the prompt are generated or response tokens)."""
    region = Region.parse(region)
    p = regions.prompt_length
    prompt_mask = region.prompt_mask(regions)  # (batch, p)
    positions = positions.to(prompt_mask.device)
    in_prompt = positions < p
    from_prompt = prompt_mask[:, positions.clamp(min=0, max=p - 1)]
    return torch.where(in_prompt[None, :], from_prompt, torch.full_like(from_prompt, region.covers_generated))


def positions_in_region(region: Region | str, prompt: Sequence[int], first: int, count: int,
                        image_ids) -> torch.Tensor:
    """Which of the absolute positions ``first … first + count − 1`` of one unpadded request
    (``prompt``: its prompt's token ids) belong to ``region`` — an engine's view of
    :func:`region_mask`."""
    positions = torch.arange(first, first + count)
    return region_mask(TokenRegions.of_prompt(prompt, image_ids), region, positions)[0]


# -- extraction selectors


class WordSource(str, Enum):
    RESPONSE = "response"
    PROMPT = "prompt"


class WordPosition(str, Enum):
    OF = "of"
    PREDICTS = "predicts"


@dataclass(frozen=True)
class SelectorKind:
    """How a selector finds a row's positions: ``positions(view) -> [absolute positions]``
    (averaged into the row's feature); ``word``: it needs a word of interest."""

    positions: Callable[["RowView"], list[int]]
    word: bool = False


@dataclass(frozen=True)
class RowView:
    """One row of a (prompt + response) batch, as a selector reads it."""

    regions: TokenRegions  # of the prompt batch
    row: int
    response: Sequence[int]  # the row's response token ids (after the prompt)
    selector: "Selector"
    tokenizer: object = None

    @property
    def prompt_length(self) -> int:
        return self.regions.prompt_length

    def in_region(self, region: Region | str) -> list[int]:
        """The row's prompt positions in ``region``."""
        return torch.nonzero(self.regions.mask(region)[self.row]).flatten().tolist()


SELECTORS: Registry[SelectorKind] = Registry("selector", "--selector")


def _word_positions(view: RowView) -> list[int]:
    from vlmsteer.word_positions import word_token_indices

    s, p = view.selector, view.prompt_length
    if s.source is WordSource.RESPONSE:
        ids, offset = list(view.response), p
    else:
        keep = ~view.regions.padding[view.row]
        start = int(torch.nonzero(keep).flatten()[0]) if keep.any() else p
        ids, offset = view.regions.ids[view.row, start:p].tolist(), start
    idx = word_token_indices(view.tokenizer, ids, s.word)
    if idx is None:
        return []
    return [offset + idx[-1]] if s.position is WordPosition.OF else [offset + idx[0] - 1]


def region_selector(region: Region | str) -> SelectorKind:
    """A selector averaging a row's prompt positions in ``region``."""
    return SelectorKind(lambda view: view.in_region(region))


SELECTORS.add("last_prompt", region_selector(Region.LAST_PROMPT), "the last prompt token")
SELECTORS.add("word", SelectorKind(_word_positions, word=True), "a word of interest (--word): the position that "
              "predicts it, or its own last token", {"word": "the word", "word_source": "response or prompt",
                                                    "word_position": "predicts or of"})
SELECTORS.add("mean_response", SelectorKind(lambda v: list(range(v.prompt_length, v.prompt_length
                                                                  + len(v.response)))),
              "mean over the response tokens (before the end token)")
SELECTORS.add("mean_image", region_selector(Region.IMAGE), "mean over the image tokens")
SELECTORS.add("mean_text", region_selector(Region.TEXT), "mean over the text prompt tokens")


@dataclass(frozen=True)
class Selector:
    """Which position(s) of a (prompt + response) sequence give a sample's feature: a
    :data:`SELECTORS` entry by name (``kind``) and, for a word of interest, whether the feature is
    the position **of** the word (its last sub-token) or the one that **predicts** it (the token
    before its first sub-token; the default: for a one-word VQA answer, the last prompt position)."""

    kind: str = "last_prompt"
    word: str | None = None
    source: WordSource = WordSource.RESPONSE
    position: WordPosition = WordPosition.PREDICTS

    def __post_init__(self):
        object.__setattr__(self, "kind", SELECTORS.entry(getattr(self.kind, "value", self.kind)).name)
        object.__setattr__(self, "source", parse_choice(WordSource, self.source, "word source"))
        object.__setattr__(self, "position", parse_choice(WordPosition, self.position, "word position"))
        if self.takes_word and not (self.word and self.word.strip()):
            raise VlmsteerError(f"the {self.kind} selector needs a word", "word")
        if not self.takes_word and self.word:
            raise VlmsteerError(f"a word is only used with the word selector, not {self.kind}", "word")

    @property
    def takes_word(self) -> bool:
        return SELECTORS.get(self.kind).word

    def positions(self, regions: TokenRegions, row: int, response: Sequence[int], tokenizer=None) -> list[int]:
        """Absolute positions whose features are averaged for ``row``; [] if none."""
        return SELECTORS.get(self.kind).positions(RowView(regions, row, response, self, tokenizer))

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in d.items()}

    def describe(self) -> str:
        if self.takes_word:
            return f"position that {self.position.value} the word {self.word!r} in the {self.source.value}" \
                if self.position is WordPosition.PREDICTS else \
                f"position of the word {self.word!r} in the {self.source.value}"
        return self.kind.replace("_", " ")
