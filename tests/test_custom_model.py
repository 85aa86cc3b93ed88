"""A model that is not an HF image-text-to-text class, plugged in by naming its parts."""

import torch

from vlmsteer.data import shapes
from vlmsteer.hooks import capture_residual
from vlmsteer.testing.tiny_models import build_clip_opt_vlm


def test_clip_opt_custom_model():
    vlm = build_clip_opt_vlm()
    images = [shapes.render(shapes.make_scene(3, i)) for i in range(2)]
    batch = vlm.prepare(images, ["is there a red circle ?", "where is this ?"])
    assert batch.regions.image.sum(1).tolist() == [4, 4]
    assert vlm.num_layers == 3 and vlm.hidden_size == 32
    with capture_residual(vlm.layers, [0, 1, 2]) as store:
        out = vlm.forward(batch, output_hidden_states=True)
    for layer in (0, 1):
        torch.testing.assert_close(store[layer][0], out.hidden_states[layer + 1], rtol=0, atol=0)
    torch.testing.assert_close(vlm.logits_from_hidden(store[2][0]), out.logits, rtol=1e-5, atol=1e-5)
    gen = vlm.generate(batch, max_new_tokens=4)
    assert gen.tokens.shape == (2, 4)
    alone = vlm.generate(vlm.prepare(images[1:], ["where is this ?"]), max_new_tokens=4)
    assert alone.tokens[0].tolist() == gen.tokens[1].tolist()
