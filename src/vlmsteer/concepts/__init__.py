"""Concept dictionaries (one contract for every method), grounding in words and images,
T-Overlap and similarity."""

from vlmsteer.concepts.dictionary import (ConceptDictionary, KMeansConcepts, PCAConcepts, load_dictionary,
                                          make_dictionary)
from vlmsteer.concepts.nmf import NMFConcepts, SemiNMFConcepts
from vlmsteer.concepts.grounding import ground_images, ground_text, mean_pairwise_overlap, t_overlap

__all__ = ["ConceptDictionary", "KMeansConcepts", "PCAConcepts", "SemiNMFConcepts", "NMFConcepts",
           "make_dictionary", "load_dictionary", "ground_text", "ground_images", "t_overlap",
           "mean_pairwise_overlap"]
