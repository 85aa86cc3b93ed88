"""Word grounding reads only the final norm and the unembedding: the same logits as the whole
model, for every architecture (Gemma3's unembedding is tied to its input embeddings), for
both checkpoint key layouts; a checkpoint it cannot read that way falls back to the whole
model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ALL_ARCHITECTURES
from vlmsteer.head import LanguageHead, load_head
from vlmsteer.model import VLM


def _same_logits(head, vlm) -> bool:
    x = torch.randn(4, vlm.hidden_size, generator=torch.Generator().manual_seed(0))
    return torch.equal(head.logits_from_hidden(x), vlm.logits_from_hidden(x))


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_head_alone_gives_the_models_logits(arch, tiny_folder):
    folder = tiny_folder(arch)
    head, vlm = load_head(folder), VLM.load(folder)
    assert isinstance(head, LanguageHead)  # not the whole model
    assert _same_logits(head, vlm)
    assert head.tokenizer.get_vocab() == vlm.tokenizer.get_vocab()


def test_head_of_the_shipped_model_grounds_as_the_model_does():
    from vlmsteer.concepts import ground_text

    head, vlm = load_head("shapes-llava"), VLM.load("shapes-llava")
    centres = torch.randn(5, vlm.hidden_size, generator=torch.Generator().manual_seed(1)).numpy()
    assert [g.words for g in ground_text(head, centres)] == [g.words for g in ground_text(vlm, centres)]
    assert sum(p.numel() for m in (head.norm, head.unembed) for p in m.parameters()) < \
        sum(p.numel() for p in vlm.model.parameters()) / 2


def test_both_key_layouts_are_read_as_transformers_reads_them(tiny_folder, tmp_path):
    """transformers saves LLaVA in the hub's original layout (``language_model.model.norm``,
    ``language_model.lm_head``) and renames on loading; a checkpoint in its in-memory layout
    (``model.language_model.norm``, ``lm_head``) loads too. The head reads both."""
    import shutil

    src = tiny_folder("llava")
    saved = load_file(str(src / "model.safetensors"))
    assert "language_model.model.norm.weight" in saved and "language_model.lm_head.weight" in saved
    renames = {"language_model.lm_head.": "lm_head.", "language_model.model.": "model.language_model.",
               "vision_tower.": "model.vision_tower.", "multi_modal_projector.": "model.multi_modal_projector."}
    current = {}
    for key, value in saved.items():
        old = next((o for o in renames if key.startswith(o)), None)
        current[renames[old] + key[len(old):] if old else key] = value
    folder = tmp_path / "current"
    shutil.copytree(src, folder)
    save_file(current, str(folder / "model.safetensors"), metadata={"format": "pt"})
    head, vlm = load_head(folder), VLM.load(folder)
    assert isinstance(head, LanguageHead) and _same_logits(head, vlm)
    assert _same_logits(head, VLM.load(src))


def test_unreadable_head_falls_back_to_the_whole_model(tiny_folder, tmp_path, caplog):
    import shutil

    folder = tmp_path / "renamed"
    shutil.copytree(tiny_folder("llava"), folder)
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k.replace("norm.weight", "final_norm_w"): v for k, v in weights.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    with caplog.at_level("INFO", logger="vlmsteer"):
        head = load_head(folder)
    assert isinstance(head, VLM) and "whole model" in caplog.text


def test_concepts_command_grounds_without_loading_the_model(tiny_folder, tmp_path, monkeypatch):
    """``vlmsteer concepts`` (and ``shift``) ground words with the head alone (the splice cost,
    which needs the whole model, turned off)."""
    from vlmsteer.cli import main
    from vlmsteer.data import shapes

    shapes.write_dataset(tmp_path / "w", 6, seed=2)
    folder = str(tiny_folder("llava"))
    assert main(["extract", "--model", folder, "--data", str(tmp_path / "w"), "--layer", "1",
                 "--out", str(tmp_path / "s")]) == 0
    monkeypatch.setattr(VLM, "load", classmethod(lambda cls, *a, **k: pytest.fail("loaded the whole model")))
    assert main(["concepts", str(tmp_path / "s"), "-k", "3", "--splice-samples", "0",
                 "--out", str(tmp_path / "c")]) == 0
    concepts = json.loads((tmp_path / "c" / "concepts.json").read_text())["concepts"]
    assert all(c["words"] for c in concepts)
