"""The package's outside: the public API, optional extras, run.json from parsed options,
the steering record, and errors that name parameters (the CLI adds flags)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import vlmsteer
from vlmsteer.cli import main
from vlmsteer.data import shapes
from vlmsteer.errors import VlmsteerError


def test_public_api_names_resolve():
    for name in vlmsteer.__all__:
        assert getattr(vlmsteer, name) is not None, name
    assert vlmsteer.Steering.__module__ == "vlmsteer.steer.steerer"
    with pytest.raises(AttributeError):
        vlmsteer.no_such_thing  # noqa: B018


def test_import_is_light():
    """``import vlmsteer`` loads no torch or transformers until a name is used."""
    code = "import sys, vlmsteer; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# the optional packages made unfindable, exactly as when they are not installed
_BLOCK = textwrap.dedent("""
    import importlib.machinery, sys
    BLOCKED = {"pycocoevalcap", "ot", "matplotlib", "peft"}
    class Hide(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return None
            return super().find_spec(name, path, target)
    sys.meta_path = [Hide if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    from vlmsteer.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _without_extras(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK, *argv], capture_output=True, text=True)


@pytest.mark.slow
def test_core_pipeline_runs_without_extras(tiny_folder, tmp_path):
    """Issue 13, acceptance 3: without pycocoevalcap, POT, matplotlib and peft, extract,
    concepts, vectors and eval vqa (steered) run; what needs an extra says which."""
    model = str(tiny_folder("llava"))
    paths = shapes.write_dataset(tmp_path / "w", n=6, seed=3)
    steps = [
        ["extract", "--model", model, "--data", str(tmp_path / "w"), "--layer", "1", "--out", str(tmp_path / "s")],
        ["concepts", str(tmp_path / "s"), "--layer", "1", "--out", str(tmp_path / "c"), "-k", "3"],
        ["vectors", "coarse", "--store", str(tmp_path / "s"), "--source", "answer_type=yes/no",
         "--target", "answer_type=number", "--out", str(tmp_path / "v.safetensors")],
        ["vectors", "concepts", "--dictionary", str(tmp_path / "c" / "dictionary.safetensors"),
         "--out", str(tmp_path / "vc.safetensors")],
        ["eval", "vqa", "--model", model, "--data", str(tmp_path / "w"), "--limit", "8", "--vector",
         str(tmp_path / "v.safetensors"), "--alpha", "2", "--out", str(tmp_path / "e")],
    ]
    for argv in steps:
        r = _without_extras(*argv)
        assert r.returncode == 0, (argv, r.stderr[-2000:])
    assert (tmp_path / "c" / "report.html").exists() and not (tmp_path / "c" / "pca.png").exists()
    assert "vlmsteer[plots]" in _without_extras(*steps[1][:5], str(tmp_path / "c2"), "-k", "3").stderr
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n"] == 8

    r = _without_extras("eval", "captions", "--model", model, "--data", str(tmp_path / "w"), "--limit", "2",
                        "--max-new-tokens", "2", "--tokenizer", "python", "--out", str(tmp_path / "cap"))
    assert r.returncode == 2 and 'error: CIDEr needs the optional package pycocoevalcap: pip install ' \
                                  '"vlmsteer[captions]"' in r.stderr, r.stderr[-2000:]
    assert paths


def test_run_json_records_parsed_options_and_the_steering(world_vector):
    root, out = world_vector
    run = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    # every option of the command, as parsed (defaults included), not a hand-kept list
    assert run["options"]["max_new_tokens"] == 8 and run["options"]["alpha"] == 3.0
    assert run["options"]["region"] == "last_prompt" and run["options"]["batch_size"] == 32
    assert run["steering"] == metrics["steering"]
    assert run["steering"]["alpha"] == 3.0 and run["steering"]["region"] == "last_prompt"
    assert run["steering"]["layers"] == [1]
    assert run["steering"]["vector"]["source"] == "answer=yes" and run["steering"]["vector"]["target"] == "answer=no"


@pytest.fixture(scope="module")
def world_vector(tmp_path_factory, tiny_folder):
    root = tmp_path_factory.mktemp("api")
    model = str(tiny_folder("llava"))
    shapes.write_dataset(root / "w", n=4, seed=21)
    assert main(["extract", "--model", model, "--data", str(root / "w"), "--layer", "1",
                 "--out", str(root / "s")]) == 0
    assert main(["vectors", "coarse", "--store", str(root / "s"), "--source", "answer=yes", "--target",
                 "answer=no", "--out", str(root / "v.safetensors")]) == 0
    out = root / "e"
    assert main(["eval", "vqa", "--model", model, "--data", str(root / "w"), "--vector", str(root / "v.safetensors"),
                 "--alpha", "3", "--region", "last_prompt", "--out", str(out)]) == 0
    return root, out


def test_library_errors_name_parameters_and_the_cli_adds_flags(tmp_path, capsys):
    from vlmsteer.data.io import dataset_file
    from vlmsteer.positions import Selector

    with pytest.raises(VlmsteerError) as info:
        dataset_file(tmp_path, "../x.png", tmp_path / "d.json", "entry 1")
    assert info.value.param == "allow_outside_images" and "--" not in str(info.value)
    with pytest.raises(VlmsteerError) as info:
        Selector("word")
    assert info.value.param == "word" and "--" not in str(info.value)

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "data.jsonl").write_text(json.dumps({"id": "a", "image": "../x.png", "prompt": "hi"}) + "\n")
    code = main(["extract", "--model", "shapes-llava", "--data", str(tmp_path / "d" / "data.jsonl"),
                 "--format", "jsonl", "--layer", "1", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "leads outside the dataset folder" in err and "(option --allow-outside-images)" in err, err


MODEL_COMMANDS = ["info", "extract", "concepts", "finetune", "shift", "select", "sweep", "eval vqa", "eval captions",
                  "eval safety", "demo"]


def test_every_model_loading_command_takes_device_dtype_and_device_map():
    import typer

    from vlmsteer.cli.common import app

    root = typer.main.get_command(app)
    for path in MODEL_COMMANDS:
        cmd = root
        for part in path.split():
            cmd = cmd.commands[part]
        flags = {opt for p in cmd.params for opt in p.opts}
        assert {"--device", "--dtype", "--device-map"} <= flags, (path, sorted(flags))


def test_device_map_and_dtype_load_paths(tiny_folder, capsys):
    from vlmsteer.model import VLM

    vlm = VLM.load(tiny_folder("llava"), device_map="auto", dtype="bfloat16")
    assert vlm.device.type == "cpu" and next(vlm.model.parameters()).dtype.is_floating_point
    assert str(next(vlm.model.parameters()).dtype) == "torch.bfloat16"
    assert main(["info", str(tiny_folder("llava")), "--device", "cpu", "--dtype", "float32",
                 "--device-map", "auto"]) == 0
    assert main(["info", str(tiny_folder("llava")), "--dtype", "float8"]) == 2
    assert "float8" in capsys.readouterr().err


def test_each_torchrun_rank_takes_its_own_gpu():
    from vlmsteer.runs.protocol import device_for_rank

    assert device_for_rank("cuda", {"LOCAL_RANK": "3"}) == "cuda:3"
    assert device_for_rank("cuda:1", {"LOCAL_RANK": "3"}) == "cuda:1"
    assert device_for_rank("cuda", {}) == "cuda" and device_for_rank("cpu", {"LOCAL_RANK": "1"}) == "cpu"


def test_batches_shrink_on_out_of_memory(tiny_vlm, monkeypatch, caplog):
    """A batch that runs out of accelerator memory is retried at half the size (and later
    batches keep it); answers equal an unconstrained run. A batch of one that still does not
    fit is a one-line error."""
    from vlmsteer.batching import OOM
    from vlmsteer.data.sample import Sample
    from vlmsteer.runs.generation import generate_responses

    vlm = tiny_vlm("llava")
    samples = [Sample(str(i), None, f"question {i}?") for i in range(10)]
    want = [r.text for r in generate_responses(vlm, samples, batch_size=8, max_new_tokens=3)]
    real, sizes = vlm.generate, []

    def limited(batch, **kw):
        sizes.append(batch.input_ids.shape[0])
        if batch.input_ids.shape[0] > 3:
            raise OOM("CUDA out of memory (simulated)")
        return real(batch, **kw)

    monkeypatch.setattr(vlm, "generate", limited)
    with caplog.at_level("WARNING", logger="vlmsteer"):
        got = [r.text for r in generate_responses(vlm, samples, batch_size=8, max_new_tokens=3)]
    assert got == want and sizes[:3] == [8, 4, 2] and max(sizes[3:]) == 2
    assert "batch size lowered to 2" in caplog.text
    monkeypatch.setattr(vlm, "generate", lambda batch, **kw: (_ for _ in ()).throw(OOM("no memory")))
    with pytest.raises(VlmsteerError, match="batch of one sample"):
        generate_responses(vlm, samples[:2], batch_size=2)


def test_default_threads_follow_the_cgroup_quota_and_torchrun(tmp_path, monkeypatch):
    import os

    from vlmsteer.threads import cpu_quota, default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert cpu_quota(tmp_path) == 2.0
    assert default_threads({}, tmp_path) == 2  # 2 CPUs of quota, not 64 cores
    assert default_threads({"LOCAL_WORLD_SIZE": "2"}, tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert default_threads({}, tmp_path) == 64 and default_threads({"LOCAL_WORLD_SIZE": "8"}, tmp_path) == 8


def test_threads_option_sets_torch_threads(tiny_folder):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "info", str(tiny_folder("llava"))]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
