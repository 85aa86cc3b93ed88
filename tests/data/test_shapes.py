"""The shapes world: deterministic, and correct by construction."""

import json
import random

import numpy as np

from vlmsteer.data import shapes
from vlmsteer.data.keywords import COLORS, PLACES, SENTIMENTS


def test_deterministic_for_a_seed(tmp_path):
    a = [shapes.make_scene(5, i) for i in range(50)]
    b = [shapes.make_scene(5, i) for i in range(50)]
    assert a == b and a != [shapes.make_scene(6, i) for i in range(50)]
    assert np.array_equal(shapes.render_array(a[3]), shapes.render_array(b[3]))
    shapes.write_dataset(tmp_path / "x", 20, seed=5)
    shapes.write_dataset(tmp_path / "y", 20, seed=5)
    for name in ("v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json",
                 "captions_val2014.json"):
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "y" / name).read_bytes()


def test_scene_invariants():
    for i in range(300):
        s = shapes.make_scene(1, i)
        assert 1 <= len(s.shapes) <= 4
        assert len({x.color for x in s.shapes}) == len(s.shapes)  # distinct colours
        assert len({x.cell for x in s.shapes}) == len(s.shapes)


def test_answers_are_correct_by_construction():
    rng = random.Random(0)
    for i in range(300):
        s = shapes.make_scene(2, i)
        for q in shapes.questions(s, rng):
            words = q.text.split()
            if q.text.startswith("how many shapes"):
                assert q.answer == str(len(s.shapes))
            elif q.text.startswith("how many"):
                kind = words[2][:-1]
                assert q.answer == str(sum(x.kind == kind for x in s.shapes))
            elif q.text.startswith("what color is the"):
                kind = words[4]
                assert [x.color for x in s.shapes if x.kind == kind] == [q.answer]
            elif q.text.startswith("what shape is"):
                assert any(x.color == words[3] and x.kind == q.answer for x in s.shapes)
            elif q.text.startswith("is there anything"):
                assert q.answer == ("yes" if words[3] in s.colors() else "no")
            elif q.text.startswith("is there a"):
                present = any(x.color == words[3] and x.kind == words[4] for x in s.shapes)
                assert q.answer == ("yes" if present else "no")
            elif q.text.startswith("is this the"):
                assert q.answer == ("yes" if words[3] == s.place else "no")
            elif q.text.startswith("where"):
                assert q.answer == s.place
            elif q.text.startswith("how does"):
                assert q.answer == s.mood


def test_pixels_show_the_described_colours():
    for i in range(50):
        s = shapes.make_scene(3, i)
        img = shapes.render_array(s)
        for x in s.shapes:
            r, c = divmod(x.cell, shapes.GRID)
            cell = img[r * shapes.CELL:(r + 1) * shapes.CELL, c * shapes.CELL:(c + 1) * shapes.CELL].reshape(-1, 3)
            assert (cell == np.array(shapes.PALETTE[x.color])).all(1).sum() >= 20


def test_captions_mention_every_shape_and_their_style():
    for i in range(200):
        s = shapes.make_scene(4, i)
        caps = shapes.captions(s)
        for style, text in caps.items():
            for x in s.shapes:
                assert x.kind in text or shapes.PLURALS[x.kind] in text
        assert COLORS.matches(caps["colors"]) and not COLORS.matches(caps["plain"])
        assert PLACES.matches(caps["places"]) and not PLACES.matches(caps["plain"])
        assert SENTIMENTS.matches(caps["sentiments"]) and not SENTIMENTS.matches(caps["plain"])
        assert set(caps["combined"].split()) >= {s.mood, s.place} | {x.color for x in s.shapes}


def test_default_caption_style_is_a_mixture(tmp_path):
    styles = {shapes.DEFAULT_STYLE_BY_COUNT[len(shapes.make_scene(0, i).shapes)] for i in range(100)}
    assert styles == {"colors", "plain", "places", "sentiments"}
    paths = shapes.write_dataset(tmp_path, 5, seed=0)
    caps = json.loads(paths["captions"].read_text())["annotations"]
    assert len(caps) == 25


def test_image_files_name_their_scene(tmp_path):
    shapes.write_dataset(tmp_path, 3, seed=2, start=40)
    files = sorted((tmp_path / "val2014").iterdir())
    assert [shapes.image_id_of(f) for f in files] == [40, 41, 42]
