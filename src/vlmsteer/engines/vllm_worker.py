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
from typing import Any

import torch

from vlmsteer.positions import Region, positions_in_region

KEY = "vlmsteer"  # extra_args: {"vlmsteer": {"steering": name, "row": i}}


@dataclass
class _Spec:
    deltas: dict[int, torch.Tensor]  # layer -> alpha * vector
    region: str
    condition: Any = None  # (1, hidden) stream at the first layer's last prompt position -> (1,) bool


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
                 "handles": [], "capture": {}, "captured": {}, "decisions": {}, "unread": set(), "plan": None,
                 "last_layer": float("inf")}
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
        """Replace the steerings: ``{name: {"deltas": {layer: list of floats}, "region": str,
        "condition": callable or None}}``; forget what was seen. Without hooks (never installed, or removed) nothing is kept, and
        what the hooks saw stays empty: the engine's check then refuses every steered answer."""
        state = getattr(self, "_vlmsteer", None)
        if state is None:
            return
        dtype = next(state["layers"].parameters()).dtype
        state["specs"] = {name: _Spec({int(l): torch.tensor(v, dtype=dtype) for l, v in spec["deltas"].items()},
                                      spec["region"], spec.get("condition")) for name, spec in specs.items()}
        state["seen"], state["decisions"], state["unread"] = {}, {}, set()
        state["plan"], state["last_layer"] = None, float("inf")

    def vlmsteer_capture(self, positions: dict[int, list[int]], layers: list[int]) -> None:
        """Read the residual stream (``hidden + residual``) after ``layers`` at these absolute
        positions of the requests tagged ``{"capture": row}``; forget what was read."""
        state = self._vlmsteer
        state["capture"] = {"positions": {int(r): set(p) for r, p in positions.items()}, "layers": set(layers)}
        state["captured"], state["plan"], state["last_layer"] = {}, None, float("inf")

    def vlmsteer_captured(self) -> dict[int, dict[int, tuple[list[int], torch.Tensor]]]:
        """Per captured row, per layer: (positions read, their features as float32, one row each)."""
        return {row: {layer: (pos, torch.stack(vecs)) for layer, (pos, vecs) in layers.items()}
                for row, layers in self._vlmsteer["captured"].items()}

    def vlmsteer_seen(self) -> dict[str, Any]:
        """``seen``: per steered row (``extra_args`` row), per layer, how many tokens the hooks
        steered; ``decisions``: each conditioned row's condition; ``unread``: conditioned rows
        whose condition could not be read before their first steered position."""
        state = getattr(self, "_vlmsteer", None)
        if not state:
            return {"seen": {}, "decisions": {}, "unread": []}
        _fold(state)
        return {"seen": {row: dict(layers) for row, layers in state["seen"].items()},
                "decisions": dict(state["decisions"]), "unread": sorted(state["unread"])}

    def _vlmsteer_hook(self, layer: int):
        def hook(module, args, output):
            state = self._vlmsteer
            capture = state["capture"] if layer in state["capture"].get("layers", ()) else None
            if not state["specs"] and capture is None:
                return None
            hidden, residual = (output[0], output[1]) if isinstance(output, tuple) else (output, None)
            if layer <= state["last_layer"]:  # the first hooked layer of a forward pass: plan it once
                _fold(state)
                state["plan"] = _plan(state, self.model_runner, hidden.device)
            state["last_layer"] = layer
            plan = state["plan"]
            if capture is not None:
                for row, a, b, first in plan.captures:
                    _read(state, capture, row, layer, hidden, residual, a, b, first)
            edited = None
            for name, group in plan.groups.items():  # one indexed add per steering
                delta = state["specs"][name].deltas.get(layer)
                if delta is None:
                    continue
                group.fired.add(layer)
                if len(group.index):
                    edited = hidden.clone() if edited is None else edited
                    edited[group.index] += delta.to(hidden.device)
            for name, row, a, b, first, prompt in plan.conditioned:  # decided per request
                spec = state["specs"][name]
                delta = spec.deltas.get(layer)
                if delta is None or not _decide(state, spec, row, layer, hidden, residual, a, first, b - a,
                                                len(prompt)):
                    continue
                mask = positions_in_region(spec.region, prompt, first, b - a, state["image"])
                seen = state["seen"].setdefault(row, {})
                seen[layer] = seen.get(layer, 0) + int(mask.sum())
                if bool(mask.any()):
                    edited = hidden.clone() if edited is None else edited
                    edited[torch.arange(a, b, device=hidden.device)[mask.to(hidden.device)]] += delta.to(hidden.device)
            if edited is None:
                return None
            return (edited, residual) if isinstance(output, tuple) else edited

        return hook


@dataclass
class _Group:
    """The rows of one forward pass that one (unconditioned) steering edits."""

    index: Any  # (rows,) long tensor of the flat token rows to add to
    counts: list[tuple[int, int]]  # (request row, tokens) in this pass
    fired: set  # the layers whose hooks added to them


@dataclass
class _Plan:
    groups: dict[str, _Group]
    conditioned: list[tuple]  # (steering, request row, start, end, first position, prompt ids)
    captures: list[tuple[int, int, int, int]]  # (request row, start, end, first position)


def _plan(state: dict, runner, device) -> _Plan:
    """Who is edited where in this forward pass (the same for every layer): the scheduled requests'
    rows (``query_start_loc``), absolute positions (``num_computed_tokens``) and regions."""
    batch = runner.input_batch
    n = batch.num_reqs
    starts = runner.query_start_loc.cpu[:n + 1].tolist()
    computed = batch.num_computed_tokens_cpu[:n].tolist()
    rows: dict[str, list] = {}
    counts: dict[str, list] = {}
    conditioned, captures = [], []
    for i, req_id in enumerate(batch.req_ids[:n]):
        request = runner.requests[req_id]
        params = request.sampling_params
        tag = ((params.extra_args or {}) if params is not None else {}).get(KEY)
        if tag is None:
            continue
        a, b, first = starts[i], starts[i + 1], int(computed[i])
        if "capture" in tag:
            captures.append((tag["capture"], a, b, first))
            continue
        name = tag["steering"]
        spec = state["specs"][name]
        prompt = request.prompt_token_ids
        if spec.condition is not None:
            conditioned.append((name, tag["row"], a, b, first, prompt))
            continue
        if first >= len(prompt):  # decoding: every position is a generated one
            hit = list(range(a, b)) if Region.parse(spec.region).covers_generated else []
        else:
            mask = positions_in_region(spec.region, prompt, first, b - a, state["image"])
            hit = (torch.nonzero(mask).flatten() + a).tolist()
        rows.setdefault(name, []).extend(hit)
        counts.setdefault(name, []).append((tag["row"], len(hit)))
    groups = {name: _Group(torch.tensor(rows[name], dtype=torch.long, device=device), counts[name], set())
              for name in rows}
    return _Plan(groups, conditioned, captures)


def _fold(state: dict) -> None:
    """Credit each request of the last planned pass with the tokens steered at each layer whose
    hook did fire (what the engine checks), and forget the plan."""
    plan = state.get("plan")
    for group in plan.groups.values() if plan else ():
        for layer in group.fired:
            for row, count in group.counts:
                seen = state["seen"].setdefault(row, {})
                seen[layer] = seen.get(layer, 0) + count
    state["plan"] = None
    state["last_layer"] = float("inf")


def _decide(state: dict, spec: _Spec, row: int, layer: int, hidden: torch.Tensor, residual: torch.Tensor | None,
            a: int, first: int, count: int, prompt_length: int) -> bool:
    """Whether a conditioned request is steered: its condition, read once from the stream after
    the first steering layer at the last prompt position, before anything is added there (as
    the transformers steerer reads it). A request whose prompt arrives in pieces without that
    position first is left unsteered and marked ``unread`` (the engine then refuses the run)."""
    decided = state["decisions"].get(row)
    if decided is not None:
        return decided
    last = prompt_length - 1
    if layer != min(spec.deltas) or not first <= last < first + count:
        state["unread"].add(row)
        return False
    at = a + last - first
    stream = hidden[at] if residual is None else hidden[at] + residual[at]
    state["decisions"][row] = decided = bool(spec.condition(stream[None].float())[0])
    return decided


def _read(state: dict, capture: dict, row: int, layer: int, hidden: torch.Tensor, residual: torch.Tensor | None,
          a: int, b: int, first: int) -> None:
    """Keep the stream at the wanted positions among this step's ``first … first + (b − a) − 1``."""
    wanted = capture["positions"].get(row, ())
    hits = [p for p in range(first, first + b - a) if p in wanted]
    if not hits:
        return
    rows = torch.tensor([a + p - first for p in hits], device=hidden.device)
    stream = hidden[rows] if residual is None else hidden[rows] + residual[rows]
    positions, vectors = state["captured"].setdefault(row, {}).setdefault(layer, ([], []))
    positions.extend(hits)
    vectors.extend(stream.float().cpu())
