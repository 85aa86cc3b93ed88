"""Acceptance 2 of the foundation issue: the wrapper on seven architectures, loaded by path."""

from __future__ import annotations

import pytest
import torch

from vlmsteer.data import shapes
from vlmsteer.hooks import capture_residual
from tests.conftest import ALL_ARCHITECTURES

PROMPTS = ["is there a red circle ?", "where is this ?", "how many shapes are there in this scene with many shapes ?"]


def _images(n):
    return [shapes.render(shapes.make_scene(7, i)) for i in range(n)]


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_hooks_match_hidden_states_and_logits(arch, tiny_vlm):
    vlm = tiny_vlm(arch)
    batch = vlm.prepare(_images(3), PROMPTS)
    assert batch.attention_mask[:, 0].min() == 0, "prompts of different lengths must be left padded"
    layers = list(range(vlm.num_layers))
    with capture_residual(vlm.layers, layers) as store:
        out = vlm.forward(batch, output_hidden_states=True)
    assert len(out.hidden_states) == vlm.num_layers + 1
    for layer in layers[:-1]:
        torch.testing.assert_close(store[layer][0], out.hidden_states[layer + 1], rtol=0, atol=0)
    logits = vlm.logits_from_hidden(store[layers[-1]][0])
    torch.testing.assert_close(logits, out.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_image_region_matches_processor(arch, tiny_vlm):
    vlm = tiny_vlm(arch)
    batch = vlm.prepare(_images(3), PROMPTS)
    types = batch.inputs.get("mm_token_type_ids", batch.inputs.get("token_type_ids"))
    if types is not None and int(types.max()) > 0:
        expected = types == 1
    else:
        tid = vlm.processor.image_token_id
        expected = batch.input_ids == tid
    assert expected.any()
    assert torch.equal(batch.regions.image, expected & (batch.attention_mask == 1))
    # text = non-padding, non-image; last prompt token = final position under left padding
    assert torch.equal(batch.regions.text, (batch.attention_mask == 1) & ~expected)
    assert batch.regions.last_prompt[:, -1].all() and int(batch.regions.last_prompt.sum()) == 3
    assert torch.equal(batch.regions.padding, batch.attention_mask == 0)


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_batched_generation_equals_one_by_one(arch, tiny_vlm):
    vlm = tiny_vlm(arch)
    images = _images(3)
    together = vlm.generate(vlm.prepare(images, PROMPTS), max_new_tokens=6)
    for i in range(3):
        alone = vlm.generate(vlm.prepare(images[i:i + 1], PROMPTS[i:i + 1]), max_new_tokens=6)
        n = alone.lengths[0]
        assert together.tokens[i, :n].tolist() == alone.tokens[0, :n].tolist(), arch
        assert together.texts[i] == alone.texts[0]


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_padded_forward_equals_unpadded(arch, tiny_vlm):
    """Left padding must not change a row's last-position logits (position ids from the mask)."""
    vlm = tiny_vlm(arch)
    images = _images(3)
    together = vlm.forward(vlm.prepare(images, PROMPTS)).logits[:, -1]
    for i in range(3):
        alone = vlm.forward(vlm.prepare(images[i:i + 1], PROMPTS[i:i + 1])).logits[:, -1]
        torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-4, atol=1e-4)


def test_layer_index_negative_and_out_of_range(tiny_vlm):
    from vlmsteer.errors import VlmsteerError

    vlm = tiny_vlm("llava")
    assert vlm.layer_index(-1) == vlm.num_layers - 1
    assert vlm.layer_index(0) == 0
    with pytest.raises(VlmsteerError, match="out of range"):
        vlm.layer_index(vlm.num_layers)


def test_prepare_decodes_each_image_path_once_per_batch(tiny_vlm, tmp_path, monkeypatch):
    import vlmsteer.loading as loading_module
    from vlmsteer.loading import load_image

    vlm = tiny_vlm("llava")
    paths = []
    for i, im in enumerate(_images(2)):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    batch_images = [paths[0], str(paths[0]), paths[1], paths[0]]
    prompts = [PROMPTS[i % 3] for i in range(4)]
    decoded = []
    monkeypatch.setattr(loading_module, "load_image",
                        lambda im, max_pixels=None: decoded.append(str(im)) or load_image(im, max_pixels))
    once = vlm.prepare(batch_images, prompts)
    assert sorted(decoded) == sorted(map(str, paths))  # two files, two decodes for four rows
    each = vlm.prepare([load_image(p) for p in batch_images], prompts)
    for key, value in each.inputs.items():
        assert torch.equal(once.inputs[key], value), key
