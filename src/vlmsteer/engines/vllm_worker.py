"""Steering inside vLLM's worker: forward hooks on the language model's decoder layers that add
each request's own vector to the residual stream, at its own token region.

Loaded by vLLM as a worker extension (``worker_extension_cls``), so it runs wherever vLLM runs the
model and is reached through ``collective_rpc``. A vLLM decoder layer returns ``(hidden,
residual)``; the residual stream after the layer is their sum, so adding to ``hidden`` adds to
the stream. The tokens of every scheduled request arrive as one flat tensor: request ``i`` owns
rows ``query_start_loc[i]:query_start_loc[i + 1]`` (the model runner's order, ``input_batch``), at
absolute positions ``num_computed_tokens[i] + 0, 1, …``, which decide the region (image tokens by
the prompt's token ids, the last prompt position, generated positions from the prompt's length).
A request names its steering in ``SamplingParams.extra_args["vlmsteer"]``; the hooks count, per
request and layer, the tokens they steered, so the engine can prove every steered request was
steered (vLLM internals this relies on are pinned by the ``vllm`` extra's version range).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KEY = "vlmsteer"  # extra_args: {"vlmsteer": {"steering": name, "row": i}}
REGIONS = ("prompt", "image", "text", "last_prompt", "generated", "all")


@dataclass
class _Spec:
    deltas: dict[int, torch.Tensor]  # layer -> alpha * vector
    region: str


class SteeringWorkerExtension:
    """Methods vLLM adds to its worker (``self`` is the worker: ``self.model_runner``)."""

    def vlmsteer_install(self, image_token_ids: list[int]) -> int:
        """Hook every decoder layer once; returns the number of layers."""
        if getattr(self, "_vlmsteer", None) is not None:
            return len(self._vlmsteer["layers"])
        model = self.model_runner.get_model()
        language = model.get_language_model() if hasattr(model, "get_language_model") else model
        layers = language.model.layers
        state = {"layers": layers, "specs": {}, "seen": {}, "image": torch.tensor(sorted(image_token_ids)),
                 "handles": []}
        self._vlmsteer = state
        for index, layer in enumerate(layers):
            state["handles"].append(layer.register_forward_hook(self._vlmsteer_hook(index)))
        return len(layers)

    def vlmsteer_uninstall(self) -> None:
        """Remove the hooks (the model runs as vLLM built it)."""
        state = getattr(self, "_vlmsteer", None)
        for handle in state["handles"] if state else ():
            handle.remove()
        self._vlmsteer = None

    def vlmsteer_set(self, specs: dict[str, dict]) -> None:
        """Replace the steerings: ``{name: {"deltas": {layer: list of floats}, "region": str}}``;
        forget what was seen. Without hooks (never installed, or removed) nothing is kept, and
        what the hooks saw stays empty: the engine's check then refuses every steered answer."""
        state = getattr(self, "_vlmsteer", None)
        if state is None:
            return
        dtype = next(state["layers"].parameters()).dtype
        state["specs"] = {name: _Spec({int(l): torch.tensor(v, dtype=dtype) for l, v in spec["deltas"].items()},
                                      spec["region"]) for name, spec in specs.items()}
        state["seen"] = {}

    def vlmsteer_seen(self) -> dict[int, dict[int, int]]:
        """Per steered row (``extra_args`` row), per layer: how many tokens the hooks steered."""
        state = getattr(self, "_vlmsteer", None)
        return {row: dict(layers) for row, layers in state["seen"].items()} if state else {}

    def _vlmsteer_hook(self, layer: int):
        def hook(module, args, output):
            state = self._vlmsteer
            if not state["specs"]:
                return None
            hidden, residual = (output[0], output[1]) if isinstance(output, tuple) else (output, None)
            runner = self.model_runner
            batch = runner.input_batch
            n = batch.num_reqs
            starts = runner.query_start_loc.cpu[:n + 1].tolist()
            edited = None
            for i, req_id in enumerate(batch.req_ids[:n]):
                params = runner.requests[req_id].sampling_params
                tag = ((params.extra_args or {}) if params is not None else {}).get(KEY)
                if tag is None:
                    continue
                spec = state["specs"][tag["steering"]]
                delta = spec.deltas.get(layer)
                if delta is None:
                    continue
                a, b = starts[i], starts[i + 1]
                first = int(batch.num_computed_tokens_cpu[i])
                mask = positions_in_region(spec.region, runner.requests[req_id].prompt_token_ids, first, b - a,
                                    state["image"])
                seen = state["seen"].setdefault(tag["row"], {})
                seen[layer] = seen.get(layer, 0) + int(mask.sum())
                if bool(mask.any()):
                    if edited is None:
                        edited = hidden.clone()
                    rows = torch.arange(a, b, device=hidden.device)[mask.to(hidden.device)]
                    edited[rows] += delta.to(hidden.device)
            if edited is None:
                return None
            return (edited, residual) if isinstance(output, tuple) else edited

        return hook


def positions_in_region(region: str, prompt: list[int], first: int, count: int,
                        image_ids: torch.Tensor) -> torch.Tensor:
    """Which of the absolute positions ``first … first + count − 1`` belong to ``region``."""
    positions = torch.arange(first, first + count)
    p = len(prompt)
    in_prompt = positions < p
    if region in ("generated", "all"):
        generated = ~in_prompt
        if region == "generated":
            return generated
        return torch.ones(count, dtype=torch.bool)
    if region == "prompt":
        return in_prompt
    if region == "last_prompt":
        return positions == p - 1
    tokens = torch.tensor(prompt)[positions.clamp(max=p - 1)]
    image = torch.isin(tokens, image_ids) & in_prompt
    return image if region == "image" else in_prompt & ~image
