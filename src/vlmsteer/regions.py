"""Token regions of a prepared batch: which positions are image, text prompt, last prompt
token, or padding. Positions are absolute indices into the padded prompt (left padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


class Region(str, Enum):
    """Where in the sequence a steering vector is added (or features are read)."""

    PROMPT = "prompt"  # every non-padding prompt position
    IMAGE = "image"  # image-token positions
    TEXT = "text"  # prompt positions that are not image tokens
    LAST_PROMPT = "last_prompt"  # the position that predicts the first response token
    GENERATED = "generated"  # positions after the prompt (response tokens)
    ALL = "all"  # prompt and generated

    @classmethod
    def parse(cls, value: "str | Region") -> "Region":
        from vlmsteer.errors import parse_choice

        return parse_choice(cls, value, "region")

    @property
    def covers_generated(self) -> bool:
        """Whether the region includes the positions of generated tokens."""
        return self in (Region.GENERATED, Region.ALL)


@dataclass(frozen=True)
class TokenRegions:
    """Boolean (batch, prompt_length) masks over a left-padded prompt batch."""

    image: torch.Tensor
    text: torch.Tensor
    last_prompt: torch.Tensor
    padding: torch.Tensor

    @property
    def prompt(self) -> torch.Tensor:
        return ~self.padding

    @property
    def prompt_length(self) -> int:
        return self.padding.shape[1]

    def mask(self, region: Region) -> torch.Tensor:
        """Mask over prompt positions for a prompt-side region."""
        region = Region.parse(region)
        if region is Region.PROMPT or region is Region.ALL:
            return self.prompt
        if region is Region.IMAGE:
            return self.image
        if region is Region.TEXT:
            return self.text
        if region is Region.LAST_PROMPT:
            return self.last_prompt
        return torch.zeros_like(self.padding)  # GENERATED: no prompt position

    @classmethod
    def from_batch(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   image_token_ids: set[int] | frozenset[int]) -> "TokenRegions":
        padding = attention_mask == 0
        image = torch.zeros_like(padding)
        for tid in image_token_ids:
            image |= input_ids == tid
        image &= ~padding
        text = ~padding & ~image
        last = torch.zeros_like(padding)
        # last non-padding position of each row (left padding puts it at the end, but be general)
        idx = torch.arange(padding.shape[1], device=padding.device).expand_as(padding)
        last_pos = torch.where(~padding, idx, torch.full_like(idx, -1)).max(dim=1).values
        rows = torch.arange(padding.shape[0], device=padding.device)
        last[rows, last_pos.clamp(min=0)] = last_pos >= 0
        return cls(image=image, text=text, last_prompt=last, padding=padding)
