"""Concept dictionaries (one contract for every method, one registry of methods: see
:mod:`vlmsteer.concepts.methods`), grounding in words and images, T-Overlap and similarity.

The names below load their modules on first use, so that importing one submodule (a command's
registry) does not import every dictionary's dependencies."""

from vlmsteer import lazy_exports

_API = {
    "ConceptDictionary": "vlmsteer.concepts.dictionary", "KMeansConcepts": "vlmsteer.concepts.kmeans_concepts",
    "PCAConcepts": "vlmsteer.concepts.pca", "SemiNMFConcepts": "vlmsteer.concepts.nmf",
    "NMFConcepts": "vlmsteer.concepts.nmf", "CONCEPT_METHODS": "vlmsteer.concepts.methods",
    "make_dictionary": "vlmsteer.concepts.methods", "load_dictionary": "vlmsteer.concepts.methods",
    "ground_text": "vlmsteer.concepts.grounding", "ground_images": "vlmsteer.concepts.grounding",
    "t_overlap": "vlmsteer.concepts.grounding", "mean_pairwise_overlap": "vlmsteer.concepts.grounding",
}

__all__ = list(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API, __all__)
