"""Conditions for fine-grained steering: steer a sample only where a concept is active.

A condition maps features at the steering layer (last prompt position, before steering) to
a per-sample yes/no. :class:`NearestConceptCondition` assigns each feature to its nearest
concept (a centroid: a K-Means concept, or the mean feature of a group of samples) and
steers the samples assigned to one of the ``active`` concepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from vlmsteer.errors import VlmsteerError
from vlmsteer.data.filters import Filter, normalized, record_value
from vlmsteer.store import FeatureStore


@dataclass
class NearestConceptCondition:
    centroids: torch.Tensor  # (K, hidden)
    active: list[int]
    labels: list[str] | None = None

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        c = self.centroids.to(device=features.device, dtype=torch.float32)
        nearest = torch.cdist(features.float(), c).argmin(dim=1)
        return torch.isin(nearest, torch.tensor(self.active, device=features.device))

    def describe(self) -> dict:
        names = self.labels or [str(k) for k in range(len(self.centroids))]
        return {"kind": "nearest_concept", "concepts": names, "active": [names[k] for k in self.active]}

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
        return cls(torch.tensor(np.stack(cents), dtype=torch.float32), [labels.index(v) for v in active], labels)
