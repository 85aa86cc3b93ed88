"""``vlmsteer score pope|chair``: files from any tool in, the references' figures out."""

from __future__ import annotations

import json

import pytest

from vlmsteer.cli import main


def _lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pope_files(tmp_path):
    labels = ["yes", "no", "yes", "no", "yes", "no"]
    q = _lines(tmp_path / "coco_pope_adversarial.json",
               [{"question_id": i + 1, "image": f"COCO_val2014_{i:012d}.jpg", "text": "Is there a dog in the image?",
                 "label": lab} for i, lab in enumerate(labels)])
    # answers in another order than the questions (the reference would pair them by line)
    texts = {1: "Yes, there is.", 2: "Nope.", 3: "No.", 4: "There is not a dog.", 5: "yes", 6: "NO"}
    a = _lines(tmp_path / "answers.jsonl", [{"question_id": k, "answer": texts[k]} for k in (6, 5, 4, 3, 2, 1)])
    return q, a


def test_score_pope_writes_the_reference_figures(tmp_path, pope_files, capsys):
    q, a = pope_files
    assert main(["score", "pope", "--questions", str(q), "--answers", str(a), "--out", str(tmp_path / "p")]) == 0
    m = json.loads((tmp_path / "p" / "metrics.json").read_text())["pope"]
    # preds by id: 1 yes, 2 yes ("Nope." is yes), 3 no, 4 no, 5 yes, 6 yes ("NO" is yes)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 2, 1, 1)
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(4 / 6)
    assert (tmp_path / "p" / "run.json").is_file()
    assert "50.00" in capsys.readouterr().out


def test_score_pope_reads_a_run_folder_and_says_where_the_reference_divides_by_zero(tmp_path, pope_files, capsys):
    q, _ = pope_files
    run = tmp_path / "run"
    run.mkdir()
    _lines(run / "predictions.jsonl", [{"id": str(i), "prediction": "no"} for i in range(1, 7)])
    assert main(["score", "pope", "--questions", str(q), "--answers", str(run), "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "precision is undefined: the model never answered yes" in out
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["pope"]["precision"] is None


@pytest.mark.parametrize("answers, needle", [
    ([{"question_id": 1, "answer": "yes"}], "5 of 6 POPE questions have no answer"),
    ([{"question_id": i, "answer": "yes"} for i in range(1, 8)], "question file does not hold"),
    ([{"question_id": 1, "answer": "yes"}, {"question_id": 1, "answer": "no"}], "answered twice"),
    ([{"question_id": 1}], "lacks 'question_id' or 'answer'"),
])
def test_score_pope_refuses_answers_that_do_not_match_in_one_line(tmp_path, pope_files, capsys, answers, needle):
    q, _ = pope_files
    a = _lines(tmp_path / "bad.jsonl", answers)
    assert main(["score", "pope", "--questions", str(q), "--answers", str(a), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1
    assert not (tmp_path / "p").exists()


def test_score_pope_refuses_a_label_that_is_neither_yes_nor_no(tmp_path, pope_files, capsys):
    _, a = pope_files
    q = _lines(tmp_path / "q.json", [{"question_id": 1, "image": "x.jpg", "text": "?", "label": "Yes"}])
    assert main(["score", "pope", "--questions", str(q), "--answers", str(a), "--out", str(tmp_path / "p")]) == 2
    assert "label 'Yes' is neither 'yes' nor 'no'" in capsys.readouterr().err


@pytest.fixture
def coco_annotations(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    images = [{"id": 42}, {"id": 7}]
    cats = [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}, {"id": 63, "name": "couch"}]
    (ann / "instances_val2014.json").write_text(json.dumps({"images": images, "categories": cats, "annotations": [
        {"image_id": 42, "category_id": 18}, {"image_id": 7, "category_id": 17}]}))
    (ann / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": [
        {"image_id": 42, "caption": "A puppy on a sofa."}, {"image_id": 7, "caption": "A kitten."}]}))
    return ann


def test_score_chair_writes_figures_and_a_row_per_caption(tmp_path, coco_annotations, capsys):
    caps = _lines(tmp_path / "caps.jsonl", [{"image_id": 42, "caption": "Two dogs on a couch next to a cat."},
                                            {"image_id": 7, "caption": "A cat."}])
    assert main(["score", "chair", "--captions", str(caps), "--annotations", str(coco_annotations),
                 "--out", str(tmp_path / "c")]) == 0
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())["chair"]
    assert m["chair_s"] == 0.5 and m["chair_i"] == 0.25 and m["recall"] == pytest.approx(3 / 3)
    rows = [json.loads(x) for x in (tmp_path / "c" / "rows.jsonl").read_text().splitlines()]
    assert rows[0]["mentioned"] == ["dog", "couch", "cat"] and rows[0]["hallucinated"] == [["cat", "cat"]]
    assert rows[1]["hallucinated"] == []
    # a run folder's predictions (ids as text) score the same
    run = tmp_path / "run"
    run.mkdir()
    _lines(run / "predictions.jsonl", [{"id": "42", "prediction": "Two dogs on a couch next to a cat."},
                                       {"id": "7", "prediction": "A cat."}])
    assert main(["score", "chair", "--captions", str(run), "--annotations", str(coco_annotations),
                 "--out", str(tmp_path / "c2")]) == 0
    assert json.loads((tmp_path / "c2" / "metrics.json").read_text())["chair"] == m


@pytest.mark.parametrize("rows, needle", [
    ([{"image_id": 99, "caption": "a dog"}], "not in the annotations (first: 99)"),
    ([{"image_id": 42}], "lacks 'image_id' or 'caption'"),
    ([], "holds no captions"),
])
def test_score_chair_errors_are_one_line(tmp_path, coco_annotations, capsys, rows, needle):
    caps = _lines(tmp_path / "caps.jsonl", rows)
    assert main(["score", "chair", "--captions", str(caps), "--annotations", str(coco_annotations),
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1


def test_score_chair_needs_coco_annotation_files(tmp_path, capsys):
    caps = _lines(tmp_path / "caps.jsonl", [{"image_id": 1, "caption": "a dog"}])
    (tmp_path / "empty").mkdir()
    assert main(["score", "chair", "--captions", str(caps), "--annotations", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "c")]) == 2
    assert "holds neither instances_val2014.json" in capsys.readouterr().err


def test_score_chair_knows_its_annotations_by_content(tmp_path, coco_annotations, capsys):
    import hashlib

    caps = _lines(tmp_path / "caps.jsonl", [{"image_id": 42, "caption": "A dog."}])
    args = ["score", "chair", "--captions", str(caps), "--annotations", str(coco_annotations),
            "--out", str(tmp_path / "c")]
    assert main(args) == 0
    recorded = json.dumps(json.loads((tmp_path / "c" / "run.json").read_text()))
    for name in ("instances_val2014.json", "captions_val2014.json"):  # each file's bytes, read once with the parse
        assert hashlib.sha256((coco_annotations / name).read_bytes()).hexdigest() in recorded
    assert main(args) == 0  # the same inputs: the same run
    captions = coco_annotations / "captions_val2014.json"
    captions.write_bytes(captions.read_bytes().replace(b"A puppy", b"A dog").replace(b"}", b"}\r\n"))
    capsys.readouterr()
    assert main(args) == 2  # other annotations: the old run is not reused
    assert "other inputs" in capsys.readouterr().err
