"""The registry of model-diffing methods (``vlmsteer diff --method``): each entry reads two
models' paired features into a ranked :class:`~vlmsteer.analysis.diffing.Readout`, says in one
line what it is, which options it takes, and how the report explains its readout.

A new method is one file: write ``def my_readout(paired, settings) -> Readout`` and call
``DIFF_METHODS.add("mine", DiffMethod(my_readout, "what the report says"), "one line",
{"k": "what -k means here"})``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from vlmsteer.analysis.dictionary_diffing import DictionaryOptions, crosscoder_readout, sae_diff_readout
from vlmsteer.analysis.diffing import Paired, Readout, adl_readout, concepts_readout
from vlmsteer.registry import Registry


@dataclass(frozen=True)
class DiffSettings:
    """What a diffing method may read besides the paired features."""

    k: int = 10  # concepts
    seed: int = 0
    dictionary: DictionaryOptions = field(default_factory=DictionaryOptions)  # latents, l0, epochs


@dataclass(frozen=True)
class DiffMethod:
    readout: Callable[[Paired, DiffSettings], Readout]
    explain: str  # the report's sentence on the readout; may name fields of the result ({relative_norm})


DIFF_METHODS: Registry[DiffMethod] = Registry("diffing method", "--method")
DICTIONARY_OPTIONS = {"latents": "latents of the dictionary", "l0": "active latents per sample",
                      "epochs": "training epochs", "seed": "random seed"}

DIFF_METHODS.add("adl", DiffMethod(
    lambda paired, s: adl_readout(paired),
    "the mean of the fine-tuned model's features minus the original's (activation difference lens)"),
    "activation difference lens: the mean difference of the two models' features")
DIFF_METHODS.add("concepts", DiffMethod(
    lambda paired, s: concepts_readout(paired, k=s.k, seed=s.seed),
    "the original model's concepts (K-Means), each with the mean shift of its samples, ranked by samples × shift"),
    "the paper's concept shift: the original's concepts and their shift vectors",
    {"k": "concepts", "seed": "random seed"})
DIFF_METHODS.add("crosscoder", DiffMethod(
    lambda paired, s: crosscoder_readout(paired, s.dictionary),
    "a BatchTopK crosscoder on both models' features side by side: the change of its decoder bias and its "
    "fine-tuned-only latents (relative decoder norm at least {finetuned_only_threshold}, latent scaling ν^ε at "
    "most {max_nu}: {kept_after_scaling} of {finetuned_only} kept), ranked by mean size over the samples"),
    "BatchTopK crosscoder: fine-tuned-only latents after latent scaling", DICTIONARY_OPTIONS)
DIFF_METHODS.add("sae-diff", DiffMethod(
    lambda paired, s: sae_diff_readout(paired, s.dictionary),
    "a BatchTopK sparse autoencoder on the differences (fine-tuned − original): its decoder bias (what every "
    "sample's change shares) and its latents, ranked by mean size over the samples"),
    "a BatchTopK SAE on the differences (fine-tuned minus original)", DICTIONARY_OPTIONS)
