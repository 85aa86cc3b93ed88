"""Scene kinds of the shapes world beyond the plain one: the hallucination testbed's
(docs/hallucination.md), registered in :data:`vlmsteer.data.shapes.SCENE_KINDS` when this module is
imported (``vlmsteer.data`` imports it). A *co-occurring* world builds a co-occurrence in (beach
scenes often hold a yellow and a white circle); a *pattern-breaking* world breaks it (every
scene on the beach, no circle)."""

from __future__ import annotations

import random
from dataclasses import replace

from vlmsteer.data.shapes import GRID, PALETTE, PLURALS, SCENE_KINDS, SHAPES, Scene, SceneKind, Shape, make_scene

# scenes at this place hold these objects (colour, kind) at this rate (in a co-occurring world); two
# of them, so that POPE's adversarial files can ask about one with every positive (an image's
# negatives are distinct: with one object, one of its POPE_SAMPLE_NUM at most), both of one kind,
# which a pattern-breaking world leaves out (CHAIR names kinds)
COOCCURRENCE_PLACE, COOCCURRENCE_RATE = "beach", 0.5
COOCCURRENCE_OBJECTS: tuple[tuple[str, str], ...] = (("yellow", "circle"), ("white", "circle"))
COOCCURRENCE_NAMES = tuple(f"{color} {kind}" for color, kind in COOCCURRENCE_OBJECTS)


def with_object(scene: Scene, color: str, kind: str, rng: random.Random,
                keep: tuple[tuple[str, str], ...] = ()) -> Scene:
    """``scene`` holding a ``color`` ``kind`` (added in a free cell, else in place of a shape that
    is none of ``keep``; a shape already of that colour takes a free colour), or unchanged if it
    holds one."""
    held = list(scene.shapes)
    if any(s.kind == kind and s.color == color for s in held):
        return scene
    for j, s in enumerate(held):
        if s.color == color:
            held[j] = replace(s, color=rng.choice([c for c in PALETTE if c not in {x.color for x in held}]))
    free = [c for c in range(GRID * GRID) if c not in {s.cell for s in held}]
    if free:
        held = sorted(held + [Shape(kind, color, rng.choice(free))], key=lambda s: s.cell)
    else:
        k = rng.choice([j for j, s in enumerate(held) if (s.color, s.kind) not in keep])
        held[k] = Shape(kind, color, held[k].cell)
    return replace(scene, shapes=tuple(held), jitter=())


def with_cooccurring(scene: Scene, rng: random.Random) -> Scene:
    """``scene`` holding every object of :data:`COOCCURRENCE_OBJECTS`."""
    for color, kind in COOCCURRENCE_OBJECTS:
        scene = with_object(scene, color, kind, rng, keep=COOCCURRENCE_OBJECTS)
    return scene


def without_cooccurring(scene: Scene) -> Scene:
    """``scene`` with every object of :data:`COOCCURRENCE_OBJECTS` removed (it may be left empty)."""
    return replace(scene, shapes=tuple(s for s in scene.shapes if (s.color, s.kind) not in COOCCURRENCE_OBJECTS),
                   jitter=())


def cooccurring_scene(seed: int, index: int) -> Scene:
    """A plain scene, except that a scene at :data:`COOCCURRENCE_PLACE` holds the
    :data:`COOCCURRENCE_OBJECTS` at :data:`COOCCURRENCE_RATE` (the world a model learns the
    co-occurrence from)."""
    scene = make_scene(seed, index)
    rng = random.Random(f"cooccurrence-{seed}-{index}")
    if scene.place == COOCCURRENCE_PLACE and rng.random() < COOCCURRENCE_RATE:
        return with_cooccurring(scene, rng)
    return scene


def pattern_breaking_scene(seed: int, index: int) -> Scene:
    """A scene at :data:`COOCCURRENCE_PLACE` without any shape of the co-occurring objects' kind
    (each becomes another kind): where a model that learnt the co-occurrence sees what is not there."""
    scene = make_scene(seed, index)
    rng = random.Random(f"breaking-{seed}-{index}")
    kinds = {kind for _, kind in COOCCURRENCE_OBJECTS}
    others = [k for k in SHAPES if k not in kinds]
    held = tuple(replace(s, kind=rng.choice(others)) if s.kind in kinds else s for s in scene.shapes)
    return replace(scene, shapes=held, place=COOCCURRENCE_PLACE)


SCENE_KINDS.add("cooccurring", SceneKind(cooccurring_scene),
                f"as plain, but half the {COOCCURRENCE_PLACE} scenes hold a {' and a '.join(COOCCURRENCE_NAMES)}")
SCENE_KINDS.add("pattern-breaking", SceneKind(pattern_breaking_scene, statistics_from="cooccurring"),
                f"every scene on the {COOCCURRENCE_PLACE}, none with a "
                f"{' or '.join(sorted({k for _, k in COOCCURRENCE_OBJECTS}))}")


def answer(scene: Scene, question: str) -> str | None:
    """The answer :func:`vlmsteer.data.shapes.questions` gives ``question`` (one of its templates) about ``scene``;
    None for any other text or where the question has no answer (no shape of that kind)."""
    words = question.removesuffix(" ?").split()
    if words[:3] == ["is", "there", "a"] and len(words) == 5:
        return "yes" if any(s.color == words[3] and s.kind == words[4] for s in scene.shapes) else "no"
    if words[:3] == ["is", "there", "anything"] and len(words) == 4:
        return "yes" if words[3] in scene.colors() else "no"
    if words[:3] == ["is", "this", "the"] and len(words) == 4:
        return "yes" if words[3] == scene.place else "no"
    if words[:2] == ["how", "many"] and len(words) == 5:
        if words[2] == "shapes":
            return str(scene.count())
        kind = next((k for k, p in PLURALS.items() if p == words[2]), None)
        return None if kind is None else str(scene.count(kind))
    if words[:4] == ["what", "color", "is", "the"] and len(words) == 5:
        found = [s.color for s in scene.shapes if s.kind == words[4]]
        return found[0] if len(found) == 1 else None
    if words[:3] == ["what", "shape", "is"] and len(words) == 4:
        found = [s.kind for s in scene.shapes if s.color == words[3]]
        return found[0] if found else None
    if words == ["where", "is", "this"]:
        return scene.place
    if words == ["how", "does", "this", "scene", "feel"]:
        return scene.mood
    return None
