"""Batched extraction: samples -> model -> hooks -> token selector -> feature store.

Two modes: ``teacher`` (prompt + the sample's reference answer or caption, one forward
pass) and ``generate`` (the model's own greedy response, then one forward pass over prompt
+ response). In both, the response tokens are appended to the left-padded prompt batch as
token ids, so the response spans are exact whatever the tokenizer.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from vlmsteer.batching import Prefetch, choose_prefetch, part_name, rank_slice, shrinking_batches
from vlmsteer.data.identity import dataset_identity
from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError, parse_choice
from vlmsteer.hooks import capture_residual, encode_each_image_once, stop_after
from vlmsteer.loading import decode_images
from vlmsteer.model import Batch, VLM
from vlmsteer.progress import progress_bar
from vlmsteer.positions import Selector
from vlmsteer.store import MANIFEST, FeatureStore, StoreWriter

log = logging.getLogger(__name__)

STORE_DTYPES = {"float32": np.float32, "float16": np.float16}


class Mode(str, Enum):
    TEACHER = "teacher"
    GENERATE = "generate"


class Target(str, Enum):
    """Which reference text is teacher-forced."""

    AUTO = "auto"  # the answer when the sample has answers, else its first caption
    ANSWER = "answer"
    CAPTION = "caption"


@dataclass
class ExtractConfig:
    layers: list[int]
    selector: Selector = field(default_factory=Selector)
    mode: Mode = Mode.TEACHER
    target: Target = Target.AUTO
    batch_size: int = 16
    shard_size: int = 256
    dtype: str = "float32"
    max_new_tokens: int = 32

    def __post_init__(self):
        self.mode = parse_choice(Mode, self.mode, "mode")
        self.target = parse_choice(Target, self.target, "target")
        if self.dtype not in STORE_DTYPES:
            raise VlmsteerError(f"unknown store dtype {self.dtype!r}; choose float32 or float16")
        if self.batch_size < 1 or self.shard_size < 1:
            raise VlmsteerError("batch size and shard size must be >= 1")


class FeatureReader(Protocol):
    """Another engine for extraction (the vLLM engine): it generates the responses and reads the
    residual stream; the transformers model still prepares the batches (templates, tokens,
    positions), so both engines read the same positions of the same token ids."""

    name: str

    def generate_ids(self, samples: Sequence[Sample], max_new_tokens: int,
                     images: Sequence[Any]) -> tuple[list[list[int]], list[str]]:
        ...

    def read_features(self, sequences: Sequence[list[int]], images: Sequence[Any], positions: Sequence[list[int]],
                      layers: Sequence[int]) -> dict[int, np.ndarray]:
        ...


def target_text(sample: Sample, target: Target) -> str:
    if target in (Target.AUTO, Target.ANSWER) and sample.answer is not None:
        return sample.answer
    if target in (Target.AUTO, Target.CAPTION) and sample.captions:
        return sample.captions[0]
    raise VlmsteerError(f"sample {sample.id} has no {target.value if target is not Target.AUTO else 'answer or caption'}"
                        " to teacher-force")


def response_ids(vlm: VLM, prompt_texts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
    """Token ids of each response as it follows its templated prompt (same separator as
    ``build_prompt``); one tokenizer call for the batch."""
    if not responses:
        return []
    texts = [("" if p.endswith((" ", "\n")) else " ") + r for p, r in zip(prompt_texts, responses)]
    return list(vlm.tokenizer(texts, add_special_tokens=False)["input_ids"])


def append_responses(vlm: VLM, batch: Batch, responses: Sequence[Sequence[int]]) -> Batch:
    """Prompt batch (left padded) + each row's response ids (right padded): one batch whose
    prompt part is unchanged, with ``answer_spans`` marking the responses."""
    n = len(batch)
    width = max((len(r) for r in responses), default=0)
    pad = vlm.tokenizer.pad_token_id or 0
    dev = batch.input_ids.device
    ids = torch.full((n, width), pad, dtype=batch.input_ids.dtype, device=dev)
    mask = torch.zeros((n, width), dtype=batch.attention_mask.dtype, device=dev)
    for i, r in enumerate(responses):
        if len(r):
            ids[i, :len(r)] = torch.tensor(list(r), dtype=ids.dtype)
            mask[i, :len(r)] = 1
    inputs = {}
    for k, v in batch.inputs.items():
        if k == "input_ids":
            inputs[k] = torch.cat([v, ids], 1)
        elif k == "attention_mask":
            inputs[k] = torch.cat([v, mask], 1)
        elif isinstance(v, torch.Tensor) and v.shape[:2] == batch.input_ids.shape and v.dim() == 2:
            inputs[k] = torch.cat([v, torch.zeros((n, width), dtype=v.dtype, device=dev)], 1)
        else:
            inputs[k] = v
    p = batch.prompt_length
    spans = [(p, p + len(r)) for r in responses]
    return Batch(inputs=inputs, regions=batch.regions, prompt_length=p, answer_spans=spans, texts=batch.texts)


def select_positions(vlm: VLM, full: Batch, selector: Selector, row: int,
                     response: Sequence[int]) -> list[int]:
    """Absolute positions (in ``full``) whose features are averaged for ``row``; [] if none."""
    return selector.positions(full.regions, row, response, vlm.tokenizer)


def extract(vlm: VLM, samples: Sequence[Sample], out: str | Path, config: ExtractConfig,
            dataset: dict | None = None, progress: bool = False,
            part: tuple[int, int] | None = None, reader: FeatureReader | None = None) -> tuple[FeatureStore, int]:
    """Extract features of ``samples`` into the store at ``out``; resumes a partial store.

    ``part=(rank, world)`` (a data-parallel run, e.g. under ``torchrun``): this process takes
    the rank-th contiguous slice of the samples into its own part store ``out/rank-R-of-W``
    (resumable on its own); rank 0 then waits for every part and writes ``out``'s manifest,
    which lists the parts' shards in sample order, so the store reads exactly like a
    single-process one. Returns the store (a non-zero rank: its part) and the number of
    samples resumed from. ``reader`` (e.g. the vLLM engine) generates and reads instead of the
    transformers model; the store records which engine read it.
    """
    layers = sorted({vlm.layer_index(layer) for layer in config.layers})
    if not samples:
        raise VlmsteerError("no samples to extract")
    dataset = dict(dataset or {})
    origin = {"data": dataset.pop("path", None), "model": vlm.source, "adapter": vlm.adapter}
    header = {
        "model_id": vlm.model_id, "model": vlm.identity, "model_revision": vlm.revision,
        "architecture": vlm.architecture, "model_dtype": vlm.dtype,
        "hidden_size": vlm.hidden_size, "num_layers": vlm.num_layers, "layers": layers,
        "selector": config.selector.to_dict(), "selector_description": config.selector.describe(),
        "mode": config.mode.value, "target": config.target.value, "dtype": config.dtype,
        "shard_size": config.shard_size, "max_new_tokens": config.max_new_tokens,
        "dataset": {**dataset, **dataset_identity(samples)}, "n_samples": len(samples), "origin": origin,
    }
    if reader is not None:
        if part is not None and part[1] > 1:
            raise VlmsteerError(f"the {reader.name} engine runs in one process; extract without torchrun", "engine")
        header["engine"] = reader.name
    if part is not None and part[1] > 1:
        return _extract_part(vlm, samples, Path(out), config, header, layers, progress, *part)
    with StoreWriter(out, header) as writer:
        resumed = _write_shards(vlm, samples, writer, layers, config, progress, reader)
    _check_found(out, writer.manifest["summary"]["found"], config)
    return FeatureStore.open(out), resumed


def _extract_part(vlm: VLM, samples: Sequence[Sample], out: Path, config: ExtractConfig, header: dict,
                  layers: list[int], progress: bool, rank: int, world: int) -> tuple[FeatureStore, int]:
    mine = rank_slice(samples, rank, world)
    top = out / MANIFEST
    if top.exists() and "parts" not in json.loads(top.read_text()):
        raise VlmsteerError(f"{out}: a single-process store is already here; choose another output folder")
    names = [part_name(r, world) for r in range(world)]
    part_header = {**header, "n_samples": len(mine), "dataset": {**header["dataset"], **dataset_identity(mine)},
                   "part": [rank, world]}
    with StoreWriter(out / names[rank], part_header) as writer:
        resumed = _write_shards(vlm, mine, writer, layers, config, progress)
    if rank != 0:
        return FeatureStore.open(out / names[rank]), resumed
    if not StoreWriter.merge_parts(out, names, header):
        log.info("rank 0 done; waiting for the other %d ranks", world - 1)
        while not StoreWriter.merge_parts(out, names, header):  # the other ranks are still extracting
            time.sleep(0.1)
    _check_found(out, json.loads(top.read_text())["summary"]["found"], config)
    return FeatureStore.open(out), resumed


def _check_found(out, found: int, config: ExtractConfig) -> None:
    if found == 0:
        what = f"the word {config.selector.word!r}" if config.selector.word else "a selected token"
        raise VlmsteerError(f"{out}: empty selection: no sample contains {what} (the store is written and readable)")


def _write_shards(vlm: VLM, samples: Sequence[Sample], writer: StoreWriter, layers: list[int],
                  config: ExtractConfig, progress: bool, reader: FeatureReader | None = None) -> int:
    """Extract the samples the store does not hold yet, writing a shard every ``shard_size``
    samples; finish the store. Returns the number of samples resumed from.

    Batches are prepared (images, templates, tokens, positions) one batch ahead while the
    model runs (see :func:`~vlmsteer.batching.choose_prefetch`)."""
    resumed = writer.samples_done
    np_dtype = STORE_DTYPES[config.dtype]
    todo = samples[resumed:]
    found = sum(r["found"] for r in FeatureStore.open(writer.path, allow_partial=True).records) if resumed else 0
    records: list[dict] = []
    feats: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}

    def write(n: int) -> None:  # the first n buffered samples become one shard
        stacked = {layer: np.concatenate(feats[layer]) for layer in layers}
        writer.write_shard(records[:n], {layer: stacked[layer][:n] for layer in layers})
        del records[:n]
        for layer in layers:
            feats[layer] = [stacked[layer][n:]]

    with progress_bar("extracting", len(samples), enabled=progress) as advance:
        advance(resumed)
        for chunk, (chunk_records, chunk_feats) in shrinking_batches(
                todo, config.batch_size, lambda prepared: _run_batch(vlm, prepared, layers, config, reader),
                prepare=lambda chunk: _prepare_batch(vlm, chunk, config), prefetch=_prefetch(vlm, config)):
            records.extend(chunk_records)
            found += sum(r["found"] for r in chunk_records)
            for layer in layers:
                feats[layer].append(chunk_feats[layer].astype(np_dtype, copy=False))
            advance(len(chunk))
            while len(records) >= config.shard_size:
                write(config.shard_size)
        if records:
            write(len(records))
    writer.finish(found=found, total=len(samples))
    return resumed


def _prefetch(vlm: VLM, config: ExtractConfig) -> Prefetch:
    prefetch = choose_prefetch(vlm.device)
    # generation decodes with the tokenizer that a preparing thread would be using
    return Prefetch.NONE if prefetch is Prefetch.THREAD and config.mode is Mode.GENERATE else prefetch


@dataclass
class _Prepared:
    """A batch ready for the model: teacher-forced, the full batch with its responses and the
    positions to read; to generate, the prompt batch only."""

    chunk: Sequence[Sample]
    images: list  # the chunk's images, decoded once (RGB PIL images; None: text only)
    batch: Batch
    texts: list[str] | None = None
    responses: list[list[int]] | None = None
    positions: list[list[int]] | None = None


def _prepare_batch(vlm: VLM, chunk: Sequence[Sample], config: ExtractConfig) -> _Prepared:
    images = decode_images([s.image for s in chunk], vlm.max_image_pixels)
    prompt_batch = vlm.prepare(images, [s.prompt for s in chunk])
    if config.mode is Mode.GENERATE:
        return _Prepared(chunk, images, prompt_batch)
    texts = [target_text(s, config.target) for s in chunk]
    responses = response_ids(vlm, prompt_batch.texts, texts)
    full = append_responses(vlm, prompt_batch, responses)
    positions = [select_positions(vlm, full, config.selector, i, responses[i]) for i in range(len(chunk))]
    return _Prepared(chunk, images, full, texts, responses, positions)


@torch.no_grad()
def _run_batch(vlm: VLM, prepared: _Prepared, layers: list[int], config: ExtractConfig,
               reader: FeatureReader | None = None):
    chunk, full, texts, responses, positions = (prepared.chunk, prepared.batch, prepared.texts,
                                                prepared.responses, prepared.positions)
    if config.mode is Mode.GENERATE:
        if reader is not None:
            responses, texts = reader.generate_ids(chunk, config.max_new_tokens, prepared.images)
        else:
            gen = vlm.generate(full, max_new_tokens=config.max_new_tokens)
            responses = [gen.tokens[i, :gen.lengths[i]].tolist() for i in range(len(chunk))]
            texts = gen.texts
        full = append_responses(vlm, full, responses)
        positions = [select_positions(vlm, full, config.selector, i, responses[i]) for i in range(len(chunk))]
    found = [bool(pos) and min(pos) >= 0 for pos in positions]
    if reader is not None:
        features = _read_with(reader, prepared.images, full, positions, found, layers)
    else:
        features = _read_hidden(vlm, full, positions, found, layers)
    return _records(chunk, texts, responses, positions, found), features


def _read_with(reader: FeatureReader, images: list, full: Batch, positions, found, layers) -> dict:
    """The reader's features: each row's unpadded ids, its positions shifted by its left padding."""
    keep = full.attention_mask.bool()
    left = (~keep[:, :full.prompt_length]).sum(1).tolist()
    sequences = [full.input_ids[i][keep[i]].tolist() for i in range(len(images))]
    shifted = [[p - left[i] for p in pos] if ok else [] for i, (pos, ok) in enumerate(zip(positions, found))]
    return reader.read_features(sequences, images, shifted, layers)


def _read_hidden(vlm: VLM, full: Batch, positions, found, layers) -> dict:
    # the forward stops after the deepest captured layer: later layers and logits are not needed;
    # questions about one image share its encoding
    with (capture_residual(vlm.layers, layers) as captured, stop_after(vlm.layers[max(layers)]),
          encode_each_image_once(vlm.image_encoder)):
        vlm.forward(full)
    hidden = {layer: captured[layer][0] for layer in layers}
    features = {}
    rows = torch.arange(len(positions))
    for layer in layers:
        h = hidden[layer]
        if all(found) and all(len(pos) == 1 for pos in positions):  # one token per sample: one gather
            features[layer] = h[rows, torch.tensor([pos[0] for pos in positions])].float().cpu().numpy()
        else:
            zero = h.new_zeros(h.shape[-1], dtype=torch.float32)
            features[layer] = torch.stack([h[i, pos].float().mean(0) if ok else zero
                                           for i, (pos, ok) in enumerate(zip(positions, found))]).cpu().numpy()
    return features


def _records(chunk, texts, responses, positions, found) -> list[dict]:
    records = []
    for i, s in enumerate(chunk):
        record = {"id": s.id, "prompt": s.prompt, "response": texts[i], "answers": s.answers,
                  "answer": s.answer, "answer_type": s.answer_type, "question_type": s.question_type,
                  "image": s.image_path, "digest": s.digest, "image_digest": s.image_digest,
                  "found": found[i], "positions": positions[i],
                  "n_response_tokens": len(responses[i])}
        if s.captions:
            record["captions"] = s.captions
        if s.meta:
            record["meta"] = s.meta
        records.append(record)
    return records
