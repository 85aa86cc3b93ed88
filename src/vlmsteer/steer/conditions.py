"""Conditions for fine-grained steering: steer a sample only where a concept is active.

A condition maps features at the steering layer (last prompt position, before steering) to
a per-sample yes/no. :class:`NearestConceptCondition` assigns each feature to its nearest
concept (a centroid: a K-Means concept, or the mean feature of a group of samples) and
steers the samples assigned to one of the ``active`` concepts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from vlmsteer.concepts.dictionary import ConceptDictionary
from vlmsteer.concepts.methods import load_dictionary
from vlmsteer.errors import VlmsteerError
from vlmsteer.data.filters import Filter, normalized, record_value
from vlmsteer.outputs import fingerprint
from vlmsteer.steer.vector import check_same_model
from vlmsteer.store import FeatureStore


@dataclass
class NearestConceptCondition:
    centroids: torch.Tensor  # (K, hidden)
    active: list[int]
    labels: list[str] | None = None
    layer: int | None = None  # the layer whose features it reads (checked by Steering)

    model: dict | None = None  # identity of the model whose features gave the centroids
    source: str | None = None

    def check_model(self, vlm, allow_other_model: bool = False) -> None:
        if self.centroids.shape[1] != vlm.hidden_size:
            raise VlmsteerError(f"{self.source or 'the condition'}: centroids of size {self.centroids.shape[1]} but "
                                f"{vlm.model_id} has hidden size {vlm.hidden_size}")
        check_same_model(self.model, vlm, f"condition store {self.source}", allow_other_model)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        c = self.centroids.to(device=features.device, dtype=torch.float32)
        nearest = torch.cdist(features.float(), c).argmin(dim=1)
        return torch.isin(nearest, torch.tensor(self.active, device=features.device))

    def digest(self) -> str:
        return fingerprint({"centroids": hashlib.sha256(self.centroids.float().numpy().tobytes()).hexdigest(),
                            "active": self.active, "layer": self.layer, "labels": self.labels})

    def describe(self) -> dict:
        names = self.labels or [str(k) for k in range(len(self.centroids))]
        return {"kind": "nearest_concept", "layer": self.layer, "concepts": names,
                "active": [names[k] for k in self.active]}

    @classmethod
    def from_store(cls, store: FeatureStore, layer: int, field: str = "answer",
                   active_values: Sequence[str] = ("yes",), min_count: int = 5) -> "NearestConceptCondition":
        """One concept per value of ``field`` (answers normalized) with at least ``min_count``
        samples; the centroid is the mean feature of its samples."""
        idx = store.select()
        groups: dict[str, list[int]] = {}
        for i in idx:
            value = record_value(store.records[i], field)
            if value is not None:
                groups.setdefault(str(normalized(field, value)), []).append(int(i))
        groups = {k: v for k, v in sorted(groups.items()) if len(v) >= min_count}
        wanted = [str(normalized(field, v)) for v in active_values]
        missing = [v for v in wanted if v not in groups]
        if missing:
            raise VlmsteerError(f"{store.path}: no group of at least {min_count} samples with {field} = "
                                f"{', '.join(missing)}")
        return cls.from_groups(store, layer, groups, wanted)

    @classmethod
    def from_filters(cls, store: FeatureStore, layer: int, filters: dict[str, Filter | str],
                     active: Sequence[str]) -> "NearestConceptCondition":
        """One concept per named filter of the store (see :class:`~vlmsteer.data.filters.Filter`),
        e.g. ``{"colour": "response~colors", "plain": "response!~colors"}``."""
        groups = {}
        for name, flt in filters.items():
            idx = store.select(flt)
            if len(idx) == 0:
                raise VlmsteerError(f"{store.path}: no samples for concept {name!r} ({flt})")
            groups[name] = [int(i) for i in idx]
        missing = [a for a in active if a not in groups]
        if missing:
            raise VlmsteerError(f"active concept {missing[0]!r} is not one of: {', '.join(groups)}")
        return cls.from_groups(store, layer, groups, list(active))

    @classmethod
    def from_groups(cls, store: FeatureStore, layer: int, groups: dict[str, list[int]],
                    active: Sequence[str]) -> "NearestConceptCondition":
        """Centroids = mean feature of each group of record indices; steer the ``active`` groups."""
        labels = list(groups)
        feats = store.features(layer, indices=np.concatenate([groups[k] for k in labels]), dtype=np.float64)
        cents, start = [], 0
        for k in labels:
            n = len(groups[k])
            cents.append(feats[start:start + n].mean(0))
            start += n
        return cls(torch.tensor(np.stack(cents), dtype=torch.float32), [labels.index(v) for v in active], labels,
                   layer, store.header.get("model"), str(store.path))


@dataclass
class DictionaryCondition:
    """Steer the samples whose feature a concept dictionary assigns to one of the ``active``
    concepts (for K-Means: the nearest centroid) — the paper's fine-grained application of
    ``u_j - u_i``: only where concept ``i`` is active."""

    dictionary: ConceptDictionary
    active: list[int]
    layer: int | None = None
    labels: list[str] | None = None
    source: str | None = None

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        assigned = self.dictionary.assign(features.detach().float().cpu().numpy())
        return torch.from_numpy(np.isin(assigned, self.active)).to(features.device)

    def digest(self) -> str:
        state = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
                 for k, v in sorted(self.dictionary.state().items())}
        return fingerprint({"method": self.dictionary.method, "state": state, "active": self.active,
                            "layer": self.layer})

    def describe(self) -> dict:
        names = self.labels or [str(k) for k in range(self.dictionary.k)]
        return {"kind": "dictionary", "dictionary": self.source, "method": self.dictionary.method,
                "layer": self.layer, "active": [names[k] for k in self.active]}

    model: dict | None = None  # identity of the model whose features the dictionary was learnt on

    def check_model(self, vlm, allow_other_model: bool = False) -> None:
        size = self.dictionary.components_.shape[1]
        if size != vlm.hidden_size:
            raise VlmsteerError(f"{self.source}: the dictionary's concepts have size {size} but {vlm.model_id} has "
                                f"hidden size {vlm.hidden_size}")
        check_same_model(self.model, vlm, f"dictionary {self.source}", allow_other_model)

    @classmethod
    def load(cls, path, active: Sequence[int | str]) -> "DictionaryCondition":
        """From a ``dictionary.safetensors`` written by ``vlmsteer concepts``; active concepts by
        index, or by top word (the dictionary's labels: ``yes`` names every concept labelled
        ``"k:yes"``)."""
        dictionary, meta = load_dictionary(path)
        active = sorted({i for a in active for i in concept_indices(a, meta.get("labels"), path)})
        bad = [i for i in active if not 0 <= i < dictionary.k]
        if bad:
            raise VlmsteerError(f"{path}: concept {bad[0]} out of range (the dictionary has {dictionary.k}: "
                                f"0..{dictionary.k - 1})", "concept")
        if not active:
            raise VlmsteerError("name at least one active concept", "concept")
        return cls(dictionary, [int(i) for i in active], meta.get("layer"), meta.get("labels"), str(path),
                   meta.get("model"))


def concept_indices(concept: int | str, labels: Sequence[str] | None, source) -> list[int]:
    """The concept an index names, or every concept whose top word is ``concept`` through
    ``labels`` (``"k:word"``, as ``vlmsteer concepts`` labels a dictionary); none is a one-line
    error naming the words there are."""
    text = str(concept).strip()
    if text.lstrip("-").isdigit():
        return [int(text)]
    words = {k: label.split(":", 1)[-1] for k, label in enumerate(labels or [])}
    found = [k for k, w in words.items() if w == text]
    if found:
        return found
    if not labels:
        raise VlmsteerError(f"{source}: concept {text!r}: this dictionary has no word labels (made with --no-words); "
                            "name concepts by index", "concept")
    raise VlmsteerError(f"{source}: no concept has the top word {text!r} (they have: "
                        f"{', '.join(sorted(set(words.values())))})", "concept")


def condition_from_store(store: FeatureStore, layer: int, active: Filter | str,
                         min_count: int = 5) -> NearestConceptCondition:
    """One concept per value of the active filter's field (groups of at least ``min_count``
    samples of ``store``, centroid = their mean feature at ``layer``); steer where the
    nearest is one of the values the filter names (``"answer=yes"``, ``"answer=1|2"``)."""
    active = Filter.parse(active) if isinstance(active, str) else active
    cond = active.conditions[0] if len(active.conditions) == 1 else None
    if cond is None or cond.op.value != "=":
        raise VlmsteerError(f"the active concepts are named as field=value (e.g. answer=yes), got {active}", "active")
    if layer not in store.layers:
        raise VlmsteerError(f"{store.path}: no features of layer {layer}, where steering starts (has {store.layers})")
    return NearestConceptCondition.from_store(store, layer, field=cond.field, active_values=list(cond.values),
                                              min_count=min_count)


@dataclass(frozen=True)
class ConditionSpec:
    """Where a fine-grained condition comes from, as a value the CLI parses and runners
    build at their steering layer: a concept dictionary and its active concepts
    (``dictionary`` + ``concepts``), or a store whose labelled groups are the concepts
    (``store`` + ``active``, e.g. ``answer=yes``). A store's condition reads ``layer`` where one
    is given (at or before the steering layer: where the concepts are told apart best), a
    dictionary's the layer it was learnt at."""

    dictionary: str | None = None
    concepts: tuple[int | str, ...] = ()  # indices, or top words of the dictionary's labels
    store: str | None = None
    active: str | None = None
    allow_partial: bool = False
    layer: int | None = None

    def __post_init__(self):
        if (self.dictionary is None) == (self.store is None):
            raise VlmsteerError("a condition comes from a concept dictionary or from a store: give exactly one",
                                "dictionary")
        if self.dictionary is not None and not self.concepts:
            raise VlmsteerError("a dictionary condition needs its active concept(s)", "concept")
        if self.store is not None and not self.active:
            raise VlmsteerError("a store condition needs its active group (e.g. answer=yes)", "active")
        if self.store is not None:
            Filter.parse(self.active)  # a malformed filter fails before any model work
        if self.layer is not None and self.dictionary is not None:
            raise VlmsteerError("a dictionary condition reads the layer its dictionary was learnt at: "
                                "--condition-layer is for --condition-store", "condition_layer")

    def build(self, layer: int):
        """The condition of steering that starts at ``layer``: it reads ``self.layer`` if given,
        else ``layer`` (a dictionary's, the layer it was learnt at)."""
        if self.dictionary is not None:
            return DictionaryCondition.load(self.dictionary, self.concepts)
        store = FeatureStore.open(self.store, allow_partial=self.allow_partial)
        return condition_from_store(store, layer if self.layer is None else self.layer, self.active)
