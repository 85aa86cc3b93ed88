"""One error path for the whole CLI: every usage error, malformed value, empty input, NaN
vector, unreadable or corrupt file ends in exactly one ``error:`` line and exit code 2 (no
traceback, no exit 0, no silent empty result, no empty output folder); Ctrl-C exits 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from vlmsteer.cli import main
from vlmsteer.data import shapes
from vlmsteer.steer.vector import SteeringVector
from vlmsteer.store import StoreWriter


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_folder):
    """A small dataset, a complete 2-layer store extracted from the tiny LLaVA, and its folder."""
    root = tmp_path_factory.mktemp("errors")
    shapes.write_dataset(root / "w", n=4, seed=21)
    model = str(tiny_folder("llava"))
    assert main(["extract", "--model", model, "--data", str(root / "w"), "--layer", "0,1",
                 "--out", str(root / "store")]) == 0
    return root, model


def _one_error(capsys, code: int, argv: list[str], *needles: str) -> str:
    got = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert got == code, (argv, got, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_usage_errors(capsys, world):
    root, model = world
    cases = [
        (["info"], "Missing argument"),
        (["extract", "--bogus"], "No such option", "--bogus"),
        (["extrct"], "No such command 'extrct'"),
        (["eval", "vqa", "--model", model, "--data", str(root / "w"), "--alpha", "abc"], "'--alpha'"),
        (["concepts", str(root / "store"), "--out", str(root / "c"), "-k", "abc"], "'-k'"),
        (["shift", "--original", str(root / "store"), "--finetuned", str(root / "store"), "--ks", "2,x",
          "--no-words", "--layer", "1"], "--ks expects integers, got 'x'"),
        (["vectors", "coarse", "--store", str(root / "store"), "--source", "answer=yes", "--target", "answer=no",
          "--layer", "-5", "--out", str(root / "v.safetensors")], "layer -5 is out of range", "-3..-1"),
        (["vectors", "coarse", "--store", str(root / "store"), "--source", "answer=yes", "--target",
          "answer=no", "--layer", "7", "--out", str(root / "v.safetensors")], "layer 7 is out of range"),
        (["eval", "vqa", "--model", model, "--data", str(root / "w"), "--limit", "-1"], "--limit"),
        (["eval", "vqa", "--model", model, "--data", str(root / "w"), "--region", "middle"], "unknown region"),
    ]
    for argv, *needles in cases:
        _one_error(capsys, 2, argv, *needles)
    assert not (root / "c").exists() and not (root / "v.safetensors").exists()


def test_bare_command_shows_help_and_exits_2(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "Usage" in captured.out + captured.err and "Traceback" not in captured.err


def test_sweep_accepts_alternative_answers(world, capsys):
    root, model = world
    out = root / "sweep"
    assert main(["sweep", "--model", model, "--data", str(root / "w"), "--store", str(root / "store"),
                 "--source", "answer=yes|two", "--target", "answer=no", "--layers", "1", "--alphas", "1",
                 "--limit", "4", "--out", str(out)]) == 0
    assert json.loads((out / "sweep.json").read_text())["rows"]


def test_nan_and_inf_vectors_are_refused(world, tmp_path, capsys):
    root, model = world
    for bad in (float("nan"), float("inf")):
        vec = torch.ones(32)
        vec[3] = bad
        path = tmp_path / "bad.safetensors"
        # written around the constructor's check, as another tool could
        from safetensors.torch import save_file

        save_file({"vector/layer_1": vec}, str(path), metadata={"vlmsteer": json.dumps(
            {"format_version": 1, "vectors": {"vector": {"hidden_size": 32}}})})
        _one_error(capsys, 2, ["eval", "vqa", "--model", model, "--data", str(root / "w"), "--vector", str(path),
                               "--out", str(tmp_path / "o")], "NaN or infinite")
        assert not (tmp_path / "o").exists()
    with pytest.raises(Exception, match="NaN or infinite"):
        SteeringVector({1: torch.tensor([0.0, float("nan")])})


def test_corrupt_and_partial_stores(world, tmp_path, capsys):
    import shutil

    root, _ = world
    npy = tmp_path / "npy"
    shutil.copytree(root / "store", npy)
    shard = npy / "shard-00000.layer-1.npy"
    shard.write_bytes(shard.read_bytes()[:100])
    _one_error(capsys, 2, ["concepts", str(npy), "--out", str(tmp_path / "c1"), "-k", "2", "--layer", "1",
                           "--no-words"], "shard-00000.layer-1.npy", "corrupt store shard")
    records = tmp_path / "records"
    shutil.copytree(root / "store", records)
    (records / "shard-00000.json").write_text('[{"id": ')
    _one_error(capsys, 2, ["vectors", "coarse", "--store", str(records), "--source", "answer=yes", "--target",
                           "answer=no", "--out", str(tmp_path / "v.safetensors")], "shard-00000.json", "corrupt")
    partial = tmp_path / "partial"
    shutil.copytree(root / "store", partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    manifest["complete"] = False
    (partial / "manifest.json").write_text(json.dumps(manifest))
    _one_error(capsys, 2, ["concepts", str(partial), "--out", str(tmp_path / "c2"), "-k", "2", "--layer", "1",
                           "--no-words"], "incomplete store", "--allow-partial")
    assert main(["concepts", str(partial), "--out", str(tmp_path / "c2"), "-k", "2", "--layer", "1", "--no-words",
                 "--allow-partial"]) == 0
    assert not (tmp_path / "c1").exists()


def test_resume_with_other_model_dtype_or_adapter_is_refused(world, tiny_folder, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    root, model = world
    base = ["extract", "--data", str(root / "w"), "--layer", "0,1", "--out", str(root / "store")]
    _one_error(capsys, 2, base + ["--model", str(tiny_folder("qwen2_vl"))], "other settings", "model.weights")
    _one_error(capsys, 2, base + ["--model", model, "--dtype", "bfloat16"], "model.dtype")
    lora = get_peft_model(AutoModelForImageTextToText.from_pretrained(model),
                          LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    _one_error(capsys, 2, base + ["--model", model, "--adapter", str(tmp_path / "adapter")], "adapter")
    # the same settings resume
    assert main(base + ["--model", model]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_a_second_writer_is_refused(tmp_path):
    from vlmsteer.errors import VlmsteerError

    header = {"hidden_size": 2, "layers": [0], "num_layers": 1}
    first = StoreWriter(tmp_path / "s", header)
    with pytest.raises(VlmsteerError, match="another process is writing"):
        subprocess_code = (f"from vlmsteer.store import StoreWriter\nStoreWriter({str(tmp_path / 's')!r}, "
                           f"{header!r})")
        done = subprocess.run([sys.executable, "-c", subprocess_code], capture_output=True, text=True)
        raise VlmsteerError(done.stderr.strip().splitlines()[-1] if done.returncode else "no error")
    first.write_shard([{"id": "0"}], {0: np.zeros((1, 2), np.float32)})
    first.finish()
    StoreWriter(tmp_path / "s", header).close()  # released when finished


def test_bad_datasets(world, tmp_path, capsys):
    root, model = world
    (tmp_path / "bad.jsonl").write_bytes(b'\xff\xfe{"prompt": "x"}\n')
    (tmp_path / "int.jsonl").write_text('{"prompt": 5}\n')
    (tmp_path / "answers.jsonl").write_text('{"prompt": "x", "answers": [1, 2]}\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "folder.jsonl").mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    image = sorted((root / "w" / "val2014").iterdir())[0]
    (outside / "x.png").write_bytes(image.read_bytes())
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "up.jsonl").write_text('{"prompt": "hi", "image": "../elsewhere/x.png"}\n')
    (tmp_path / "d" / "abs.jsonl").write_text(json.dumps({"prompt": "hi", "image": str(outside / "x.png")}) + "\n")
    cases = [
        ("bad.jsonl", "not a UTF-8 text file"), ("int.jsonl", "'prompt' must be a string"),
        ("answers.jsonl", "'answers' must be a string or a list of strings"), ("empty.jsonl", "no samples"),
        ("folder.jsonl", "is a folder"), ("d/up.jsonl", "leads outside the dataset folder"),
        ("d/abs.jsonl", "--allow-outside-images"),
    ]
    for name, needle in cases:
        _one_error(capsys, 2, ["data", "check", "jsonl", str(tmp_path / name)], needle)
    assert main(["data", "check", "jsonl", str(tmp_path / "d" / "up.jsonl"), "--allow-outside-images"]) == 0
    _one_error(capsys, 2, ["eval", "safety", "--model", model, "--data", str(tmp_path / "empty.jsonl"),
                           "--format", "jsonl", "--out", str(tmp_path / "asr")], "no samples")
    assert not (tmp_path / "asr").exists()
    # an empty VQA split, and a truncated image that exists
    empty = tmp_path / "emptyvqa"
    empty.mkdir()
    (empty / "v2_OpenEnded_mscoco_val2014_questions.json").write_text('{"questions": []}')
    (empty / "v2_mscoco_val2014_annotations.json").write_text('{"annotations": []}')
    _one_error(capsys, 2, ["eval", "vqa", "--model", model, "--data", str(empty)], "no samples")
    import shutil

    truncated = tmp_path / "truncated"
    shutil.copytree(root / "w", truncated)
    victim = sorted((truncated / "val2014").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:60])
    _one_error(capsys, 2, ["data", "check", "vqav2", str(truncated)], victim.name, "cannot decode image")


def test_outside_image_paths_in_coco_files(world, tmp_path, capsys):
    root, _ = world
    data = json.loads((root / "w" / "captions_val2014.json").read_text())
    data["images"][0]["file_name"] = "../../../elsewhere/x.png"
    (tmp_path / "captions_val2014.json").write_text(json.dumps(data))
    _one_error(capsys, 2, ["data", "check", "coco", str(tmp_path / "captions_val2014.json")],
               "leads outside the dataset folder")


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_store_resumes(tiny_folder, tmp_path):
    data = tmp_path / "data"
    shapes.write_dataset(data, n=40, seed=12)
    args = [sys.executable, "-m", "vlmsteer.cli", "extract", "--model", str(tiny_folder("llava")), "--data",
            str(data), "--layer", "0", "--batch-size", "1", "--shard-size", "8", "--out", str(tmp_path / "s")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    manifest = tmp_path / "s" / "manifest.json"
    while time.time() < deadline:
        if manifest.exists() and json.loads(manifest.read_text())["shards"]:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if json.loads(manifest.read_text())["complete"]:
        pytest.skip("the extraction finished before the interrupt arrived")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "resume" in err and "Traceback" not in err
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0 and "resumed from" in again.stdout


def test_a_format_without_reference_answers_is_refused_where_answers_are_needed(capsys, tmp_path):
    """FigStep and MM-SafetyBench carry prompts only: ``eval vqa`` and ``finetune`` refuse them
    when the command line is read (their help does not offer them), before any data is read."""
    missing = str(tmp_path / "nowhere")
    for fmt in ("figstep", "mm-safetybench"):
        _one_error(capsys, 2, ["eval", "vqa", "--model", "shapes-llava", "--data", missing, "--format", fmt,
                               "--out", str(tmp_path / "e")], f"--format {fmt}: choose one of vqav2, jsonl")
        _one_error(capsys, 2, ["finetune", "--model", "shapes-llava", "--data", missing, "--format", fmt,
                               "--out", str(tmp_path / "f")], f"--format {fmt}: choose one of")
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()


def test_the_interrupted_line_promises_a_resume_only_where_the_command_resumes(tmp_path, capsys, monkeypatch):
    """A command that resumes says what a rerun picks up (extract: its shards); one that does
    not (eval) says a rerun starts again."""
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("vlmsteer.cli.extract._load_samples", stop)
    monkeypatch.setattr("vlmsteer.cli.eval._load_samples", stop)
    assert main(["extract", "--model", "m", "--data", str(tmp_path), "--layer", "0", "--out", str(tmp_path / "s")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted: finished outputs are kept")
    assert "rerun the same command to resume (the store continues from its last complete shard)" in err
    assert main(["eval", "vqa", "--model", "m", "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 130
    err = capsys.readouterr().err
    assert "rerun the same command to start again" in err and "resume" not in err


# a value away from each option's default, as typed on the command line
_OTHER_VALUE = {"k": ["-k", "7"], "latents": ["--latents", "64"], "l0": ["--l0", "3"], "epochs": ["--epochs", "2"],
                "batch_size": ["--batch-size", "16"], "lr": ["--lr", "0.01"], "train_dtype": ["--train-dtype", "bfloat16"],
                "saelens": ["--saelens"], "backend": ["--backend", "torch"]}


def test_every_method_option_is_applied_or_refused(tmp_path, capsys):
    """Issue 37, acceptance 1: for concepts and diff, every method-specific option given to a
    method that does not take it is refused in one line (never accepted and ignored); given to
    one that takes it, it is not refused for that reason."""
    from vlmsteer.analysis.diffing_methods import DIFF_METHODS
    from vlmsteer.concepts.methods import CONCEPT_METHODS

    walked = 0
    trainable = [e for e in CONCEPT_METHODS if e.value.family != "paired" and not e.value.loads_only]
    options = {o for e in trainable for o in e.options} - {"seed", "device"}
    assert options <= _OTHER_VALUE.keys()
    for entry in trainable:
        for option in sorted(options):
            code = main(["concepts", str(tmp_path / "no-store"), "--method", entry.name, *_OTHER_VALUE[option],
                         "--no-words", "--out", str(tmp_path / "c")])
            err = capsys.readouterr().err
            assert code == 2 and err.count("error:") == 1, (entry.name, option, err)
            assert ("does not use" in err) == (option not in entry.options), (entry.name, option, err)
            walked += 1
    for entry in DIFF_METHODS:
        for option in ("k", "latents", "l0", "epochs"):
            code = main(["diff", "--original", str(tmp_path / "a"), "--finetuned", str(tmp_path / "b"), "--method",
                         entry.name, *_OTHER_VALUE[option], "--no-words", "--out", str(tmp_path / "d")])
            err = capsys.readouterr().err
            assert code == 2 and err.count("error:") == 1, (entry.name, option, err)
            assert ("does not use" in err) == (option not in entry.options), (entry.name, option, err)
            walked += 1
    assert walked >= 40 and not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_values_are_never_clamped_in_silence(world, capsys, tmp_path):
    """A crosscoder asked for more active latents than latents, and more concepts than the
    stores pair: refused with the bound."""
    root, _ = world
    store = str(root / "store")
    _one_error(capsys, 2, ["diff", "--original", store, "--finetuned", store, "--method", "crosscoder", "--latents",
                           "8", "--l0", "20", "--no-words", "--out", str(tmp_path / "x")],
               "20 active latents per sample is more than the dictionary's 8 latents")
    _one_error(capsys, 2, ["diff", "--original", store, "--finetuned", store, "--method", "concepts", "-k", "500",
                           "--no-words", "--out", str(tmp_path / "y")], "500 concepts need at least 500 paired samples")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_an_empty_list_is_an_error_not_all(capsys, tmp_path):
    _one_error(capsys, 2, ["organisms", "build", "--only", "", "--out", str(tmp_path / "o")],
               "no organism named in ''", "(option --only)")
    _one_error(capsys, 2, ["organisms", "build", "--only", " , ", "--out", str(tmp_path / "o")], "no organism named")
    assert not (tmp_path / "o").exists()


def test_an_image_that_is_a_folder_or_a_pipe_is_named_as_such(capsys, tmp_path):
    """Issue 37: where an image should be, a folder or a FIFO is refused saying what it is (not
    "not found"), and a FIFO is never opened (that would block for ever)."""
    for kind in ("folder", "fifo"):
        root = tmp_path / kind
        root.mkdir()
        if kind == "folder":
            (root / "scene.png").mkdir()
        else:
            os.mkfifo(root / "scene.png")
        (root / "d.jsonl").write_text('{"image": "scene.png", "prompt": "what is this?", "answer": "a circle"}\n')
        what = "is a folder" if kind == "folder" else "is not a regular file (a pipe, socket or device)"
        _one_error(capsys, 2, ["data", "check", "jsonl", str(root / "d.jsonl")], f"image of line 1 {what}")


def test_diff_of_a_model_with_itself_is_called_unchanged(world, capsys, tmp_path):
    root, _ = world
    store = str(root / "store")
    assert main(["diff", "--original", store, "--finetuned", store, "--no-words", "--out", str(tmp_path / "d")]) == 0
    result = json.loads((tmp_path / "d" / "diff.json").read_text())
    assert result["changed"] is False and result["relative_norm"] == 0 < result["noise_floor"]
    assert "unchanged: readout adl, 0.000 of the features' spread (noise floor" in capsys.readouterr().out
    assert "Unchanged: 0.000 is within the noise floor" in (tmp_path / "d" / "report.html").read_text()


@pytest.mark.parametrize("piece", ["manifest.json", "shard-00000.json", "shard-00000.layer-0.npy"])
def test_a_store_file_that_is_a_pipe_is_refused_not_waited_on(world, tmp_path, piece):
    """Issue 37: a FIFO where a store's manifest or shard should be blocks open() for ever; it
    is refused in one line instead (in a subprocess: a regression would hang, not fail)."""
    import shutil

    root, _ = world
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    (store / piece).unlink()
    os.mkfifo(store / piece)
    done = subprocess.run([sys.executable, "-m", "vlmsteer", "concepts", str(store), "--layer", "0", "--no-words",
                           "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("error:") == 1, done.stderr[-1500:]
    assert "is not a regular file (a pipe, socket or device)" in done.stderr and piece in done.stderr
