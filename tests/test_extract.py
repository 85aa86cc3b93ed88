"""Extraction engine: exact features per selector, resume after a kill, whole-word matching, errors."""

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
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from conftest import ALL_ARCHITECTURES
from vlmsteer.cli import main
from vlmsteer.data import load_coco_captions, load_vqav2, shapes
from vlmsteer.errors import VlmsteerError
from vlmsteer.extract import ExtractConfig, extract
from vlmsteer.positions import Selector
from vlmsteer.word_positions import word_token_indices
from vlmsteer.store import FeatureStore


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    shapes.write_dataset(root, n=6, seed=11)
    return root


SELECTORS = [
    Selector("last_prompt"),
    Selector("word", word="no", position="predicts"),
    Selector("word", word="no", position="of"),
    Selector("word", word="many", source="prompt", position="of"),
    Selector("mean_response"),
    Selector("mean_image"),
    Selector("mean_text"),
]


def _reference(vlm, sample, answer, selector: Selector, layer: int):
    """The feature computed independently: one unpadded sample, output_hidden_states, positions
    found by reading the tokens."""
    prompt = vlm.build_prompt(sample.prompt)
    full = vlm.build_prompt(sample.prompt, answer=answer)
    from PIL import Image

    image = Image.open(sample.image).convert("RGB")
    p_ids = vlm.processor(text=[prompt], images=[[image]], return_tensors="pt")["input_ids"][0].tolist()
    enc = vlm.processor(text=[full], images=[[image]], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    assert ids[:len(p_ids)] == p_ids
    with torch.no_grad():
        hs = vlm.model(**enc, output_hidden_states=True).hidden_states[layer + 1][0]
    toks = vlm.tokenizer.convert_ids_to_tokens(ids)
    image_id = vlm.processor.image_token_id
    kind = selector.kind
    if kind == "last_prompt":
        pos = [len(p_ids) - 1]
    elif kind == "mean_response":
        pos = list(range(len(p_ids), len(ids)))
    elif kind == "mean_image":
        pos = [i for i, t in enumerate(ids) if t == image_id]
    elif kind == "mean_text":
        pos = [i for i, t in enumerate(ids[:len(p_ids)]) if t != image_id]
    else:
        region = range(len(p_ids), len(ids)) if selector.source.value == "response" else range(len(p_ids))
        hits = [i for i in region if toks[i] == selector.word]
        if not hits:
            return None
        pos = [hits[0] if selector.position.value == "of" else hits[0] - 1]
    return hs[pos].mean(0).numpy()


@pytest.mark.parametrize("selector", SELECTORS, ids=lambda s: f"{s.kind}-{s.word}-{s.position.value}")
def test_features_equal_hidden_states(tiny_vlm, shapes_data, tmp_path, selector):
    vlm = tiny_vlm("llava")
    samples = load_vqav2(shapes_data)[:14]
    refs = {layer: [_reference(vlm, s, s.answer, selector, layer) for s in samples] for layer in (0, 1)}
    for batch_size in (1, 8):  # batch 8 mixes prompt lengths, so rows are left padded
        store, _ = extract(vlm, samples, tmp_path / f"store{batch_size}",
                           ExtractConfig(layers=[0, 1], selector=selector, batch_size=batch_size, shard_size=10),
                           progress=False)
        assert len(store) == len(samples)
        for layer in (0, 1):
            arrays = np.concatenate([np.asarray(a) for a in store.layer_arrays(layer)])
            for i, ref in enumerate(refs[layer]):
                assert store.records[i]["found"] == (ref is not None)
                if ref is not None:
                    np.testing.assert_allclose(arrays[i], ref, rtol=1e-4, atol=1e-5)
            assert any(r is not None for r in refs[layer])
        # filtered reads give the found rows only
        assert store.features(0).shape == (int(sum(r["found"] for r in store.records)), vlm.hidden_size)


def test_caption_teacher_forcing_and_generation_mode(tiny_vlm, shapes_data, tmp_path):
    vlm = tiny_vlm("llava")
    caps = load_coco_captions(shapes_data)
    store, _ = extract(vlm, caps, tmp_path / "c", ExtractConfig(layers=[1], selector=Selector("mean_response")),
                       progress=False)
    assert [r["response"] for r in store.records] == [s.captions[0] for s in caps]
    gen, _ = extract(vlm, caps[:3], tmp_path / "g", ExtractConfig(layers=[1], selector=Selector("mean_response"),
                                                                  mode="generate", max_new_tokens=4),
                     progress=False)
    assert all(r["n_response_tokens"] <= 4 for r in gen.records)


def _bpe_tokenizer():
    """A byte-level BPE (GPT-2 style) small enough that longer words split into sub-tokens."""
    corpus = ["red reddish none no nothing nonetheless redness", "the cat sat on the mat", "yes no maybe"] * 3
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_whole_word_matching_prefixes_subtokens_and_case():
    from vlmsteer.demo.build import build_tokenizer

    words = build_tokenizer(["no", "none", "red", "reddish", "is", "there", "a"])
    ids = words("none is there a reddish one , no", add_special_tokens=False)["input_ids"]
    assert word_token_indices(words, ids, "no") == [7]
    assert word_token_indices(words, ids, "red") is None
    assert word_token_indices(words, ids, "NO") == [7]
    bpe = _bpe_tokenizer()
    ids = bpe("nonetheless Reddish red", add_special_tokens=False)["input_ids"]
    pieces = bpe.convert_ids_to_tokens(ids)
    reddish = word_token_indices(bpe, ids, "reddish")
    assert reddish is not None and len(reddish) > 1, pieces  # a word split into several sub-tokens
    assert word_token_indices(bpe, ids, "red") == [len(ids) - 1]
    assert word_token_indices(bpe, ids, "none") is None and word_token_indices(bpe, ids, "no") is None


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "vlmsteer.cli", *args], capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_resume_after_kill_is_byte_identical(tiny_folder, shapes_data, tmp_path):
    folder = str(tiny_folder("llava"))
    big = tmp_path / "data"
    shapes.write_dataset(big, n=14, seed=12)
    args = ["extract", "--model", folder, "--data", str(big), "--layer", "0,2", "--batch-size", "2",
            "--shard-size", "16", "--selector", "mean_text"]
    ref = _cli(args + ["--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "vlmsteer.cli", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        m = out / "manifest.json"
        if m.exists() and len(json.loads(m.read_text())["shards"]) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with pytest.raises(VlmsteerError, match="incomplete store"):
        FeatureStore.open(out)
    partial = FeatureStore.open(out, allow_partial=True)
    assert not partial.complete and len(partial) >= 32
    assert partial.features(0).shape[0] == len(partial)  # what was written stays readable
    again = _cli(args + ["--out", str(out)])
    assert again.returncode == 0, again.stderr
    assert f"resumed from {len(partial)} samples" in again.stdout
    a, b = FeatureStore.open(tmp_path / "ref"), FeatureStore.open(out)
    assert len(a) == len(b) == len(load_vqav2(big))
    for layer in (0, 2):
        assert a.features(layer, only_found=False).tobytes() == b.features(layer, only_found=False).tobytes()


def _rank_pid(rank: int, out) -> int | None:
    """The pid of torchrun's rank ``rank`` writing to ``out`` (Linux /proc), or None."""
    for entry in os.listdir("/proc"):
        try:
            env = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"RANK={rank}".encode() in env and str(out).encode() in cmd:
            return int(entry)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank's process in /proc")
def test_torchrun_rank_killed_midway_resumes_to_the_single_process_store(tiny_folder, tmp_path):
    """Issue 14, acceptance 3: SIGKILL one rank of ``torchrun --nproc_per_node 2`` after its
    first shard; torchrun stops the other; the same command again resumes both parts and gives
    the single-process store."""
    data = tmp_path / "w"
    shapes.write_dataset(data, n=20, seed=13)
    args = ["extract", "--model", str(tiny_folder("llava")), "--data", str(data), "--layer", "1",
            "--batch-size", "1", "--shard-size", "4"]
    single = _cli([*args, "--out", str(tmp_path / "single")])
    assert single.returncode == 0, single.stderr
    out = tmp_path / "multi"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
                "-m", "vlmsteer", *args, "--out", str(out)]
    proc = subprocess.Popen(torchrun, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = out / "rank-00001-of-00002" / "manifest.json"
    deadline, pid = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and json.loads(part.read_text())["shards"]:
            pid = _rank_pid(1, out)
            break
        time.sleep(0.01)
    assert pid is not None, "rank 1 wrote no shard, or finished, before it could be killed"
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    kept = len(json.loads(part.read_text())["shards"])
    assert not json.loads(part.read_text())["complete"] and kept >= 1
    assert not (out / "manifest.json").exists()  # rank 0 never merged an unfinished part
    again = subprocess.run(torchrun, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {4 * kept} samples" in again.stdout  # rank 1, from its last whole shard
    a, b = FeatureStore.open(tmp_path / "single"), FeatureStore.open(out)
    assert [r["id"] for r in a.records] == [r["id"] for r in b.records]
    np.testing.assert_allclose(a.features(1), b.features(1), atol=1e-6, rtol=1e-5)


def test_bad_inputs_exit_2(tiny_folder, shapes_data, tmp_path, capsys):
    folder = str(tiny_folder("llava"))
    base = ["extract", "--model", folder, "--data", str(shapes_data), "--limit", "12"]
    assert main(base + ["--out", str(tmp_path / "a"), "--layer", "7"]) == 2
    assert "layer 7 is out of range" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--layer", "1", "--selector", "word", "--word", "zebra",
                        "--shard-size", "4"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "empty selection" in errors[0] and "Traceback" not in err
    store = FeatureStore.open(tmp_path / "b")
    assert len(store) == 12 and store.features(1, only_found=False).shape == (12, 32)
    broken = tmp_path / "broken"
    shapes.write_dataset(broken, n=3, seed=1)
    next((broken / "val2014").glob("*.png")).unlink()
    assert main(["extract", "--model", folder, "--data", str(broken), "--out", str(tmp_path / "c"),
                 "--layer", "1"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "d"), "--layer", "1", "--selector", "middle"]) == 2
    assert "unknown selector" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "idefics3"])
def test_token_offsets_are_exact_and_linear(arch, tiny_vlm):
    """Word positions come from one incremental pass: the spans tile the fully decoded text,
    and the tokens decoded grow linearly with the sequence (150 -> 2400 tokens)."""
    import random

    from vlmsteer.word_positions import token_offsets

    tok = tiny_vlm(arch).tokenizer
    rng = random.Random(0)
    ids = tok("the red circle is next to a blue square; what colour? naïve café ünïcödé 2 + 2", add_special_tokens=False)[
        "input_ids"]
    ids = ids + [rng.randrange(len(tok)) for _ in range(40)]
    text, spans = token_offsets(tok, ids)
    assert text == tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a <= b and b <= c for (a, b), (c, _) in zip(spans, spans[1:]))

    class Counting:
        def __init__(self):
            self.tokens = 0

        def decode(self, part, **kw):
            self.tokens += len(part)
            return tok.decode(part, **kw)

    work = {}
    for n in (150, 2400):
        counting = Counting()
        token_offsets(counting, (ids * (n // len(ids) + 1))[:n])
        work[n] = counting.tokens
    assert work[2400] / work[150] < 16 * 1.2, work  # 16x the tokens, about 16x the work


@pytest.mark.slow
def test_torchrun_two_processes_give_the_single_process_store(tiny_folder, tmp_path):
    """Issue 14, acceptance 3: ``torchrun --nproc_per_node 2 -m vlmsteer extract`` on CPU writes
    one part per rank and a store that reads exactly like the single-process one; a rank whose
    part was cut short resumes from its last complete shard on rerun."""
    import json
    import shutil
    import subprocess
    import sys

    from vlmsteer.cli import main
    from vlmsteer.data import shapes
    from vlmsteer.store import FeatureStore

    shapes.write_dataset(tmp_path / "w", n=8, seed=6)
    args = ["extract", "--model", str(tiny_folder("llava")), "--data", str(tmp_path / "w"), "--layer", "0,1",
            "--shard-size", "8", "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
                "-m", "vlmsteer"]
    run = lambda: subprocess.run([*torchrun, *args, "--out", str(tmp_path / "multi")],  # noqa: E731
                                 capture_output=True, text=True, timeout=300)
    done = run()
    assert done.returncode == 0, done.stderr[-3000:]

    def same():
        a, b = FeatureStore.open(tmp_path / "single"), FeatureStore.open(tmp_path / "multi")
        assert [r["id"] for r in a.records] == [r["id"] for r in b.records]
        for layer in (0, 1):
            np.testing.assert_allclose(a.features(layer), b.features(layer), atol=1e-6, rtol=1e-5)
        return b

    merged = same()
    assert json.loads((tmp_path / "multi" / "manifest.json").read_text())["parts"] == [
        "rank-00000-of-00002", "rank-00001-of-00002"]
    assert len(merged.manifest["shards"]) > 2 and (tmp_path / "multi" / "run.json").exists()

    # cut rank 1's part short (as if it was killed after its first shard) and rerun
    part = tmp_path / "multi" / "rank-00001-of-00002" / "manifest.json"
    m = json.loads(part.read_text())
    kept = m["shards"][:1]
    m.update(shards=kept, complete=False)
    part.write_text(json.dumps(m))
    (tmp_path / "multi" / "manifest.json").unlink()
    done = run()
    assert done.returncode == 0 and f"resumed from {kept[0]['n']} samples" in done.stdout + done.stderr
    same()
    # a single-process store is never overwritten by a data-parallel run
    shutil.rmtree(tmp_path / "multi")
    shutil.copytree(tmp_path / "single", tmp_path / "multi")
    assert run().returncode != 0


@pytest.mark.parametrize("arch", ALL_ARCHITECTURES)
def test_questions_about_one_image_encode_it_once(arch, tiny_vlm, shapes_data, tmp_path):
    """Where a batch repeats an image, its vision tower sees each distinct image once (where it
    takes whole images: LLaVA, Idefics2) and the features equal those of encoding every row."""
    import dataclasses

    vlm = tiny_vlm(arch)
    samples = load_vqav2(shapes_data)[:16]
    distinct = len({s.image_path for s in samples[:8]}) + len({s.image_path for s in samples[8:]})
    assert distinct < len(samples)
    encoded: list[int] = []
    handle = vlm.image_encoder.register_forward_hook(  # sees the inputs after the de-duplicating pre-hook
        lambda module, args, kwargs, output: encoded.append(len(args[0] if args else kwargs["pixel_values"])),
        with_kwargs=True)
    config = ExtractConfig(layers=[1], batch_size=8)
    try:
        once, _ = extract(vlm, samples, tmp_path / "once", config, progress=False)
        rows_once = list(encoded)
        encoded.clear()
        every, _ = extract(dataclasses.replace(vlm, image_encoder=None), samples, tmp_path / "every", config,
                           progress=False)
    finally:
        handle.remove()
    if arch in ("llava", "idefics2", "gemma3"):  # whole images in: each distinct one encoded once
        assert sum(rows_once) == distinct < sum(encoded)
    else:  # flattened patches (Qwen2-VL) or tiles: encoded as they come, or fewer where tiles repeat
        assert sum(rows_once) <= sum(encoded)
    np.testing.assert_allclose(once.features(1), every.features(1), rtol=1e-4, atol=1e-5)
