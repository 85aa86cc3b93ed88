"""Loaders on fixture files in the official formats, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmsteer.cli import main
from vlmsteer.data import load_coco_captions, load_jsonl, load_samples, load_vqav2, shapes
from vlmsteer.data.sample import subsample
from vlmsteer.errors import VlmsteerError


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def vqa_root(tmp_path):
    root = tmp_path / "vqa"
    (root / "val2014").mkdir(parents=True)
    for image_id in (42, 7):
        Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    qs = [{"image_id": 42, "question": "What color is it?", "question_id": 420},
          {"image_id": 7, "question": "Is it red?", "question_id": 70}]
    anns = [{"question_id": 420, "image_id": 42, "answer_type": "other", "question_type": "what color is",
             "multiple_choice_answer": "red", "answers": [{"answer": "red", "answer_confidence": "yes",
                                                           "answer_id": i + 1} for i in range(10)]},
            {"question_id": 70, "image_id": 7, "answer_type": "yes/no", "question_type": "is it",
             "multiple_choice_answer": "yes", "answers": [{"answer": "yes", "answer_id": i + 1} for i in range(10)]}]
    _write(root / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": qs})
    _write(root / "v2_mscoco_val2014_annotations.json", {"annotations": anns})
    return root


def test_vqav2_official_layout(vqa_root):
    samples = load_vqav2(vqa_root, "val2014")
    assert [s.id for s in samples] == ["420", "70"]
    s = samples[0]
    assert s.prompt == "What color is it?" and s.answer == "red" and len(s.answers) == 10
    assert s.answer_type == "other" and s.question_type == "what color is"
    assert Path(s.image).name == "COCO_val2014_000000000042.jpg"
    templated = load_vqav2(vqa_root, prompt_template="{question} Answer in one word.")
    assert templated[1].prompt == "Is it red? Answer in one word."


def test_vqav2_images_found_from_one_listing_and_answer_identities(vqa_root):
    """Image names come from one listing of the folder (.jpg preferred to .png, .png found
    alone); answer entries with distinct answer_ids are told apart by position, others by
    their identity, so that identical entries without ids are left out together as the
    official evaluator does."""
    from vlmsteer.evaluate.vqa import vqa_accuracy

    Image.new("RGB", (8, 8)).save(vqa_root / "val2014" / "COCO_val2014_000000000042.png")  # beside the .jpg
    folder = vqa_root / "val2014"
    (folder / "COCO_val2014_000000000007.jpg").rename(folder / "COCO_val2014_000000000007.png")
    anns = json.loads((vqa_root / "v2_mscoco_val2014_annotations.json").read_text())
    anns["annotations"][1]["answers"] = [{"answer": "yes", "answer_confidence": "yes"}] * 10  # no ids
    _write(vqa_root / "v2_mscoco_val2014_annotations.json", anns)
    first, second = load_vqav2(vqa_root)
    assert Path(first.image).name.endswith("042.jpg") and Path(second.image).name.endswith("007.png")
    assert first.answer_ids == list(range(10))
    assert len(set(second.answer_ids)) == 1
    assert vqa_accuracy("red", first.answers, first.answer_ids) == 1.0
    assert vqa_accuracy("yes", second.answers, second.answer_ids) == 0.0  # the official code's result


def test_vqav2_questions_and_annotations_subfolders(vqa_root):
    (vqa_root / "Questions").mkdir()
    (vqa_root / "Annotations").mkdir()
    (vqa_root / "v2_OpenEnded_mscoco_val2014_questions.json").rename(
        vqa_root / "Questions" / "v2_OpenEnded_mscoco_val2014_questions.json")
    (vqa_root / "v2_mscoco_val2014_annotations.json").rename(
        vqa_root / "Annotations" / "v2_mscoco_val2014_annotations.json")
    assert len(load_vqav2(vqa_root)) == 2


@pytest.mark.parametrize("breakage, message", [
    ("missing_image", "image of question 420 not found"),
    ("malformed", "malformed JSON at line 1"),
    ("no_annotation", "no annotation for question 70"),
    ("unknown_split", "no questions file for split 'test2099'"),
])
def test_vqav2_errors_are_one_line_and_name_the_file(vqa_root, breakage, message, capsys):
    split = "val2014"
    if breakage == "missing_image":
        (vqa_root / "val2014" / "COCO_val2014_000000000042.jpg").unlink()
        culprit = "COCO_val2014_000000000042.jpg"
    elif breakage == "malformed":
        (vqa_root / "v2_mscoco_val2014_annotations.json").write_text('{"annotations": [')
        culprit = "v2_mscoco_val2014_annotations.json"
    elif breakage == "no_annotation":
        p = vqa_root / "v2_mscoco_val2014_annotations.json"
        data = json.loads(p.read_text())
        data["annotations"] = data["annotations"][:1]
        p.write_text(json.dumps(data))
        culprit = "v2_mscoco_val2014_annotations.json"
    else:
        split = "test2099"
        culprit = "v2_OpenEnded_mscoco_test2099_questions.json"
    with pytest.raises(VlmsteerError, match=message) as info:
        load_vqav2(vqa_root, split)
    assert culprit in str(info.value) and "\n" not in str(info.value)
    # the CLI: exit code 2, one line on stderr, no traceback
    code = main(["data", "check", "vqav2", str(vqa_root), "--split", split])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and culprit in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_coco_official_and_karpathy(tmp_path):
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "val2014" / "COCO_val2014_000000000001.jpg")
    _write(root / "captions_val2014.json", {
        "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "height": 8, "width": 8}],
        "annotations": [{"id": 5, "image_id": 1, "caption": "A red bus."},
                        {"id": 6, "image_id": 1, "caption": "A bus at the bus stop."}]})
    samples = load_coco_captions(root, "val2014")
    assert len(samples) == 1 and samples[0].captions == ["A red bus.", "A bus at the bus stop."]
    karpathy = _write(root / "dataset_coco.json", {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000001.jpg", "imgid": 0, "cocoid": 1,
         "split": "test", "sentences": [{"raw": "A red bus.", "tokens": ["a", "red", "bus"]}]},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000002.jpg", "imgid": 1, "cocoid": 2,
         "split": "train", "sentences": [{"raw": "x"}]}]})
    ks = load_coco_captions(karpathy, "test")
    assert [s.id for s in ks] == ["1"] and ks[0].captions == ["A red bus."]
    with pytest.raises(VlmsteerError, match="unknown Karpathy split"):
        load_coco_captions(karpathy, "val2014")
    with pytest.raises(VlmsteerError, match="COCO_val2014_000000000002.jpg"):
        load_coco_captions(karpathy, "train")


def test_jsonl(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    p = tmp_path / "d.jsonl"
    p.write_text('{"image": "a.png", "prompt": "hi?", "answers": ["yes"], "answer_type": "yes/no", "x": 1}\n\n'
                 '{"image": "a.png", "prompt": "cap", "captions": ["a b"]}\n')
    s = load_jsonl(p)
    assert s[0].answers == ["yes"] and s[0].meta == {"x": 1} and Path(s[0].image) == tmp_path / "a.png"
    assert s[1].captions == ["a b"]
    p.write_text('{"image": "a.png", "prompt": "hi"}\n{"image": "a.png", "prompt": \n')
    with pytest.raises(VlmsteerError, match="malformed JSON on line 2"):
        load_jsonl(p)
    with pytest.raises(VlmsteerError, match="unknown data format"):
        load_samples("parquet", p)


def test_seeded_subsample_is_deterministic_and_ordered():
    items = list(range(100))
    a, b = subsample(items, 10, seed=3), subsample(items, 10, seed=3)
    assert a == b == sorted(a) and len(set(a)) == 10
    assert subsample(items, 10, seed=4) != a
    assert subsample(items, None) == items


def test_shapes_output_loads_through_official_loaders(tmp_path):
    shapes.write_dataset(tmp_path, n=12, seed=3)
    vqa = load_vqav2(tmp_path)
    coco = load_coco_captions(tmp_path)
    assert len(coco) == 12 and all(len(s.captions) == 5 for s in coco)
    assert {s.answer_type for s in vqa} == {"yes/no", "number", "other"}
    assert all(len(s.answers) == 10 for s in vqa)


def test_collector_paused_restores_the_collector_also_on_errors():
    import gc

    from vlmsteer.data.io import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError), collector_paused():
        1 / 0
    assert gc.isenabled()
    gc.disable()  # a caller that paused it already keeps it paused
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_load_samples_builds_without_collector_scans_and_restores_it(vqa_root, monkeypatch):
    import gc

    import vlmsteer.data.vqav2 as vqav2

    seen = []
    real = vqav2.Sample
    monkeypatch.setattr(vqav2, "Sample", lambda **kw: seen.append(gc.isenabled()) or real(**kw))
    assert len(load_samples("vqav2", vqa_root)) == 2
    assert seen == [False, False] and gc.isenabled()
    (vqa_root / "v2_mscoco_val2014_annotations.json").write_text("{broken")
    with pytest.raises(VlmsteerError, match="malformed JSON"):
        load_samples("vqav2", vqa_root)
    assert gc.isenabled()


def test_commands_freeze_the_loaded_samples(vqa_root):
    import gc

    from vlmsteer.cli.common import _load_samples

    samples = _load_samples("vqav2", vqa_root)
    try:
        assert all(gc.is_tracked(s) for s in samples)
        scanned = {id(o) for o in gc.get_objects()}  # frozen objects are in no generation
        assert gc.get_freeze_count() > 0 and not any(id(s) in scanned for s in samples)
    finally:
        gc.unfreeze()
