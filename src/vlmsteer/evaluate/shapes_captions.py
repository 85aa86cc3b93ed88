"""Caption checks that only the shapes world allows: every shape mentioned, exact matches,
and the share of captions in each style."""

from __future__ import annotations

import json
from pathlib import Path

from vlmsteer.data import shapes
from vlmsteer.data.keywords import STYLE_KEYWORDS

SHAPES_STYLES = ("colors", "places", "sentiments")  # the shapes world's caption styles (no people)


def load_scenes(root: str | Path, split: str = "val2014") -> dict[int, dict]:
    data = json.loads((Path(root) / f"scenes_{split}.json").read_text())
    return {s["image_id"]: s for s in data["scenes"]}


def mentions_every_shape(caption: str, scene: dict) -> bool:
    words = set(caption.lower().split())
    return all(s["kind"] in words or shapes.PLURALS[s["kind"]] in words for s in scene["shapes"])


def content_kept(baseline: list[str], steered: list[str], scenes: list[dict]) -> dict:
    """What steering cost in content: of the captions it changed, how many still mention every
    shape of their image (and, for reference, how many of the same images' baseline captions did)."""
    changed = [i for i, (a, b) in enumerate(zip(baseline, steered)) if a != b]
    kept = sum(mentions_every_shape(steered[i], scenes[i]) for i in changed)
    before = sum(mentions_every_shape(baseline[i], scenes[i]) for i in changed)
    return {"changed": len(changed), "kept_every_shape": kept, "baseline_named_every_shape": before,
            "kept_share": 100.0 * kept / len(changed) if changed else None}


def style_shares(captions: list[str]) -> dict[str, float]:
    n = max(1, len(captions))
    return {name: 100.0 * STYLE_KEYWORDS[name].count(captions) / n for name in SHAPES_STYLES}


def caption_report(captions: list[str], scenes: list[dict], references: list[list[str]]) -> dict:
    n = max(1, len(captions))
    return {
        "n": len(captions),
        "mentions_every_shape": 100.0 * sum(mentions_every_shape(c, s) for c, s in zip(captions, scenes)) / n,
        "exact_reference_match": 100.0 * sum(_norm(c) in {_norm(r) for r in refs}
                                             for c, refs in zip(captions, references)) / n,
        "style_share": style_shares(captions),
    }


def _norm(text: str) -> str:
    return " ".join(text.lower().replace(" .", ".").replace(" ,", ",").split())
