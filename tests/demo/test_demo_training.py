"""The demo model's training: deterministic for a seed, and its batches match the chat template."""

import numpy as np
import torch
from safetensors.torch import load_file

from vlmsteer.data import shapes
from vlmsteer.demo.build import DemoArchitecture, build_processor
from vlmsteer.demo.train import TrainConfig, _to_pixels, train_demo_model

TINY = DemoArchitecture(vision_hidden=32, vision_intermediate=64, text_hidden=32, text_intermediate=64,
                        text_layers=2)


def _train(folder, seed):
    cfg = TrainConfig(seed=seed, samples=8 * 12, batch_size=8, n_scenes=64, eval_every=6, warmup_steps=2,
                      arch=TINY)
    train_demo_model(folder, cfg, log=lambda line: None)
    return load_file(str(folder / "model.safetensors"))


def test_training_is_deterministic_for_a_seed(tmp_path):
    a, b, c = _train(tmp_path / "a", 0), _train(tmp_path / "b", 0), _train(tmp_path / "c", 1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_fast_pixels_equal_the_image_processor():
    processor = build_processor()
    scenes = [shapes.make_scene(0, i) for i in range(4)]
    arrays = np.stack([shapes.render_array(s) for s in scenes])
    ours = _to_pixels(arrays, processor)
    theirs = processor.image_processor([shapes.render(s) for s in scenes], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
