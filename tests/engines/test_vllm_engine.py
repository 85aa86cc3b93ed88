"""The vLLM engine against the transformers reference, on the shipped model and a world no
other test uses (opt-in: ``bash .ci/vllm`` installs the pinned vLLM in its own environment; here
the module is skipped where vLLM is not installed). One engine serves the whole module."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (the opt-in job `bash .ci/vllm` installs it)")

QUESTIONS = 300
MIN_EQUAL = 0.995


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from vlmsteer.data import load_coco_captions, load_vqav2, shapes
    from vlmsteer.model import VLM

    root = tmp_path_factory.mktemp("vllm-world")
    shapes.write_dataset(root, 60, seed=4242)
    vlm = VLM.load("shapes-llava")
    return vlm, load_vqav2(root)[:QUESTIONS], load_coco_captions(root)[:60]


@pytest.fixture(scope="module")
def threads():
    """The process's torch threads before vLLM started."""
    return torch.get_num_threads()


@pytest.fixture(scope="module")
def engine(world, threads):
    from vlmsteer.engines.vllm_engine import VllmEngine

    return VllmEngine.for_model(world[0])


def _direction(vlm, toward: str, away: str | None = None) -> torch.Tensor:
    """An unembedding direction, unit norm (the shapes model needs α of tens to hundreds to
    change answers with it: α below is chosen so that each region changes 10-50 %)."""
    w = vlm.unembed.weight.detach().float()
    tok = vlm.tokenizer
    d = w[tok.convert_tokens_to_ids(toward)] - (w[tok.convert_tokens_to_ids(away)] if away else w.mean(0))
    return d / d.norm()


def _steering(vlm, region: str, alpha: float, toward="no", away="yes", layers=(2, 3)):
    from vlmsteer.steer.steerer import Steering
    from vlmsteer.steer.vector import SteeringVector

    d = _direction(vlm, toward, away)
    return Steering(SteeringVector({l: d for l in layers}, model_id=vlm.model_id), alpha=alpha, layers=layers,
                    region=region)


def _reference(vlm, samples, steering, tokens):
    from vlmsteer.runs.generation import generate_responses

    return generate_responses(vlm, samples, batch_size=32, max_new_tokens=tokens, steering=steering)


def _agree(a, b) -> float:
    return sum(x.text == y.text and x.n_tokens == y.n_tokens for x, y in zip(a, b)) / len(a)


def test_unsteered_answers_and_captions_equal_the_reference(world, engine):
    vlm, questions, captions = world
    assert _agree(engine.generate(questions, None, max_new_tokens=8), _reference(vlm, questions, None, 8)) >= MIN_EQUAL
    assert _agree(engine.generate(captions, None, max_new_tokens=32), _reference(vlm, captions, None, 32)) >= MIN_EQUAL


def test_the_process_keeps_its_threads_and_no_thread_warning_is_printed(world, engine, threads):
    """vLLM's CPU worker replaces torch.set_num_threads, for the whole process, by a warning that
    its input processing logs twice per request; the engine keeps the threads and drops the lines."""
    import logging

    records: list[logging.LogRecord] = []
    catch = logging.Handler(logging.DEBUG)
    catch.emit = records.append
    log = logging.getLogger("vllm.v1.worker.cpu_worker")  # (the logger's filters act before its handlers)
    log.addHandler(catch)
    try:
        engine.generate(world[1][:20], None, max_new_tokens=2)
    finally:
        log.removeHandler(catch)
    assert not [r for r in records if "set_num_threads" in str(r.msg)]
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("region, alpha", [("last_prompt", 40.0), ("prompt", 40.0), ("text", 40.0),
                                           ("image", 1000.0), ("all", 40.0)])
def test_steered_answers_equal_the_reference_on_every_region(world, engine, region, alpha):
    """Equal answer by answer, and the steering did something (answers changed)."""
    vlm, questions, _ = world
    _assert_equal_and_steered(engine, vlm, questions, _steering(vlm, region, alpha), 8)


def test_generated_region_steers_captions_as_the_reference(world, engine):
    vlm, _, captions = world
    _assert_equal_and_steered(engine, vlm, captions, _steering(vlm, "generated", 40.0, toward="red", away=None), 32)


def _assert_equal_and_steered(engine, vlm, samples, steering, tokens, against=None):
    """vLLM's responses equal the reference's, and ≥ 10 of them differ from the reference's
    under ``against`` (default: unsteered)."""
    want = _reference(vlm, samples, steering, tokens)
    assert _agree(engine.generate(samples, steering, max_new_tokens=tokens), want) >= MIN_EQUAL
    base = _reference(vlm, samples, against, tokens)
    assert sum(a.text != b.text for a, b in zip(want, base)) >= 10


def test_one_pass_with_a_steering_per_request_equals_each_alone(world, engine):
    """A sweep's grid in one engine pass: requests steered differently (and not at all) side by
    side, each equal to its own transformers run."""
    vlm, questions, _ = world
    grid = [None, _steering(vlm, "last_prompt", 40.0), _steering(vlm, "last_prompt", 60.0),
            _steering(vlm, "all", 40.0)]
    mixed = [grid[i % len(grid)] for i in range(len(questions))]
    got = engine.generate(questions, mixed, max_new_tokens=8)
    want = [None] * len(questions)
    for k, steering in enumerate(grid):
        rows = list(range(k, len(questions), len(grid)))
        for i, r in zip(rows, _reference(vlm, [questions[i] for i in rows], steering, 8)):
            want[i] = r
    assert _agree(got, want) >= MIN_EQUAL


def test_a_steering_hook_that_did_not_fire_is_an_error(world, engine):
    from vlmsteer.errors import VlmsteerError

    vlm, questions, _ = world

    engine.llm.collective_rpc("vlmsteer_uninstall")  # as if the hooks were never called
    try:
        with pytest.raises(VlmsteerError, match="steered 0 of"):
            engine.generate(questions[:8], _steering(vlm, "last_prompt", 12.0), max_new_tokens=4)
    finally:
        engine.llm.collective_rpc("vlmsteer_install", args=(sorted(vlm.image_token_ids),))
    assert len(engine.generate(questions[:4], _steering(vlm, "last_prompt", 12.0), max_new_tokens=4)) == 4


def test_a_compiled_engine_is_refused(world):
    from vlmsteer.engines.vllm_engine import VllmEngine
    from vlmsteer.errors import VlmsteerError

    with pytest.raises(VlmsteerError, match="eagerly"):
        VllmEngine.for_model(world[0], enforce_eager=False)


def test_fine_grained_steering_equals_the_reference(world, engine, tmp_path):
    """A concept condition (the CLI's `--condition-store S --active answer=yes`: steer where the
    last prompt feature at layer 2 is nearest the "yes" answers' centroid): the same answers as
    the reference; the condition changed which were steered."""
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.steer.conditions import condition_from_store
    from vlmsteer.steer.steerer import Steering

    vlm, questions, _ = world
    store, _ = extract(vlm, questions, tmp_path / "s", ExtractConfig(layers=[2], batch_size=64))
    condition = condition_from_store(store, 2, "answer=yes")
    s = _steering(vlm, "all", 40.0)
    fine = Steering(s.vector, s.alpha, s.layers, s.region, condition=condition)
    _assert_equal_and_steered(engine, vlm, questions, fine, 8, against=s)  # the condition changed which


@pytest.mark.parametrize("selector, mode", [("last_prompt", "teacher"), ("mean_image", "teacher"),
                                            ("mean_text", "teacher"), ("mean_response", "generate")])
def test_extracted_features_equal_the_reference(world, engine, tmp_path, selector, mode, monkeypatch):
    """`extract --engine vllm`: the same records, features equal within 1e-4 (float32); each
    batch's images are read from disk once (the engine takes them decoded)."""
    import vlmsteer.loading
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.positions import Selector
    from vlmsteer.store import FeatureStore

    vlm, questions, captions = world
    samples = captions if mode == "generate" else questions[:120]
    config = ExtractConfig(layers=[1, 3], selector=Selector(kind=selector), mode=mode, batch_size=len(samples),
                           max_new_tokens=16)
    ref, _ = extract(vlm, samples, tmp_path / "hf", config)
    opened = []
    real_open = vlmsteer.loading.open_image
    monkeypatch.setattr(vlmsteer.loading, "open_image", lambda source, where: opened.append(source) or real_open(
        source, where))
    got, _ = extract(vlm, samples, tmp_path / "vllm", config, reader=engine)
    assert sorted(map(str, opened)) == sorted({str(s.image_path) for s in samples})
    assert FeatureStore.open(tmp_path / "vllm").manifest["header"]["engine"] == "vllm"
    assert "engine" not in FeatureStore.open(tmp_path / "hf").manifest["header"]
    assert [r["positions"] for r in got.records] == [r["positions"] for r in ref.records]
    assert [r["response"] for r in got.records] == [r["response"] for r in ref.records]
    for layer in (1, 3):
        a, b = ref.features(layer), got.features(layer)
        assert np.abs(a).max() > 1 and np.abs(a - b).max() <= 1e-4


def test_sweep_and_select_in_one_engine_pass_equal_the_reference(world, engine, tmp_path):
    """`sweep` and `select` with --engine vllm: the whole grid (every α × region, every candidate)
    in one engine pass, the same table as the transformers engine's, and the steering moved answers."""
    from vlmsteer.runs.select import rank_vectors
    from vlmsteer.runs.sweep import SweepGrid, run_sweep
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.positions import Region
    from vlmsteer.steer.builders import coarse_vector

    vlm, questions, _ = world
    store, _ = extract(vlm, questions, tmp_path / "s", ExtractConfig(layers=[2, 3], batch_size=64))
    grid = SweepGrid(layers=[3], alphas=[1.0, 4.0], regions=[Region.LAST_PROMPT, Region.ALL], n_samples=[None])
    sweeps = [run_sweep(vlm, store, "answer=yes", "answer=no", questions, grid, engine=e)
              for e in ("transformers", "vllm")]
    assert sweeps[0]["rows"] == sweeps[1]["rows"]
    assert max(r["changed"] for r in sweeps[0]["rows"]) >= 10
    candidates = {f"{a}->{b}": coarse_vector(store, f"answer={a}", target=f"answer={b}", layers=[3])
                  for a, b in (("yes", "no"), ("no", "yes"), ("2", "3"))}
    ranked = [rank_vectors(vlm, questions, candidates, alpha=4.0, engine=e) for e in ("transformers", "vllm")]
    assert ranked[0]["rankings"] == ranked[1]["rankings"]


def test_prefix_cache_is_shared_within_a_steering_never_across(world, monkeypatch):
    """With KV blocks (32 tokens) shorter than the prompts, requests sharing an image and a long
    question prefix reuse cached blocks. Keyed by the steering, a steered run after an unsteered
    one reuses only its own blocks and equals the reference; with the key removed (what vLLM
    does by default) the steered run reuses unsteered blocks and some answers go wrong."""
    import dataclasses
    import itertools

    from vlmsteer.engines.vllm_engine import VllmEngine

    vlm, questions, _ = world
    by_image = [list(g) for _, g in itertools.groupby(questions, key=lambda q: q.image_path)][:20]
    samples = [dataclasses.replace(q, prompt="what colour is the square ? " * 5 + q.prompt)
               for group in by_image for q in group]
    engine = VllmEngine.for_model(vlm, block_size=32)
    steering = _steering(vlm, "prompt", 30.0, layers=(1, 2))
    want = _reference(vlm, samples, steering, 4)
    cached = []
    real = engine.llm.generate

    def recording(requests, params, **kwargs):
        outputs = real(requests, params, **kwargs)
        cached.append(sum(o.num_cached_tokens or 0 for o in outputs))
        return outputs

    monkeypatch.setattr(engine.llm, "generate", recording)
    engine.generate(samples, None, max_new_tokens=4)
    assert _agree(engine.generate(samples, steering, max_new_tokens=4), want) == 1.0
    assert _agree(engine.generate(samples, steering, max_new_tokens=4), want) == 1.0
    assert cached[-1] > 0  # the second steered run hit its own blocks

    def unsalted(requests, params, **kwargs):
        for request in requests:
            request.pop("cache_salt", None)
        return recording(requests, params, **kwargs)

    monkeypatch.setattr(engine.llm, "generate", unsalted)
    engine.generate(samples, None, max_new_tokens=4)
    wrong = engine.generate(samples, steering, max_new_tokens=4)
    assert cached[-1] > 0 and _agree(wrong, want) < 0.97
