"""vlmsteer: concept-level analysis and training-free steering of multimodal LLMs.

The public API (imported on first use, so ``import vlmsteer`` stays light)::

    from vlmsteer import VLM, extract, ExtractConfig, FeatureStore, Filter
    from vlmsteer import KMeansConcepts, coarse_vector, concept_shift, Steering, steer

    vlm = VLM.load("shapes-llava")
    store, _ = extract(vlm, samples, "runs/store", ExtractConfig(layers=[-1]))
    vec = coarse_vector(store, "answer=yes", target="answer=no")
    with steer(vlm, vec, batch, alpha=1.0, region="last_prompt"):
        vlm.generate(batch)

Messages go through :mod:`logging` (logger ``"vlmsteer"``); progress bars appear only where
a caller asks for them (``progress=True``, which the CLI does).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "VLM": "vlmsteer.model", "Batch": "vlmsteer.model", "load_head": "vlmsteer.head",
    "Region": "vlmsteer.positions", "Selector": "vlmsteer.positions",
    "ExtractConfig": "vlmsteer.extract", "extract": "vlmsteer.extract",
    "FeatureStore": "vlmsteer.store",
    "Sample": "vlmsteer.data", "load_samples": "vlmsteer.data",
    "Filter": "vlmsteer.data.filters", "Condition": "vlmsteer.data.filters",
    "ConceptDictionary": "vlmsteer.concepts", "KMeansConcepts": "vlmsteer.concepts",
    "PCAConcepts": "vlmsteer.concepts", "SemiNMFConcepts": "vlmsteer.concepts", "NMFConcepts": "vlmsteer.concepts",
    "make_dictionary": "vlmsteer.concepts", "load_dictionary": "vlmsteer.concepts",
    "ground_text": "vlmsteer.concepts", "ground_images": "vlmsteer.concepts",
    "SteeringVector": "vlmsteer.steer.vector", "load_vector": "vlmsteer.steer.vector",
    "Steering": "vlmsteer.steer.steerer", "steer": "vlmsteer.steer.steerer",
    "coarse_vector": "vlmsteer.steer.builders", "concept_shift": "vlmsteer.steer.builders",
    "NearestConceptCondition": "vlmsteer.steer.conditions",
    "VlmsteerError": "vlmsteer.errors",
}

__all__ = ["__version__", *_API]


def lazy_exports(package: str, api: dict[str, str], listed: list[str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (``listed``: its ``__all__``) for names
    (``api``: name -> module defining it) imported on first use, so that importing the package
    stays light."""

    def getattr_(name: str) -> Any:
        if name not in api:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(api[name]), name)

    def dir_() -> list[str]:
        return sorted(listed)

    return getattr_, dir_


__getattr__, __dir__ = lazy_exports(__name__, _API, __all__)
