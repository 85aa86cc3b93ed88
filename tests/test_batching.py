"""Batches prepared ahead (thread or worker process) give exactly the in-line results, surface
errors in order, shrink on out-of-memory; the CLI's fast exit keeps exit handlers and output."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from vlmsteer.batching import OOM, Prefetch, shrinking_batches
from vlmsteer.errors import VlmsteerError

MODES = [Prefetch.NONE, Prefetch.THREAD, Prefetch.PROCESS]


def _where(chunk):
    """A prepared batch that says which process and thread prepared it."""
    return list(chunk), os.getpid(), threading.get_ident()


@pytest.mark.parametrize("mode", MODES)
def test_prefetched_batches_equal_in_line_ones(mode):
    items = list(range(23))
    got = list(shrinking_batches(items, 5, lambda p: (p[0], sum(p[0])), prepare=_where, prefetch=mode))
    assert [list(c) for c, _ in got] == [items[i:i + 5] for i in range(0, 23, 5)]
    assert [r for _, r in got] == [(items[i:i + 5], sum(items[i:i + 5])) for i in range(0, 23, 5)]
    pids = {p[1] for p in _collect(items, mode)}
    threads = {p[2] for p in _collect(items, mode)}
    if mode is Prefetch.PROCESS:
        assert pids and os.getpid() not in pids
    elif mode is Prefetch.THREAD:
        assert pids == {os.getpid()} and threading.get_ident() not in threads
    else:
        assert pids == {os.getpid()} and threads == {threading.get_ident()}


def _collect(items, mode):
    return [r for _, r in shrinking_batches(items, 5, lambda p: p, prepare=_where, prefetch=mode)]


def _fails_on_13(chunk):
    if 13 in chunk:
        raise VlmsteerError("bad sample 13")
    return list(chunk)


@pytest.mark.parametrize("mode", MODES)
def test_a_preparation_error_surfaces_at_its_batch(mode):
    seen = []
    with pytest.raises(VlmsteerError, match="bad sample 13"):
        for chunk, _ in shrinking_batches(list(range(30)), 5, lambda p: p, prepare=_fails_on_13, prefetch=mode):
            seen.append(list(chunk))
    assert seen == [list(range(0, 5)), list(range(5, 10))]  # the batches before it came through


def _tensors(chunk):
    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) + chunk[0]
    return {"float": base, "strided": base.t()[::2], "long": base.long(), "bool": base > 10,
            "bfloat16": base.bfloat16(), "empty": base[:0], "text": [str(x) for x in chunk]}


def test_tensors_come_back_from_a_worker_process_exactly():
    """A worker's batch travels pickled whole, its tensors as arrays (bfloat16 as torch
    pickles it): every dtype, layout and value arrives as prepared."""
    import torch

    items = list(range(7))
    for chunk, got in shrinking_batches(items, 3, lambda p: p, prepare=_tensors, prefetch=Prefetch.PROCESS):
        want = _tensors(chunk)
        assert got.keys() == want.keys() and got["text"] == want["text"]
        for key in want.keys() - {"text"}:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("mode", [Prefetch.THREAD, Prefetch.PROCESS])
def test_prefetched_batches_shrink_on_out_of_memory(mode):
    """A batch over 3 items runs out of memory: it is prepared again at the halved size and the
    results equal a run that always fitted; in a thread, preparations never overlap."""
    active, overlaps = [0], [0]
    lock = threading.Lock()

    def prepare(chunk):
        with lock:
            active[0] += 1
            overlaps[0] = max(overlaps[0], active[0])
        try:
            return list(chunk)
        finally:
            with lock:
                active[0] -= 1

    def run(batch):
        if len(batch) > 3:
            raise OOM("CUDA out of memory (simulated)")
        return [x * 10 for x in batch]

    items = list(range(17))
    got = [x for _, r in shrinking_batches(items, 8, run, prepare=prepare, prefetch=mode) for x in r]
    assert got == [x * 10 for x in items]
    assert overlaps[0] <= 1


@pytest.mark.parametrize("mode", MODES)
def test_extraction_is_identical_whatever_prepares_the_batches(mode, tiny_vlm, tmp_path, monkeypatch):
    from vlmsteer.data import load_vqav2, shapes
    from vlmsteer.extract import ExtractConfig, extract
    from vlmsteer.positions import Selector

    shapes.write_dataset(tmp_path / "w", n=4, seed=3)
    samples = load_vqav2(tmp_path / "w")
    vlm = tiny_vlm("llava")
    cfg = ExtractConfig(layers=[0, -1], selector=Selector("word", word="no", position="of"), batch_size=3,
                        shard_size=4)
    monkeypatch.setattr("vlmsteer.extract.choose_prefetch", lambda device: Prefetch.NONE)
    want, _ = extract(vlm, samples, tmp_path / "in-line", cfg)
    monkeypatch.setattr("vlmsteer.extract.choose_prefetch", lambda device: mode)
    got, _ = extract(vlm, samples, tmp_path / str(mode.value), cfg)
    assert got.records == want.records and len(got.manifest["shards"]) == -(-len(samples) // 4)
    for layer in want.layers:
        assert np.array_equal(got.features(layer, only_found=False), want.features(layer, only_found=False))


def test_a_shard_lost_to_a_power_cut_is_extracted_again(tiny_vlm, tmp_path, caplog):
    """Only the manifest is forced to disk; a resumed store whose listed shard file came out
    short (as after a power loss) redoes that shard and the ones after it."""
    from vlmsteer.data import load_vqav2, shapes
    from vlmsteer.extract import ExtractConfig, extract

    shapes.write_dataset(tmp_path / "w", n=3, seed=4)
    samples = load_vqav2(tmp_path / "w")
    vlm = tiny_vlm("llava")
    cfg = ExtractConfig(layers=[1], batch_size=4, shard_size=5)
    want, _ = extract(vlm, samples, tmp_path / "s", cfg)
    features = want.features(1, only_found=False).copy()
    damaged = tmp_path / "s" / "shard-00001.layer-1.npy"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="vlmsteer"):
        again, resumed = extract(vlm, samples, tmp_path / "s", cfg)
    assert resumed == 5 and "shard-00001.layer-1.npy" in caplog.text
    # batches now start at sample 5, so padding differs: equal up to float rounding
    np.testing.assert_allclose(again.features(1, only_found=False), features, atol=1e-5)


def test_fast_exit_runs_exit_handlers_and_flushes_output():
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('handler ran'))\n"
            "from vlmsteer.cli import _exit_now\n"
            "print('buffered', end=' ')\n"
            "sys.stderr.write('to stderr')\n"
            "_exit_now(3)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 3
    assert done.stdout == "buffered handler ran\n" and done.stderr == "to stderr"


def test_a_prefetch_worker_drops_the_handshake_errors_of_a_dead_parent_quietly():
    """A parent killed while a worker hands it a batch leaves the worker's resource sharer with a
    reset connection or a cut handshake (EOFError): no traceback on the user's terminal; any
    other error still reaches it."""
    import subprocess
    import sys

    code = ("import sys, threading\n"
            "from vlmsteer.batching import _quiet_worker\n"
            "_quiet_worker(0)\n"
            "for exc in (EOFError('cut'), ConnectionResetError('reset')):\n"
            "    sys.excepthook(type(exc), exc, None)\n"
            "    t = threading.Thread(target=lambda e=exc: (_ for _ in ()).throw(e)); t.start(); t.join()\n"
            "sys.excepthook(ValueError, ValueError('kept'), None)\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert "cut" not in err and "reset" not in err and "ValueError: kept" in err
