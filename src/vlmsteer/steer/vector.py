"""``SteeringVector``: one direction per layer plus metadata; values you can add and scale.

Saved as safetensors (tensors ``<name>/layer_<l>``) with the metadata as JSON in the
safetensors header, so one file can hold many named vectors (e.g. all concept pairs).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from vlmsteer.data.identity import regular_file
from vlmsteer.errors import VlmsteerError, input_error
from vlmsteer.outputs import atomic_write, make_folder


CONCEPT_SHIFT = "concept_shift"  # the method recorded by a concept-pair vector u_j - u_i
PAIR_METHODS = frozenset({CONCEPT_SHIFT})  # builders whose vectors go from one concept to another
log = logging.getLogger("vlmsteer")


@dataclass
class SteeringVector:
    vectors: dict[int, torch.Tensor]  # layer -> (hidden,) float32
    model_id: str | None = None
    hidden_size: int | None = None
    method: str = "custom"
    source: str | None = None  # what the vector moves away from, e.g. 'answer "yes"'
    target: str | None = None  # what it moves toward
    n_source: int | None = None
    n_target: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.vectors:
            raise VlmsteerError("a steering vector needs at least one layer")
        if not isinstance(self.options, dict):
            raise VlmsteerError(f"a steering vector's options must be a mapping, got {type(self.options).__name__}")
        self.vectors = {int(k): v.detach().to(torch.float32).reshape(-1).cpu() for k, v in self.vectors.items()}
        bad = [l for l, v in sorted(self.vectors.items()) if not bool(torch.isfinite(v).all())]
        if bad:
            raise VlmsteerError(f"steering vector has NaN or infinite values at layer(s) {bad}")
        sizes = {v.numel() for v in self.vectors.values()}
        if len(sizes) != 1:
            raise VlmsteerError(f"layers of one steering vector differ in size: {sorted(sizes)}")
        size = sizes.pop()
        if self.hidden_size is None:
            self.hidden_size = size
        elif self.hidden_size != size:
            raise VlmsteerError(f"vector size {size} does not match hidden_size {self.hidden_size}")

    # ------------------------------------------------------------------ values
    @property
    def layers(self) -> list[int]:
        return sorted(self.vectors)

    @property
    def pairs_concepts(self) -> bool:
        """Whether it goes from one concept to another (``u_j − u_i``, built by ``concept_shift``)."""
        return self.method in PAIR_METHODS

    def norm(self, layer: int | None = None) -> float:
        layer = self.layers[0] if layer is None else layer
        return float(self.vectors[layer].norm())

    def _meta(self, **changes) -> dict:
        base = dict(model_id=self.model_id, hidden_size=self.hidden_size, method=self.method, source=self.source,
                    target=self.target, n_source=self.n_source, n_target=self.n_target, options=dict(self.options))
        base.update(changes)
        return base

    def _combine(self, other: "SteeringVector", op, symbol: str) -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if self.hidden_size != other.hidden_size:
            raise VlmsteerError(f"cannot combine vectors of sizes {self.hidden_size} and {other.hidden_size}")
        layers = sorted(set(self.vectors) | set(other.vectors))
        zero = torch.zeros(self.hidden_size)
        vecs = {l: op(self.vectors.get(l, zero), other.vectors.get(l, zero)) for l in layers}
        return SteeringVector(vecs, **self._meta(method=f"({self.method} {symbol} {other.method})",
                                                 source=None, target=None, n_source=None, n_target=None))

    def __add__(self, other):
        return self._combine(other, torch.add, "+")

    def __sub__(self, other):
        return self._combine(other, torch.sub, "-")

    def __mul__(self, k: float):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return SteeringVector({l: v * float(k) for l, v in self.vectors.items()}, **self._meta())

    __rmul__ = __mul__

    def __truediv__(self, k: float):
        return self * (1.0 / k)

    def __neg__(self):
        return SteeringVector({l: -v for l, v in self.vectors.items()},
                              **self._meta(source=self.target, target=self.source))

    def __eq__(self, other) -> bool:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return self.layers == other.layers and all(torch.equal(self.vectors[l], other.vectors[l]) for l in self.layers) \
            and self._meta() == other._meta()

    def digest(self) -> str:
        """SHA-256 of the directions (float32 bytes, by layer) and the metadata."""
        h = hashlib.sha256(json.dumps(self._meta(), sort_keys=True, default=str).encode())
        for layer in self.layers:
            h.update(f"{layer}:".encode())
            h.update(self.vectors[layer].numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ checks
    def check_model(self, vlm, layers: list[int] | None = None, allow_other_model: bool = False) -> list[int]:
        """Check hidden size and layer range against ``vlm`` — and, where the vector records the
        weights it was built from (``options["model"]``), that they are ``vlm``'s, unless
        ``allow_other_model``; return the absolute layers to use."""
        if self.hidden_size != vlm.hidden_size:
            raise VlmsteerError(f"steering vector has size {self.hidden_size} but {vlm.model_id} has hidden size "
                                f"{vlm.hidden_size}")
        check_same_model(self.options.get("model"), vlm, "steering vector", allow_other_model)
        for l in self.layers:
            if not 0 <= l < vlm.num_layers:
                raise VlmsteerError(f"steering vector layer {l} is out of range for {vlm.model_id} "
                                    f"({vlm.num_layers} layers)")
        if layers is None:
            return self.layers
        chosen = [vlm.layer_index(l) for l in layers]
        missing = [l for l in chosen if l not in self.vectors]
        if missing:
            if len(self.layers) == 1:  # one direction, applied at other layers on request
                log.warning("the steering vector was made at layer %d; it is applied at layer(s) %s, as asked",
                            self.layers[0], ", ".join(map(str, chosen)))
                return chosen
            raise VlmsteerError(f"steering vector has no direction for layer(s) {missing} (has {self.layers})")
        return chosen

    def at(self, layer: int) -> torch.Tensor:
        if layer in self.vectors:
            return self.vectors[layer]
        if len(self.vectors) == 1:
            return next(iter(self.vectors.values()))
        raise VlmsteerError(f"steering vector has no direction for layer {layer} (has {self.layers})")

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, name: str = "vector") -> Path:
        return save_vectors(path, {name: self})


def random_direction(like: torch.Tensor, seed: int) -> torch.Tensor:
    """A random direction (Gaussian, from a generator seeded with ``seed``) of ``like``'s norm:
    the random-vector control of a steering experiment."""
    direction = torch.randn(like.shape, generator=torch.Generator().manual_seed(seed))
    return (direction / direction.norm() * like.float().cpu().norm()).to(device=like.device, dtype=like.dtype)


def check_same_model(recorded: dict | None, vlm, what: str, allow_other_model: bool = False) -> None:
    """A one-line error when ``recorded`` (a model identity an input was made with) names other
    weights than ``vlm``'s, or another LoRA adapter (one where ``vlm`` has none, or none where it
    has one); inputs that record none (imported, hand-made) pass."""
    if allow_other_model or not isinstance(recorded, dict) or not recorded.get("weights"):
        return
    here = vlm.identity
    if recorded["weights"] != here["weights"]:
        raise VlmsteerError(f"the {what} was made with another model (weights {recorded['weights'][:12]}, "
                            f"{vlm.model_id} has {here['weights'][:12]}); use it with its own model, or allow "
                            "another model", "allow_other_model")
    if "adapter" in recorded and recorded["adapter"] != here["adapter"]:
        made = f"adapter {recorded['adapter'][:12]}" if recorded["adapter"] else "no adapter"
        has = f"adapter {here['adapter'][:12]}" if here["adapter"] else "no adapter"
        raise VlmsteerError(f"the {what} was made with {made} on these weights, but {vlm.model_id} is loaded with "
                            f"{has}; load the model it was made with, or allow another model", "allow_other_model")


def save_vectors(path: str | Path, vectors: dict[str, SteeringVector]) -> Path:
    path = Path(path)
    make_folder(path.parent)
    tensors, meta = {}, {}
    for name, v in vectors.items():
        if "/" in name:
            raise VlmsteerError(f"vector name {name!r} may not contain '/'")
        for l, t in v.vectors.items():
            tensors[f"{name}/layer_{l}"] = t.contiguous()
        meta[name] = v._meta()
    data = save(tensors, metadata={"vlmsteer": json.dumps({"format_version": 1, "vectors": meta})})
    return atomic_write(path, lambda f: f.write(data), durable=False)


def load_vectors(path: str | Path) -> dict[str, SteeringVector]:
    path = Path(path)
    regular_file(path, "steering vector file")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("vlmsteer", "null"))
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as exc:
        raise input_error(path, f"not a readable steering vector file ({str(exc).splitlines()[0]})") from None
    if not isinstance(header, dict) or not isinstance(header.get("vectors"), dict):
        raise input_error(path, "safetensors file without vlmsteer metadata")
    out = {}
    for name, meta in header["vectors"].items():
        vecs = {int(k.split("/layer_")[1]): t for k, t in tensors.items() if k.startswith(name + "/layer_")}
        try:
            out[name] = SteeringVector(vecs, **meta)
        except (VlmsteerError, TypeError) as exc:
            raise input_error(path, f"vector {name!r}: {exc}") from None
    return out


def _by_concept_words(vectors: dict[str, SteeringVector], name: str, path) -> str:
    """A concept-pair vector named by its concepts' top words, ``"yes->no"`` (its source and
    target labels are ``"k:word"``)."""
    source, arrow, target = name.partition("->")
    def word(label) -> str:
        return str(label).split(":", 1)[-1]

    found = [key for key, v in vectors.items() if arrow and v.pairs_concepts
             and word(v.source) == source.strip() and word(v.target) == target.strip()]
    if len(found) == 1:
        return found[0]
    if found:
        raise input_error(path, f"several vectors go from a {source.strip()!r} concept to a {target.strip()!r} concept "
                                f"({', '.join(found)}); name one", "name")
    raise input_error(path, f"no vector named {name!r} (names are 'i->j', or top words such as 'yes->no' for "
                            "concept pairs)", "name")


def load_vector(path: str | Path, name: str | None = None, vlm=None, allow_other_model: bool = False) -> SteeringVector:
    """One vector from a file (the only one, or ``name``); checked against ``vlm`` if given."""
    vectors = load_vectors(path)
    if name is None:
        if len(vectors) != 1:
            raise input_error(path, f"holds {len(vectors)} vectors; name one (e.g. {', '.join(list(vectors)[:3])})",
                              "name")
        vec = next(iter(vectors.values()))
    elif name in vectors:
        vec = vectors[name]
    else:
        vec = vectors[_by_concept_words(vectors, name, path)]
    if vlm is not None:
        vec.check_model(vlm, allow_other_model=allow_other_model)
    return vec
