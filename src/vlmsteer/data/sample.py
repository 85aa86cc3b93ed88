"""The one record type every loader yields."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from vlmsteer.errors import VlmsteerError


@dataclass
class Sample:
    id: str
    image: str | Path | Image.Image | None
    prompt: str
    answers: list[str] = field(default_factory=list)  # reference answers (VQAv2: 10 per question)
    answer_type: str | None = None  # "yes/no" | "number" | "other"
    question_type: str | None = None
    captions: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # per reference answer, what else tells its annotation entry apart (answer_id, ...);
    # used only by the official accuracy's leave-one-out (see evaluate.vqa); [] = all distinct
    answer_ids: list[Any] = field(default_factory=list, repr=False)
    # what the sample is, by content (see vlmsteer.data.identity): set while loading
    digest: str | None = field(default=None, repr=False, compare=False)
    image_digest: str | None = field(default=None, repr=False, compare=False)

    @property
    def image_path(self) -> str | None:
        return None if self.image is None or isinstance(self.image, Image.Image) else str(self.image)

    @property
    def answer(self) -> str | None:
        """The most common reference answer (VQAv2's ``multiple_choice_answer`` when given)."""
        if "multiple_choice_answer" in self.meta:
            return self.meta["multiple_choice_answer"]
        if not self.answers:
            return None
        return max(set(self.answers), key=lambda a: (self.answers.count(a), -self.answers.index(a)))


def subsample(items: Sequence, limit: int | None, seed: int = 0) -> list:
    """A seeded random subset of ``limit`` items, kept in their original order."""
    items = list(items)
    if limit is None or limit >= len(items):
        return items
    if limit < 0:
        raise VlmsteerError(f"the sample limit must be >= 0, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]
