"""Concept dictionaries (one contract for every method, one registry of methods: see
:mod:`vlmsteer.concepts.methods`), grounding in words and images, T-Overlap and similarity."""

from vlmsteer.concepts.dictionary import ConceptDictionary
from vlmsteer.concepts.grounding import ground_images, ground_text, mean_pairwise_overlap, t_overlap
from vlmsteer.concepts.kmeans_concepts import KMeansConcepts
from vlmsteer.concepts.methods import CONCEPT_METHODS, load_dictionary, make_dictionary
from vlmsteer.concepts.nmf import NMFConcepts, SemiNMFConcepts
from vlmsteer.concepts.pca import PCAConcepts

__all__ = ["ConceptDictionary", "KMeansConcepts", "PCAConcepts", "SemiNMFConcepts", "NMFConcepts", "CONCEPT_METHODS",
           "make_dictionary", "load_dictionary", "ground_text", "ground_images", "t_overlap",
           "mean_pairwise_overlap"]
