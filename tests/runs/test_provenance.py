"""Issue 22: outputs know what made them (model, data by content, settings); nothing is mixed,
nothing half-replaced, nothing read from outside the dataset. One test per class of fault."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmsteer.cli import main
from vlmsteer.data import load_samples, shapes
from vlmsteer.store import FeatureStore


@pytest.fixture(scope="module")
def model(tiny_folder):
    return str(tiny_folder("llava"))


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("error:")]


def _eval(model, data, out, *extra):
    return main(["eval", "vqa", "--model", model, "--data", str(data), "--out", str(out), "--max-new-tokens", "2",
                 "--batch-size", "8", *extra])


# ---------------------------------------------------------------- reruns and data-parallel parts

def test_parts_of_another_run_are_never_reused(tiny_vlm, tmp_path):
    """The data-parallel rerun: parts left by an unsteered run in the same folder are not
    picked up by a steered rerun (they were matched by sample ids only)."""
    import torch

    from vlmsteer.runs.generation import generate_texts
    from vlmsteer.steer import Steering, SteeringVector

    vlm = tiny_vlm("llava")
    shapes.write_dataset(tmp_path / "w", n=3, seed=5)
    samples = load_samples("vqav2", tmp_path / "w")
    vec = SteeringVector({1: torch.randn(vlm.hidden_size) * 50})
    steering = Steering(vec, 1.0, region="all")
    run = lambda st, rank: generate_texts(vlm, samples, max_new_tokens=3, steering=st, part=(rank, 2),  # noqa: E731
                                          parts_dir=tmp_path / "parts")
    assert run(None, 1) is None
    plain = run(None, 0)
    assert run(steering, 1) is None  # rank 1 answers again: its saved part is of the unsteered run
    steered = run(steering, 0)
    alone = generate_texts(vlm, samples, max_new_tokens=3, steering=steering)
    assert steered == alone and steered != plain


def test_rerun_into_a_folder_of_other_settings_is_refused_and_keeps_it(model, tmp_path, capsys):
    import torch

    from vlmsteer.steer import SteeringVector

    shapes.write_dataset(tmp_path / "w", n=3, seed=6)
    assert _eval(model, tmp_path / "w", tmp_path / "run") == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    SteeringVector({1: torch.ones(32) * 40}).save(tmp_path / "v.safetensors")
    capsys.readouterr()
    assert _eval(model, tmp_path / "w", tmp_path / "run", "--vector", str(tmp_path / "v.safetensors")) == 2
    (line,) = _errors(capsys)
    assert "other inputs or settings" in line and "steering" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
    # the same settings again: allowed, and the same result
    assert _eval(model, tmp_path / "w", tmp_path / "run") == 0
    assert (tmp_path / "run" / "predictions.jsonl").read_bytes() == before["predictions.jsonl"]
    # --overwrite: replaced whole, by what a clean run gives
    args = ("--vector", str(tmp_path / "v.safetensors"))
    assert _eval(model, tmp_path / "w", tmp_path / "run", *args, "--overwrite") == 0
    assert _eval(model, tmp_path / "w", tmp_path / "clean", *args) == 0
    predictions = lambda run: (tmp_path / run / "predictions.jsonl").read_bytes()  # noqa: E731
    assert predictions("run") == predictions("clean")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["identity"]["steering"]["vector_sha256"] and len(record["fingerprint"]) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.") and p.name.endswith(".partial")]


def test_a_folder_of_other_files_is_never_replaced(model, tmp_path, capsys):
    shapes.write_dataset(tmp_path / "w", n=1, seed=24)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my own file")
    for extra in ([], ["--overwrite"]):
        assert _eval(model, tmp_path / "w", tmp_path / "mine", *extra) == 2
        assert "not a vlmsteer output (no run.json)" in _errors(capsys)[0]
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_store_and_a_report_never_replace_each_other(model, tmp_path, capsys):
    store = _store(model, tmp_path)
    for extra in ([], ["--overwrite"]):
        assert main(["concepts", str(store), "--out", str(store), "-k", "2", "--no-words", *extra]) == 2
        assert "holds a feature store" in _errors(capsys)[0]
    assert FeatureStore.open(store).verify()
    assert main(["separability", str(store), "--out", str(tmp_path / "sep"), "--label", "answer_type"]) == 0
    capsys.readouterr()
    assert main(["extract", "--model", model, "--data", str(tmp_path / "sw"), "--layer", "1", "--out",
                 str(tmp_path / "sep")]) == 2
    assert "not a feature store" in _errors(capsys)[0] and not (tmp_path / "sep" / "manifest.json").exists()


def test_a_failed_run_keeps_the_earlier_output_whole(model, tmp_path, capsys, monkeypatch):
    """A later run that fails while writing (here: its vector overflows; then a disk that fills
    up) leaves the earlier complete output as it was."""
    import vlmsteer.outputs as outputs

    shapes.write_dataset(tmp_path / "w", n=2, seed=7)
    assert _eval(model, tmp_path / "w", tmp_path / "run") == 0
    before = (tmp_path / "run" / "predictions.jsonl").read_bytes()
    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith("predictions.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", full_disk)
    capsys.readouterr()
    assert _eval(model, tmp_path / "w", tmp_path / "run", "--overwrite") == 2
    (line,) = _errors(capsys)
    assert "no space left" in line and "predictions.jsonl" in line
    assert (tmp_path / "run" / "predictions.jsonl").read_bytes() == before


def _mounted_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_a_full_tmpfs_is_one_line_and_loses_nothing(model, tmp_path, capsys):
    """A real full disk where this machine lets us mount one (root in CI)."""
    disk = tmp_path / "disk"
    if not _mounted_tmpfs(disk, "64k"):
        pytest.skip("cannot mount a tmpfs here (the ENOSPC path is also tested by monkeypatching)")
    try:
        shapes.write_dataset(tmp_path / "w", n=2, seed=8)
        (disk / "run").mkdir()
        (disk / "run" / "keep.txt").write_text("an earlier output")
        (disk / "filler").write_bytes(b"x" * 60_000)
        capsys.readouterr()
        code = main(["store", "export", str(_store(model, tmp_path)), "--layer", "1",
                     "--features", str(disk / "f.npy"), "--records", str(disk / "r.jsonl")])
        (line,) = _errors(capsys)
        assert code == 2 and "no space left" in line
        assert (disk / "run" / "keep.txt").read_text() == "an earlier output"
        assert not [p for p in disk.iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def _store(model, tmp_path) -> Path:
    out = tmp_path / "store"
    if not (out / "manifest.json").exists():
        shapes.write_dataset(tmp_path / "sw", n=3, seed=11)
        assert main(["extract", "--model", model, "--data", str(tmp_path / "sw"), "--layer", "1", "--out",
                     str(out)]) == 0
    return out


def test_unusable_out_is_refused_before_any_model_work(model, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    shapes.write_dataset(tmp_path / "w", n=2, seed=9)
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        assert _eval("no/such/model", tmp_path / "w", out) == 2  # the model is never reached
        (line,) = _errors(capsys)
        assert "file" in line and "cannot load model" not in line
        assert main(["extract", "--model", "no/such/model", "--data", str(tmp_path / "w"), "--layer", "1",
                     "--out", str(out / "store")]) == 2
        (line,) = _errors(capsys)
        assert "is a file" in line and "cannot load model" not in line
    # a model that fails to load leaves no empty folder behind
    assert _eval("no/such/model", tmp_path / "w", tmp_path / "new" / "run") == 2
    assert "no such model folder" in _errors(capsys)[0] and not (tmp_path / "new").exists()


def test_a_second_writer_of_one_output_folder_is_refused(model, tmp_path, capsys):
    from vlmsteer.outputs import Publication

    shapes.write_dataset(tmp_path / "w", n=2, seed=10)
    with Publication(tmp_path / "run"):
        assert _eval(model, tmp_path / "w", tmp_path / "run") == 2
    (line,) = _errors(capsys)
    assert "another process is writing" in line
    assert _eval(model, tmp_path / "w", tmp_path / "run") == 0  # the lock went with its holder


def test_finetune_into_a_folder_of_other_settings_keeps_the_adapter(model, tmp_path, capsys):
    shapes.write_dataset(tmp_path / "w", n=3, seed=12)
    args = ["finetune", "--model", model, "--data", str(tmp_path / "w"), "--out", str(tmp_path / "ft"),
            "--batch-size", "2", "--save-every", "2"]
    assert main([*args, "--steps", "2"]) == 0
    adapter = (tmp_path / "ft" / "final" / "adapter_model.safetensors").read_bytes()
    assert main([*args, "--steps", "4"]) == 2
    assert "settings.steps" in _errors(capsys)[0]
    assert (tmp_path / "ft" / "final" / "adapter_model.safetensors").read_bytes() == adapter
    assert main([*args, "--steps", "4", "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "ft").iterdir() if p.name.startswith("checkpoint")) == \
        ["checkpoint-2", "checkpoint-4"]


def test_a_generated_world_is_not_mixed_with_another(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path / "w"), "--n", "3", "--seed", "1"]) == 0
    before = sorted(p.name for p in (tmp_path / "w" / "val2014").iterdir())
    assert main(["data", "shapes", "--out", str(tmp_path / "w"), "--n", "2", "--seed", "2"]) == 2
    assert "settings.n" in _errors(capsys)[0]
    assert sorted(p.name for p in (tmp_path / "w" / "val2014").iterdir()) == before
    assert main(["data", "shapes", "--out", str(tmp_path / "w"), "--n", "2", "--seed", "2", "--overwrite"]) == 0
    assert len(list((tmp_path / "w" / "val2014").iterdir())) == 2  # no scene of the first world left


def test_export_refuses_one_file_for_features_and_records(model, tmp_path, capsys):
    target = tmp_path / "x.npy"
    assert main(["store", "export", str(_store(model, tmp_path)), "--layer", "1", "--features", str(target),
                 "--records", str(target)]) == 2
    assert "same file" in _errors(capsys)[0] and not target.exists()


# ---------------------------------------------------------------- working folders and paths

def test_resume_from_another_folder_checks_content_not_paths(model, tmp_path, capsys, monkeypatch):
    """A store records the data by content: another dataset with the same ids under the same
    relative name is refused; the same dataset named by its absolute path resumes exactly."""
    shapes.write_dataset(tmp_path / "a" / "w", n=6, seed=13)
    shapes.write_dataset(tmp_path / "b" / "w", n=6, seed=14)  # same question ids, other scenes
    store, clean = tmp_path / "store", tmp_path / "clean"
    args = ["extract", "--model", model, "--layer", "1", "--shard-size", "8"]
    monkeypatch.chdir(tmp_path / "a")
    assert main([*args, "--data", "w", "--out", str(clean)]) == 0
    assert main([*args, "--data", "w", "--out", str(store)]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"], manifest["complete"] = manifest["shards"][:2], False  # as if killed after 2 shards
    (store / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    monkeypatch.chdir(tmp_path / "b")
    assert main([*args, "--data", "w", "--out", str(store)]) == 2
    (line,) = _errors(capsys)
    assert "dataset.digest" in line
    assert main([*args, "--data", str(tmp_path / "a" / "w"), "--out", str(store)]) == 0
    assert "resumed from 16" in capsys.readouterr().out
    a, b = FeatureStore.open(store), FeatureStore.open(clean)
    assert [r["id"] for r in a.records] == [r["id"] for r in b.records]
    np.testing.assert_array_equal(a.features(1, only_found=False), b.features(1, only_found=False))
    assert all(Path(r["image"]).is_absolute() for r in a.records)


def test_concept_report_reads_the_stored_images_from_any_folder(model, tmp_path, capsys, monkeypatch):
    store = _store(model, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["concepts", str(store), "--out", "c", "-k", "2", "--no-words"]) == 0
    report = (elsewhere / "c" / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 2
    # an image replaced after extraction: refused, never shown in its place
    record = FeatureStore.open(store).records[0]
    Image.new("RGB", (32, 32), (255, 0, 0)).save(record["image"])
    capsys.readouterr()
    assert main(["concepts", str(store), "--out", "c2", "-k", "2", "--no-words"]) == 2
    assert "not the image the features were extracted from" in _errors(capsys)[0]


# ---------------------------------------------------------------- inputs

def test_duplicate_ids_are_refused_at_load(tmp_path):
    from vlmsteer.errors import VlmsteerError

    shapes.write_dataset(tmp_path / "w", n=2, seed=15)
    qpath = tmp_path / "w" / "v2_OpenEnded_mscoco_val2014_questions.json"
    data = json.loads(qpath.read_text())
    data["questions"][3]["question_id"] = data["questions"][1]["question_id"]
    qpath.write_text(json.dumps(data))
    with pytest.raises(VlmsteerError, match=r"duplicate id .*questions\[1\] and questions\[3\]"):
        load_samples("vqav2", tmp_path / "w")
    Image.new("RGB", (8, 8)).save(tmp_path / "i.png")
    (tmp_path / "d.jsonl").write_text('{"id": "a", "image": "i.png", "prompt": "p"}\n'
                                      '{"id": "b", "image": "i.png", "prompt": "q"}\n'
                                      '{"id": "a", "image": "i.png", "prompt": "r"}\n')
    with pytest.raises(VlmsteerError, match="duplicate id 'a' .line 1 and line 3"):
        load_samples("jsonl", tmp_path / "d.jsonl")


def test_a_baseline_of_other_data_is_refused(model, tmp_path, capsys):
    shapes.write_dataset(tmp_path / "w", n=2, seed=16)
    shapes.write_dataset(tmp_path / "v", n=2, seed=17)  # the same ids, other questions
    assert _eval(model, tmp_path / "v", tmp_path / "base") == 0
    assert _eval(model, tmp_path / "w", tmp_path / "run", "--baseline", str(tmp_path / "base")) == 2
    assert "baseline was run on other data" in _errors(capsys)[0]


def _jsonl(folder: Path, image: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "d.jsonl").write_text(json.dumps({"id": "0", "image": image, "prompt": "what?"}) + "\n")
    return folder / "d.jsonl"


def test_symlinks_leading_outside_the_dataset_are_refused(tmp_path, capsys):
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "secret.png")
    (tmp_path / "d" / "imgs").mkdir(parents=True)
    os.symlink(tmp_path / "secret.png", tmp_path / "d" / "imgs" / "link.png")
    os.symlink(tmp_path, tmp_path / "d" / "up")  # a symlinked folder
    for name in ("imgs/link.png", "up/secret.png"):
        data = _jsonl(tmp_path / "d", name)
        assert main(["data", "check", "jsonl", str(data)]) == 2
        (line,) = _errors(capsys)
        assert "outside the dataset folder" in line and "symlink" in line and "--allow-outside-images" in line
        assert main(["data", "check", "jsonl", str(data), "--allow-outside-images"]) == 0
    # VQAv2: a symlink in the image folder
    shapes.write_dataset(tmp_path / "w", n=1, seed=18)
    image = next((tmp_path / "w" / "val2014").iterdir())
    shutil.move(image, tmp_path / "moved.png")
    os.symlink(tmp_path / "moved.png", image)
    capsys.readouterr()
    assert main(["data", "check", "vqav2", str(tmp_path / "w")]) == 2
    assert "outside the dataset folder" in _errors(capsys)[0]


def test_a_fifo_named_as_an_image_is_refused_not_waited_on(tmp_path):
    data = _jsonl(tmp_path / "d", "pipe.png")
    os.mkfifo(tmp_path / "d" / "pipe.png")
    os.mkfifo(tmp_path / "pipe.jsonl")
    os.mkfifo(tmp_path / "pipe.safetensors")
    for argv in (["data", "check", "jsonl", str(data)], ["data", "check", "jsonl", str(tmp_path / "pipe.jsonl")],
                 ["vectors", "concepts", "--dictionary", str(tmp_path / "pipe.safetensors"), "--out",
                  str(tmp_path / "v.safetensors")]):
        done = subprocess.run([sys.executable, "-m", "vlmsteer", *argv], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "not a regular file" in done.stderr, (argv, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1


def test_a_store_manifest_cannot_send_reads_outside_the_store(model, tmp_path, capsys):
    store = _store(model, tmp_path)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["shards"][0]["dir"] = "../sw"
    (store / "manifest.json").write_text(json.dumps(manifest))
    assert main(["concepts", str(store), "--out", str(tmp_path / "c"), "-k", "2", "--no-words"]) == 2
    assert "malformed store manifest" in _errors(capsys)[0]


def test_a_pixel_bomb_is_refused_from_its_header_in_bounded_memory(tmp_path):
    (tmp_path / "d").mkdir()
    Image.new("1", (12000, 12000)).save(tmp_path / "d" / "bomb.png")
    assert (tmp_path / "d" / "bomb.png").stat().st_size < 1_000_000
    data = _jsonl(tmp_path / "d", "bomb.png")
    code = ("import resource, sys\nfrom vlmsteer.cli import main\ncode = main(sys.argv[1:])\n"
            "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", code, "data", "check", "jsonl", str(data)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "12000x12000" in done.stderr and "--max-image-pixels" in done.stderr
    peak_kib = int(done.stdout.split("peak")[1])
    assert peak_kib < 1.2 * 1024 * 1024
    # named on purpose, a larger limit reads it
    assert main(["data", "check", "jsonl", str(data), "--max-image-pixels", str(12000 * 12000)]) == 0


# ---------------------------------------------------------------- combining inputs

def test_inputs_from_other_models_or_selectors_are_refused(model, tmp_path, capsys):
    from vlmsteer.steer.vector import load_vectors

    shapes.write_dataset(tmp_path / "w", n=3, seed=19)
    base = ["extract", "--model", model, "--data", str(tmp_path / "w"), "--layer", "1"]
    assert main([*base, "--out", str(tmp_path / "last")]) == 0
    assert main([*base, "--selector", "mean_image", "--out", str(tmp_path / "image")]) == 0
    capsys.readouterr()
    assert main(["shift", "--original", str(tmp_path / "last"), "--finetuned", str(tmp_path / "image"),
                 "--no-words", "-k", "2", "--out", str(tmp_path / "sh")]) == 2
    assert "different selector" in _errors(capsys)[0]
    assert main(["vectors", "coarse", "--store", str(tmp_path / "last"), "--target-store", str(tmp_path / "image"),
                 "--out", str(tmp_path / "v.safetensors")]) == 2
    assert "different selector" in _errors(capsys)[0]
    # a vector made on this model's store, used with another model of the same hidden size
    assert main(["vectors", "coarse", "--store", str(tmp_path / "last"), "--source", "answer=yes",
                 "--target", "answer=no", "--out", str(tmp_path / "yn.safetensors")]) == 0
    other = tmp_path / "other"
    shutil.copytree(model, other)
    from safetensors.torch import load_file, save_file

    weights = load_file(other / "model.safetensors")
    key = next(iter(weights))
    weights[key] = weights[key] + 1.0
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    run = ["eval", "vqa", "--model", str(other), "--data", str(tmp_path / "w"), "--max-new-tokens", "2",
           "--vector", str(tmp_path / "yn.safetensors")]
    assert main([*run, "--out", str(tmp_path / "e1")]) == 2
    assert "made with another model" in _errors(capsys)[0]
    assert main([*run, "--out", str(tmp_path / "e2"), "--allow-other-model"]) == 0
    # a vector from two stores names both sides by content
    shapes.write_dataset(tmp_path / "w2", n=3, seed=22)
    assert main([*base[:4], str(tmp_path / "w2"), *base[5:], "--out", str(tmp_path / "last2")]) == 0
    assert main(["vectors", "coarse", "--store", str(tmp_path / "last"), "--target-store", str(tmp_path / "last2"),
                 "--out", str(tmp_path / "two.safetensors")]) == 0
    options = next(iter(load_vectors(tmp_path / "two.safetensors").values())).options
    assert options["source_store"]["fingerprint"] == FeatureStore.open(tmp_path / "last").fingerprint
    assert options["target_store"]["fingerprint"] == FeatureStore.open(tmp_path / "last2").fingerprint
    assert options["model"]["weights"]


def test_alpha_that_overflows_the_model_dtype_is_refused(model, tmp_path, capsys):
    import torch

    from vlmsteer.steer import SteeringVector

    shapes.write_dataset(tmp_path / "w", n=1, seed=20)
    SteeringVector({1: torch.ones(32)}).save(tmp_path / "v.safetensors")
    assert _eval(model, tmp_path / "w", tmp_path / "run", "--vector", str(tmp_path / "v.safetensors"),
                 "--alpha", "1e40") == 2
    assert "overflows the model's float32" in _errors(capsys)[0]
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- values and signals

# (command line, options that take a count or a number) for every command; each malformed value
# must end in one error line and exit 2, at parse time or before any model work
COMMANDS = {
    "extract": (["extract", "--model", "m", "--data", "d", "--out", "o", "--layer", "1"],
                ["--batch-size", "--shard-size", "--limit", "--max-new-tokens", "--max-image-pixels"]),
    "eval vqa": (["eval", "vqa", "--model", "m", "--data", "d"],
                 ["--batch-size", "--limit", "--max-new-tokens", "--max-image-pixels"]),
    "eval captions": (["eval", "captions", "--model", "m", "--data", "d"],
                      ["--batch-size", "--limit", "--max-new-tokens"]),
    "eval safety": (["eval", "safety", "--model", "m", "--data", "d"], ["--batch-size", "--limit", "--max-new-tokens"]),
    "concepts": (["concepts", "s", "--out", "o"], ["-k", "--top-words", "--top-images"]),
    "separability": (["separability", "s", "--out", "o"], ["--top", "--folds"]),
    "select": (["select", "--model", "m", "--data", "d", "--vectors", "v"],
               ["--top-n", "--limit", "--batch-size", "--max-new-tokens", "--show"]),
    "sweep": (["sweep", "--model", "m", "--data", "d", "--store", "s", "--source", "answer=yes", "--target",
               "answer=no"], ["--limit", "--batch-size", "--max-new-tokens", "--n-samples", "--alphas"]),
    "finetune": (["finetune", "--model", "m", "--data", "d", "--out", "o"],
                 ["--steps", "--batch-size", "--rank", "--save-every", "--lr", "--limit"]),
    "shift": (["shift", "--original", "a", "--finetuned", "b"], ["-k"]),
    "vectors coarse": (["vectors", "coarse", "--store", "s", "--out", "o.safetensors"], ["--max-samples"]),
    "data shapes": (["data", "shapes", "--out", "o"], ["--n"]),
    "demo train": (["demo", "train", "--out", "o"], ["--samples", "--threads", "--batch-size", "--lr"]),
}
BAD = ["-3", "0", "-1", "abc", "", "1.5e", "nan", "-inf"]
BAD_SEEDS = ["-1", str(2 ** 32), "99999999999999999999", "x"]  # every command's --seed: numpy/sklearn range


@pytest.mark.parametrize("command", list(COMMANDS))
def test_malformed_values_are_one_line_and_exit_2(command, tmp_path, capsys, monkeypatch):
    import random

    monkeypatch.chdir(tmp_path)
    argv, options = COMMANDS[command]
    rng = random.Random(sum(map(ord, command)))
    cases = []
    for option in options:
        for value in rng.sample(BAD, 4):
            if option == "--top-images" and value == "0":
                continue  # 0 images is meaningful
            cases.append((option, value))
    cases += [("--seed", value) for value in BAD_SEEDS]
    for option, value in cases:
        code = main([*argv, option, value])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (command, option, value, err)
    assert not any(tmp_path.iterdir()), "a refused command left files behind"


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_and_the_rerun_resumes(model, tmp_path):
    import signal
    import time

    shapes.write_dataset(tmp_path / "w", n=60, seed=23)
    args = [sys.executable, "-m", "vlmsteer", "--threads", "1", "extract", "--model", model, "--data",
            str(tmp_path / "w"), "--layer", "1", "--shard-size", "16", "--batch-size", "4", "--out",
            str(tmp_path / "s")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "s").glob("shard-00001.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated: finished outputs are kept" in err and "Traceback" not in err
    assert "rerun the same command to resume (the store continues from its last complete shard)" in err
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "resumed from" in done.stdout, done.stderr


def test_hidden_size_mismatches_are_one_line(model, tiny_vlm, tmp_path, capsys):
    import torch

    from vlmsteer.errors import VlmsteerError
    from vlmsteer.steer import Steering, SteeringVector
    from vlmsteer.steer.conditions import NearestConceptCondition

    vlm = tiny_vlm("llava")
    wide = NearestConceptCondition(torch.zeros(2, vlm.hidden_size + 3), [0])
    with pytest.raises(VlmsteerError, match="centroids of size"):
        Steering(SteeringVector({1: torch.ones(vlm.hidden_size)}), condition=wide).check(vlm)
    assert FeatureStore.open(_store(model, tmp_path)).hidden_size == 32  # shapes-llava has 128
    capsys.readouterr()
    assert main(["concepts", str(_store(model, tmp_path)), "--out", str(tmp_path / "c"), "-k", "2",
                 "--model", "shapes-llava"]) == 2
    assert "hidden size" in _errors(capsys)[0] and not (tmp_path / "c").exists()


def test_demo_refuses_a_folder_holding_a_demo_of_other_settings(tmp_path, capsys):
    import dataclasses

    from vlmsteer.demo.run import DemoSettings

    earlier = dataclasses.asdict(DemoSettings(n_scenes=30))
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "run.json").write_text(json.dumps({"options": earlier}, default=str))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--n-scenes", "40"]) == 2
    assert "n_scenes" in _errors(capsys)[0]
    assert [p.name for p in (tmp_path / "demo").iterdir()] == ["run.json"]


def test_devices_this_machine_lacks_are_one_line(tmp_path, capsys):
    import torch

    shapes.write_dataset(tmp_path / "w", n=1, seed=25)
    missing = [d for d, ok in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available()))
               if not ok]
    for device in ["bogus", "cuda:99", *missing]:
        assert _eval("shapes-llava", tmp_path / "w", tmp_path / "run", "--device", device) == 2
        assert "device" in _errors(capsys)[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind, metadata", [
    ("vector", {"vlmsteer": json.dumps({"format_version": 1, "vectors": [1]})}),
    ("vector", {"vlmsteer": json.dumps({"format_version": 1, "vectors": {"v": [1]}})}),
    ("vector", {"vlmsteer": json.dumps({"format_version": 1, "vectors": {"v": {"options": [1]}}})}),
    ("dictionary", {"vlmsteer_dictionary": json.dumps([1])}),
    ("dictionary", {"vlmsteer_dictionary": json.dumps({"method": "kmeans", "params": [1]})}),
    ("dictionary", {"vlmsteer_dictionary": json.dumps({"method": "kmeans", "params": {}})}),
    ("dictionary", {"vlmsteer_dictionary": json.dumps({"method": "kmeans", "params": {"k": 5}})}),
])
def test_hostile_vector_and_dictionary_metadata_is_one_line(kind, metadata, tmp_path, capsys):
    from safetensors.numpy import save_file

    path = tmp_path / "f.safetensors"
    tensors = {"v/layer_1": np.ones(32, np.float32)} if kind == "vector" else {"components_": np.ones((3, 32))}
    save_file(tensors, str(path), metadata=metadata)
    argv = (["select", "--model", "shapes-llava", "--data", str(tmp_path), "--vectors", str(path)] if kind == "vector"
            else ["vectors", "concepts", "--dictionary", str(path), "--out", str(tmp_path / "o.safetensors")])
    assert main(argv) == 2
    assert str(path) in _errors(capsys)[0]


def test_a_failed_run_leaves_its_staging_folder_only_where_a_rerun_resumes_from_it(tmp_path):
    """Issue 37: a run that fails midway (a full disk, a refusal after work began) leaves no
    ``.NAME.partial`` behind, unless the staging folder holds what a rerun resumes from (the
    names the command declares: data-parallel parts, a training checkpoint; all of it for
    organisms); the published output is never touched."""
    import errno

    from vlmsteer.outputs import published

    def fail(out, resumable, write):
        with pytest.raises(OSError):
            with published(out, resumable=resumable) as pub:
                pub.claim({"run": 1})
                for name in write:
                    target = pub.stage / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text("work")
                raise OSError(errno.ENOSPC, "No space left on device")
        return out.with_name(f".{out.name}.partial")

    assert not fail(tmp_path / "diff", (), ["diff.json", "diff.safetensors"]).exists()
    assert fail(tmp_path / "eval", ("parts",), ["parts/rank-0.jsonl", "metrics.json"]).exists()
    assert not fail(tmp_path / "eval2", ("parts",), ["metrics.json"]).exists()
    assert fail(tmp_path / "org", None, ["colors/final/x"]).exists()
    assert not fail(tmp_path / "org2", None, []).exists()
