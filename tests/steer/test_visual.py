"""Visual steering (VISTA-style): each row's own vector, image minus blank image at its last
prompt token, added where the region says; KV-cache safe; nothing at alpha 0."""

import pytest
import torch

from vlmsteer.data import shapes
from vlmsteer.errors import VlmsteerError
from vlmsteer.hooks import capture_residual
from vlmsteer.steer.visual import VisualSteering


def _batch(vlm):
    images = [shapes.render(shapes.make_scene(9, i)) for i in range(3)]
    return vlm.prepare(images, ["what color is the square ?", "is there a circle ?", "describe the image ."])


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "idefics3"])
def test_each_row_gets_its_own_image_minus_blank_vector(arch, tiny_vlm):
    vlm = tiny_vlm(arch)
    batch = _batch(vlm)
    got = VisualSteering(1.0).vectors(vlm, batch)
    assert sorted(got) == list(range(vlm.num_layers))
    pixels = {k: torch.full_like(v, 0.5) for k, v in batch.inputs.items() if k.startswith("pixel_values")}
    blank = type(batch)(inputs={**batch.inputs, **pixels}, regions=batch.regions, prompt_length=batch.prompt_length)
    states = []
    for b in (batch, blank):
        with capture_residual(vlm.layers, [1]) as seen:
            vlm.forward(b)
        states.append(seen[1][0][:, -1].float())
    assert torch.allclose(got[1], states[0] - states[1], atol=1e-5)
    assert not torch.allclose(got[1][0], got[1][1])  # rows differ: one vector per sample
    assert float(got[1].norm()) > 0


@pytest.mark.parametrize("region", ["all", "generated", "last_prompt"])
def test_kv_cache_equals_no_cache_and_the_answer_moved(region, tiny_vlm):
    vlm = tiny_vlm("llava")
    batch = _batch(vlm)
    plain = vlm.generate(batch, max_new_tokens=6).tokens
    steering = VisualSteering(6.0, (0, 1), region).check(vlm)
    with steering.apply(vlm, batch):
        cached = vlm.generate(batch, max_new_tokens=6, use_cache=True).tokens
    with steering.apply(vlm, batch):
        uncached = vlm.generate(batch, max_new_tokens=6, use_cache=False).tokens
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain)


def test_alpha_zero_leaves_the_model_untouched_and_bad_values_are_refused(tiny_vlm):
    vlm = tiny_vlm("llava")
    batch = _batch(vlm)
    ref = vlm.forward(batch).logits
    with VisualSteering(0.0).check(vlm).apply(vlm, batch):
        assert torch.equal(vlm.forward(batch).logits, ref)
    with pytest.raises(VlmsteerError, match="finite"):
        VisualSteering(float("nan"))
    with pytest.raises(VlmsteerError, match="normalisation"):
        with VisualSteering(1e30).check(vlm).apply(vlm, batch):
            pass
    text_only = vlm.prepare([None, None], ["a", "b"])
    with pytest.raises(VlmsteerError, match="needs an image"):
        with VisualSteering(1.0).check(vlm).apply(vlm, text_only):
            pass
    assert VisualSteering(2.0, (1,)).describe()["kind"] == "visual"


def test_the_fixed_visual_shift_summarises_the_per_sample_vectors(tiny_vlm):
    from vlmsteer.data.sample import Sample
    from vlmsteer.steer.visual import visual_shift_vector

    vlm = tiny_vlm("llava")
    samples = [Sample(id=str(i), image=shapes.render(shapes.make_scene(4, i)), prompt="describe the image .")
               for i in range(6)]
    per_sample = VisualSteering(1.0, (1,)).vectors(vlm, vlm.prepare([s.image for s in samples],
                                                                      [s.prompt for s in samples]))[1]
    mean = visual_shift_vector(vlm, samples, [1], method="mean", batch_size=4)
    assert torch.allclose(mean.at(1), per_sample.mean(0), atol=1e-5)  # the same in two batches as in one
    pca = visual_shift_vector(vlm, samples, [1], method="pca", batch_size=4)
    direction = pca.at(1) / pca.at(1).norm()
    assert float(direction @ per_sample.mean(0)) > 0
    assert torch.allclose(pca.at(1).norm(), direction @ per_sample.mean(0), atol=1e-4)  # scaled like the mean
    assert pca.options["model"] == vlm.identity and pca.method == "visual-pca"
    with pytest.raises(VlmsteerError, match="one of pca, mean"):
        visual_shift_vector(vlm, samples, [1], method="median")


def test_the_random_control_keeps_each_norm_and_is_the_same_in_any_batch(tiny_vlm):
    vlm = tiny_vlm("llava")
    batch = _batch(vlm)
    real = VisualSteering(1.0, (1,)).vectors(vlm, batch)[1]
    control = VisualSteering(1.0, (1,), control=True).vectors(vlm, batch)[1]
    assert torch.allclose(control.norm(dim=-1), real.norm(dim=-1), atol=1e-5)
    cosine = torch.nn.functional.cosine_similarity(control, real, dim=-1)
    assert bool((cosine.abs() < 0.9).all())  # another direction
    alone = VisualSteering(1.0, (1,), control=True).vectors(vlm, vlm.prepare([shapes.render(shapes.make_scene(9, 0))],
                                                                               ["what color is the square ?"]))[1]
    assert torch.allclose(alone[0], control[0], atol=1e-4)  # the same sample, the same direction
