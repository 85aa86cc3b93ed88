"""Scene kinds of the shapes world beyond the plain one: the hallucination testbed's
(docs/hallucination.md), registered in :data:`vlmsteer.data.shapes.SCENE_KINDS` when this module is
imported (``vlmsteer.data`` imports it). A *co-occurring* world builds a co-occurrence in (beach
scenes often hold a yellow circle); a *pattern-breaking* world breaks it (every scene on the
beach, no circle)."""

from __future__ import annotations

import random
from dataclasses import replace

from vlmsteer.data.shapes import GRID, PALETTE, PLURALS, SCENE_KINDS, SHAPES, Scene, SceneKind, Shape, make_scene

# scenes at this place hold this object at this rate (in a co-occurring world)
COOCCURRENCE_PLACE, COOCCURRENCE_OBJECT, COOCCURRENCE_RATE = "beach", ("yellow", "circle"), 0.5


def with_object(scene: Scene, color: str, kind: str, rng: random.Random) -> Scene:
    """``scene`` holding a ``color`` ``kind`` (added in a free cell, else in place of a shape; a
    shape already of that colour takes a free colour), or unchanged if it holds one."""
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
        k = rng.randrange(len(held))
        held[k] = Shape(kind, color, held[k].cell)
    return replace(scene, shapes=tuple(held), jitter=())


def without_object(scene: Scene, color: str, kind: str) -> Scene:
    """``scene`` with every ``color`` ``kind`` removed (it may be left empty)."""
    return replace(scene, shapes=tuple(s for s in scene.shapes if not (s.kind == kind and s.color == color)), jitter=())


def cooccurring_scene(seed: int, index: int) -> Scene:
    """A plain scene, except that a scene at :data:`COOCCURRENCE_PLACE` holds the
    :data:`COOCCURRENCE_OBJECT` at :data:`COOCCURRENCE_RATE` (the world a model learns the
    co-occurrence from)."""
    scene = make_scene(seed, index)
    rng = random.Random(f"cooccurrence-{seed}-{index}")
    if scene.place == COOCCURRENCE_PLACE and rng.random() < COOCCURRENCE_RATE:
        return with_object(scene, *COOCCURRENCE_OBJECT, rng)
    return scene


def pattern_breaking_scene(seed: int, index: int) -> Scene:
    """A scene at :data:`COOCCURRENCE_PLACE` without any shape of the co-occurring kind (each
    becomes another kind): where a model that learnt the co-occurrence sees what is not there."""
    scene = make_scene(seed, index)
    rng = random.Random(f"breaking-{seed}-{index}")
    kind = COOCCURRENCE_OBJECT[1]
    others = [k for k in SHAPES if k != kind]
    held = tuple(replace(s, kind=rng.choice(others)) if s.kind == kind else s for s in scene.shapes)
    return replace(scene, shapes=held, place=COOCCURRENCE_PLACE)


SCENE_KINDS.add("cooccurring", SceneKind(cooccurring_scene),
                f"as plain, but half the {COOCCURRENCE_PLACE} scenes hold a {' '.join(COOCCURRENCE_OBJECT)}")
SCENE_KINDS.add("pattern-breaking", SceneKind(pattern_breaking_scene, statistics_from="cooccurring"),
                f"every scene on the {COOCCURRENCE_PLACE}, none with a {COOCCURRENCE_OBJECT[1]}")


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
