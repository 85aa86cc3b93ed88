"""Steering invariants: alpha=0 is a no-op, the context restores the model, and steered
generation with the KV cache equals generation without it for every region, batched and
left padded. Plus vector values, files and errors."""

from __future__ import annotations

import pytest
import torch

from vlmsteer.cli import main
from vlmsteer.data import shapes
from vlmsteer.errors import VlmsteerError
from vlmsteer.positions import REGIONS, Region
from vlmsteer.hooks import capture_residual
from vlmsteer.steer import SteeringVector, steer
from vlmsteer.steer.builders import all_concept_shifts, concept_shift
from vlmsteer.steer.vector import load_vector, load_vectors, save_vectors

PROMPTS = ["is there a red circle ?", "where is this ?", "how many shapes are there in this scene with many shapes ?"]


def _batch(vlm):
    images = [shapes.render(shapes.make_scene(9, i)) for i in range(3)]
    return vlm.prepare(images, PROMPTS)


def _vector(vlm, scale=4.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({vlm.num_layers // 2: torch.randn(vlm.hidden_size, generator=g) * scale},
                          model_id=vlm.model_id)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_alpha_zero_and_zero_vector_are_bit_identical(arch, tiny_vlm):
    vlm = tiny_vlm(arch)
    batch = _batch(vlm)
    ref = vlm.forward(batch).logits
    with steer(vlm, _vector(vlm), batch, alpha=0.0):
        assert torch.equal(vlm.forward(batch).logits, ref)
    zero = SteeringVector({1: torch.zeros(vlm.hidden_size)})
    with steer(vlm, zero, batch, alpha=3.0):
        assert torch.equal(vlm.forward(batch).logits, ref)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_steering_that_overflows_the_model_stops_in_one_line(arch, tiny_vlm, tmp_path):
    """Issue 37: an alpha that passes the bound on alpha·|v| (it fits the dtype) but overflows
    the model's own numbers downstream (its norms square the residual) stops generation with one
    line instead of answering from NaN; a strong but finite steering still answers. A dictionary
    clamp to 1e38 likewise."""
    vlm = tiny_vlm(arch)
    batch = _batch(vlm)
    vector = _vector(vlm, scale=1.0)
    with pytest.raises(VlmsteerError, match=r"alpha 1e\+37 times the vector's norm .* which overflows the model's "
                                            r"float32 residual or the squares its normalisation takes \(largest "
                                            r"1.84e\+19\)"):
        with steer(vlm, vector, batch, alpha=1e37):
            pass
    with pytest.raises(VlmsteerError, match=r"steering stopped: the residual it wrote is not finite or too large for "
                                            r"the model's normalisation"):
        # each within the bound, together their squares overflow
        with steer(vlm, vector, batch, alpha=2e18), steer(vlm, vector, batch, alpha=2e18):
            vlm.generate(batch, max_new_tokens=3)
    with steer(vlm, vector, batch, alpha=50.0):
        out = vlm.generate(batch, max_new_tokens=3)
    assert out.tokens.shape[0] == 3
    import numpy as np

    from vlmsteer.concepts import make_dictionary
    from vlmsteer.steer.dictionary_edit import DictionarySteering

    z = np.random.default_rng(0).normal(size=(300, vlm.hidden_size)).astype(np.float32)
    sae = make_dictionary("topk_sae", 12, seed=0, l0=3, epochs=1, batch_size=64).fit(z)
    clamp = DictionarySteering(sae, 1, "clamp", (2,), 1e38, "prompt").check(vlm)
    with pytest.raises(VlmsteerError, match="steering stopped"):
        with clamp.apply(vlm, batch):
            vlm.forward(batch)


def test_context_restores_model_even_after_an_exception(tiny_vlm):
    vlm = tiny_vlm("llava")
    batch = _batch(vlm)
    ref = vlm.forward(batch).logits
    hooks_before = [(dict(layer._forward_hooks), dict(layer._forward_pre_hooks)) for layer in vlm.layers]
    with steer(vlm, _vector(vlm), batch, alpha=1.0):
        steered = vlm.forward(batch).logits
    assert not torch.equal(steered, ref)
    assert torch.equal(vlm.forward(batch).logits, ref)
    with pytest.raises(RuntimeError):
        with steer(vlm, _vector(vlm), batch, alpha=1.0):
            raise RuntimeError("generation failed")
    assert torch.equal(vlm.forward(batch).logits, ref)
    # transformers may keep its own output-capturing hooks; ours must all be gone
    assert [(dict(layer._forward_hooks), dict(layer._forward_pre_hooks)) for layer in vlm.layers] == hooks_before


def _generate_capturing_last_layer(vlm, batch, **kwargs):
    from vlmsteer.hooks import capture_residual

    last = vlm.num_layers - 1
    with capture_residual(vlm.layers, [last]) as got:
        tokens = vlm.generate(batch, max_new_tokens=6, **kwargs).tokens
    return tokens, got[last][0], got[last][1:]


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "idefics3", "gemma3"])
@pytest.mark.parametrize("region", REGIONS.names())
def test_kv_cache_equals_no_cache_and_steering_acts(arch, region, tiny_vlm):
    vlm = tiny_vlm(arch)
    batch = _batch(vlm)
    assert batch.attention_mask[:, 0].min() == 0  # left padded
    vec = _vector(vlm, scale=6.0)
    plain, plain_prompt, plain_steps = _generate_capturing_last_layer(vlm, batch)
    with steer(vlm, vec, batch, alpha=1.0, region=region):
        cached, prompt_pass, steps = _generate_capturing_last_layer(vlm, batch, use_cache=True)
    with steer(vlm, vec, batch, alpha=1.0, region=region):
        uncached = vlm.generate(batch, max_new_tokens=6, use_cache=False).tokens
    assert torch.equal(cached, uncached)
    # the effect happened where the region says, in every row (the left-padded ones too)
    r = Region.parse(region)
    prompt_rows = (prompt_pass - plain_prompt).abs().amax(-1)  # (batch, prompt)
    region_mask = batch.regions.mask(r)
    if r is not Region.GENERATED:
        first = region_mask.int().argmax(1)  # the region's first position in each row
        assert bool((prompt_rows[torch.arange(len(batch)), first] > 0).all()), region
        assert bool((prompt_rows[:, : int(first.min())] == 0).all())  # nothing before it moved
    else:
        assert torch.equal(prompt_pass, plain_prompt)
    if r.covers_generated:
        # the first decoding step reads the same token as in a run that does not steer
        # generated positions (for ``all``: one that steers only the prompt); its state must differ
        if r is Region.ALL:
            with steer(vlm, vec, batch, alpha=1.0, region=Region.PROMPT):
                plain, _, plain_steps = _generate_capturing_last_layer(vlm, batch)
        assert torch.equal(cached[:, 0], plain[:, 0])
        assert bool(((steps[0] - plain_steps[0]).abs().amax(-1) > 0).all()), region


@pytest.mark.parametrize("region", [Region.GENERATED, Region.PROMPT])
def test_generated_region_acts_only_after_the_prompt(region, tiny_vlm):
    """``generated`` leaves the prompt pass (first token) alone; ``prompt`` leaves the decoding
    steps alone: the hidden states of generated positions are unchanged."""
    from vlmsteer.hooks import capture_residual

    vlm = tiny_vlm("llava")
    batch = _batch(vlm)
    layer = vlm.num_layers // 2
    vec = _vector(vlm, scale=6.0)
    with steer(vlm, vec, batch, alpha=1.0, region=region), capture_residual(vlm.layers, [layer]) as got:
        out = vlm.generate(batch, max_new_tokens=4, use_cache=True)
    prompt_pass, decode_steps = got[layer][0], torch.cat(got[layer][1:], 1)
    with capture_residual(vlm.layers, [layer]) as base:
        vlm.forward(batch)
    changed_prompt = not torch.equal(prompt_pass, base[layer][0])
    # replay the steered tokens unsteered (uncached): a decoding step was steered iff it differs
    full = vlm.prepare([shapes.render(shapes.make_scene(9, i)) for i in range(3)], PROMPTS)
    ids = torch.cat([batch.input_ids, out.tokens[:, :3]], 1)
    full.inputs = dict(batch.inputs, input_ids=ids,
                       attention_mask=torch.cat([batch.attention_mask, torch.ones_like(out.tokens[:, :3])], 1))
    with capture_residual(vlm.layers, [layer]) as replay:
        vlm.model(**full.inputs)
    unsteered_decode = replay[layer][0][:, batch.prompt_length:]
    diff = (decode_steps - unsteered_decode).abs().amax(-1)
    if region is Region.GENERATED:
        assert not changed_prompt and bool((diff > 1e-3).all())
        torch.testing.assert_close(decode_steps - unsteered_decode,
                                   vec.at(layer).expand_as(decode_steps), atol=1e-4, rtol=1e-4)
    else:
        assert changed_prompt and bool((diff < 1e-3).all())


def test_position_tracker_counts_tokens_and_refuses_to_guess():
    from vlmsteer.hooks import PositionError, PositionTracker

    t = PositionTracker(prompt_length=10)
    assert [t.observe(n) for n in (10, 1, 1, 1)] == [0, 10, 11, 12]  # prompt pass, then cached steps
    assert t.observe(12) == 0  # an uncached step re-reads the whole sequence
    assert t.observe(10, cache_length=0) == 0 and t.observe(1, cache_length=10) == 10
    with pytest.raises(PositionError, match="cache holds 7 tokens"):
        t.observe(1, cache_length=7)
    with pytest.raises(PositionError, match="fewer than the 10-token prompt"):
        PositionTracker(prompt_length=10).observe(1)


def test_steering_a_cache_filled_outside_the_context_raises(tiny_vlm):
    """A decoding step whose prompt pass ran before ``steer`` was entered cannot be placed."""
    from vlmsteer.hooks import PositionError

    vlm = tiny_vlm("llava")
    batch = _batch(vlm)
    inputs = vlm.model_inputs(batch)
    import inspect

    cache_arg = "cache" if "cache" in inspect.signature(vlm.model.forward).parameters else "past_key_values"
    with torch.no_grad():
        first = vlm.model(**inputs, use_cache=True)
        nxt = first.logits[:, -1].argmax(-1, keepdim=True)
        with steer(vlm, _vector(vlm), batch, alpha=1.0, region=Region.GENERATED):
            with pytest.raises(PositionError):
                vlm.model(input_ids=nxt, **{cache_arg: getattr(first, cache_arg, None) or first.past_key_values},
                          attention_mask=torch.cat([batch.attention_mask, torch.ones_like(nxt)], 1))


def test_steering_does_not_read_the_cache_argument_name(tiny_vlm, monkeypatch):
    """Positions come from counting tokens, so a release that renames (or hides) the cache
    argument changes nothing: with the cache made invisible to the tracker, cached steered
    generation still equals uncached."""
    import vlmsteer.hooks as hooks

    monkeypatch.setattr(hooks, "_cache_length", lambda args, kwargs: None)
    vlm = tiny_vlm("llava")
    batch = _batch(vlm)
    vec = _vector(vlm, scale=6.0)
    with steer(vlm, vec, batch, alpha=1.0, region=Region.GENERATED):
        cached = vlm.generate(batch, max_new_tokens=6, use_cache=True).tokens
    with steer(vlm, vec, batch, alpha=1.0, region=Region.GENERATED):
        uncached = vlm.generate(batch, max_new_tokens=6, use_cache=False).tokens
    assert torch.equal(cached, uncached) and not torch.equal(cached, vlm.generate(batch, max_new_tokens=6).tokens)


def test_region_changes_only_its_positions(tiny_vlm):
    vlm = tiny_vlm("llava")
    batch = _batch(vlm)
    from vlmsteer.hooks import capture_residual

    layer = vlm.num_layers // 2
    vec = _vector(vlm)
    with capture_residual(vlm.layers, [layer]) as base:
        vlm.forward(batch)
    for region in (Region.IMAGE, Region.TEXT, Region.LAST_PROMPT, Region.PROMPT):
        with steer(vlm, vec, batch, alpha=1.0, region=region), capture_residual(vlm.layers, [layer]) as got:
            vlm.forward(batch)
        diff = got[layer][0] - base[layer][0]
        changed = diff.abs().sum(-1) > 0
        assert torch.equal(changed, batch.regions.mask(region)), region
        torch.testing.assert_close(diff[changed], vec.at(layer).expand(int(changed.sum()), -1))


def test_condition_selects_rows(tiny_vlm):
    vlm = tiny_vlm("llava")
    batch = _batch(vlm)
    ref = vlm.forward(batch).logits
    only_first = lambda feats: torch.tensor([True, False, False])  # noqa: E731
    with steer(vlm, _vector(vlm), batch, alpha=1.0, condition=only_first) as state:
        out = vlm.forward(batch).logits
    assert state["rows"].tolist() == [True, False, False]
    assert not torch.equal(out[0], ref[0]) and torch.equal(out[1:], ref[1:])


def test_a_condition_reads_its_own_earlier_layer_and_gates_the_later_one(tiny_vlm):
    from vlmsteer.steer import Steering

    vlm = tiny_vlm("llava")
    batch = _batch(vlm)
    last = vlm.num_layers - 1
    with capture_residual(vlm.layers, [0, last]) as base:
        ref = vlm.forward(batch).logits
    seen = []

    class FirstRowAtLayer0:
        layer = 0

        def __call__(self, feats):
            seen.append(feats.clone())
            return torch.tensor([True, False, False])

    vec = SteeringVector({last: torch.ones(vlm.hidden_size)})
    with steer(vlm, vec, batch, alpha=1.0, condition=FirstRowAtLayer0(), layers=[last]) as state:
        out = vlm.forward(batch).logits
    assert len(seen) == 1  # read once, at layer 0's last prompt position, before anything was added
    torch.testing.assert_close(seen[0], base[0][0][:, batch.prompt_length - 1].float())
    assert state["rows"].tolist() == [True, False, False]
    assert not torch.equal(out[0], ref[0]) and torch.equal(out[1:], ref[1:])
    with pytest.raises(VlmsteerError, match="reads layer 1 but steering starts at layer 0"):
        Steering(SteeringVector({0: torch.ones(vlm.hidden_size)}), 1.0, (0,),
                 condition=type("Later", (), {"layer": 1, "__call__": lambda self, f: f})()).check(vlm)


def test_vector_arithmetic_and_files(tmp_path):
    a = SteeringVector({2: torch.ones(4)}, model_id="m", source="yes", target="no")
    b = SteeringVector({2: torch.arange(4.0)}, model_id="m")
    assert torch.equal((a + b).at(2), torch.tensor([1.0, 2, 3, 4]))
    assert torch.equal((a - b).at(2), torch.tensor([1.0, 0, -1, -2]))
    assert torch.equal((2 * a).at(2), 2 * torch.ones(4)) and torch.equal((a * 2).at(2), 2 * torch.ones(4))
    neg = -a
    assert torch.equal(neg.at(2), -torch.ones(4)) and (neg.source, neg.target) == ("no", "yes")
    a.save(tmp_path / "a.safetensors")
    assert load_vector(tmp_path / "a.safetensors") == a
    with pytest.raises(VlmsteerError, match="differ in size|combine"):
        a + SteeringVector({2: torch.ones(5)})


def test_concept_shift_sign_convention(tmp_path):
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    v = concept_shift(u, 0, 2, layer=1)
    assert torch.equal(v.at(1), u[2] - u[0])  # from concept 0 to concept 2: u_to - u_from
    assert torch.equal(u[0] + v.at(1), u[2])
    pairs = all_concept_shifts(u, layer=1)
    assert len(pairs) == 3 * 2 and torch.equal(pairs["1->0"].at(1), u[0] - u[1])
    save_vectors(tmp_path / "pairs.safetensors", pairs)
    assert set(load_vectors(tmp_path / "pairs.safetensors")) == set(pairs)


def test_bad_vectors_and_options_exit_2(tiny_folder, tmp_path, capsys):
    folder = tiny_folder("llava")
    data = tmp_path / "d"
    shapes.write_dataset(data, 2, seed=1)
    SteeringVector({1: torch.ones(7)}).save(tmp_path / "wrong.safetensors")
    SteeringVector({1: torch.ones(32)}).save(tmp_path / "ok.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    base = ["eval", "vqa", "--model", str(folder), "--data", str(data), "--out", str(tmp_path / "o")]
    cases = [(["--vector", str(tmp_path / "wrong.safetensors")], "size 7"),
             (["--vector", str(tmp_path / "ok.safetensors"), "--layer", "5"], "layer 5 is out of range"),
             (["--vector", str(tmp_path / "ok.safetensors"), "--region", "middle"], "unknown region"),
             (["--vector", str(tmp_path / "junk.safetensors")], "not a readable steering vector file")]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], err


def test_keyword_filters_split_a_store_by_style(tmp_path):
    import numpy as np

    from vlmsteer.data.filters import Filter
    from vlmsteer.steer.builders import coarse_vector
    from vlmsteer.store import FeatureStore, StoreWriter

    responses = ["a red circle", "a circle", "a blue square on the beach", "a square"]
    w = StoreWriter(tmp_path / "s", {"hidden_size": 2, "layers": [0], "num_layers": 1})
    w.write_shard([{"id": str(i), "response": r} for i, r in enumerate(responses)],
                  {0: np.array([[1, 0], [0, 0], [3, 0], [0, 2]], np.float32)})
    w.finish()
    store = FeatureStore.open(tmp_path / "s")
    vec = coarse_vector(store, "response!~colors", target=Filter.parse("response~colors"))
    assert vec.vectors[0].tolist() == [2.0, -1.0]  # mean(with colours) - mean(without)
    assert vec.n_source == 2 and vec.n_target == 2
    assert (vec.source, vec.target) == ("response!~colors", "response~colors")
    with pytest.raises(VlmsteerError, match="unknown keyword set 'smells'"):
        Filter.parse("response~smells")


@pytest.fixture(scope="module")
def shapes_llava():
    from vlmsteer.model import VLM

    return VLM.load("shapes-llava")


@pytest.mark.parametrize("region", REGIONS.names())
def test_shapes_llava_cached_equals_uncached_and_tokens_change(region, shapes_llava):
    """On the shipped (trained) model, left-padded batch: every region changes the generated
    tokens (of every row, but for the 4-token image region), and the KV cache changes nothing."""
    vlm = shapes_llava
    questions = ["is there a red circle ?", "what color is the square ?", "how many shapes are there ?",
                 "describe the image ."]
    batch = vlm.prepare([shapes.render(shapes.make_scene(31, i)) for i in range(4)], questions)
    assert batch.attention_mask[:, 0].min() == 0
    layer = vlm.num_layers - 2
    g = torch.Generator().manual_seed(1)
    vec = SteeringVector({layer: torch.randn(vlm.hidden_size, generator=g) * 60.0})
    plain = vlm.generate(batch, max_new_tokens=8).tokens
    with steer(vlm, vec, batch, alpha=1.0, region=region):
        cached = vlm.generate(batch, max_new_tokens=8, use_cache=True).tokens
    with steer(vlm, vec, batch, alpha=1.0, region=region):
        uncached = vlm.generate(batch, max_new_tokens=8, use_cache=False).tokens
    assert torch.equal(cached, uncached)
    changed = [not torch.equal(cached[i], plain[i]) for i in range(len(batch))]
    # four image tokens per image: that region moves some answers, every other region all of them
    assert any(changed) if region == "image" else all(changed), (region, cached, plain)
