"""Per-concept fine-grained neutralization, as in the paper: one vector per attribute concept.

From the model's captions of build images (its own caption, and a neutral one of the same
image), K-Means finds ``k_attribute`` concepts among the mean-over-generated-token features of
the captions that express the attribute and ``k_neutral`` among the neutral captions. Each
attribute concept ``i`` gets ``u_j − u_i``, towards its nearest neutral concept ``j``.

At inference a caption can only be routed by what exists before it is written: its feature
at the steering layer at the last prompt position (what every vlmsteer condition reads). Each
attribute concept therefore also has the mean last-prompt feature of the build images whose
caption fell in it, and the images whose caption did not express the attribute form one more,
"neutral", group. A held-out image is steered with concept ``i``'s vector when its last-prompt
feature is nearest to group ``i``'s; an image nearest to the neutral group is not steered.
Routing happens before generation (the prompt pass is never steered on the generated region,
so this equals a per-row condition inside generation), and every group is generated in one
run with its own vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlmsteer.concepts.kmeans_concepts import KMeansConcepts
from vlmsteer.data.keywords import KeywordSet
from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError
from vlmsteer.model import VLM
from vlmsteer.positions import Region
from vlmsteer.runs.captions import run_captions
from vlmsteer.runs.experiments import GenerationSettings, generated_store, last_prompt_features
from vlmsteer.steer import Steering
from vlmsteer.steer.vector import SteeringVector


@dataclass
class ConceptRoutes:
    """Last-prompt centroids at ``layer``; ``vectors[c]`` is the vector of group ``c`` (None:
    not steered)."""

    centroids: torch.Tensor  # (groups, hidden)
    vectors: list[SteeringVector | None]
    labels: list[str]
    layer: int

    def route(self, vlm: VLM, samples: list[Sample], out: Path, g: GenerationSettings) -> np.ndarray:
        """The group of each sample: its nearest last-prompt centroid."""
        feats = last_prompt_features(vlm, samples, out, self.layer, g)
        return torch.cdist(torch.from_numpy(feats), self.centroids.double()).argmin(1).numpy()


def per_concept_routes(vlm: VLM, build: list[Sample], attribute: KeywordSet, neutral_prompt: str, layer: int,
                       out: Path, g: GenerationSettings, k_attribute: int = 6, k_neutral: int = 6,
                       seed: int = 0, paired: bool = False) -> ConceptRoutes:
    """The paper's per-concept vectors ``u_j − u_i`` (see the module docstring) and the
    last-prompt groups that route held-out images to them. ``paired``: instead of the nearest
    neutral concept, concept ``i``'s target is the mean of the neutral captions of the same
    images (what differs between images cancels, as in the coarse paired vector)."""
    samples = [Sample(f"{s.id}|{kind}", s.image, prompt, captions=s.captions, meta={"kind": kind, "image": s.id})
               for s in build for kind, prompt in (("own", s.prompt), ("neutral", neutral_prompt))]
    # the same samples and folder as experiments.paired_neutral_vector: a run that built the paired
    # vector already holds these captions, and this resumes its finished store
    store = generated_store(vlm, samples, out / f"features-{attribute.name}-paired", [layer], "mean_response", g)
    records = store.records
    own = [i for i, r in enumerate(records) if r["meta"]["kind"] == "own"]
    with_attr = [i for i in own if attribute.matches(records[i]["response"])]
    plain_own = [i for i in own if not attribute.matches(records[i]["response"])]
    neutral = [i for i, r in enumerate(records) if r["meta"]["kind"] == "neutral"
               and not attribute.matches(r["response"])]
    for what, rows, k in (("express the attribute", with_attr, k_attribute), ("are neutral", neutral, k_neutral)):
        if len(rows) < k:
            raise VlmsteerError(f"only {len(rows)} build captions {what}: too few for {k} concepts")
    if not plain_own:
        raise VlmsteerError(f"every build caption has {attribute.name} words: no neutral group to route to")
    feats = store.features(layer, only_found=False, dtype=np.float64)
    attr_dict = KMeansConcepts(k_attribute, seed=seed).fit(feats[with_attr])
    neutral_dict = KMeansConcepts(k_neutral, seed=seed).fit(feats[neutral])
    u, w = attr_dict.components_, neutral_dict.components_
    nearest = np.argmin(((u[:, None] - w[None]) ** 2).sum(-1), axis=1)
    members, neutral_members = attr_dict.labels_, neutral_dict.labels_
    prompt_feats = last_prompt_features(vlm, [samples[i] for i in own], out / f"features-{attribute.name}-own-prompts",
                                        layer, g)
    row_of = {i: n for n, i in enumerate(own)}
    centroids, vectors, labels = [prompt_feats[[row_of[i] for i in plain_own]].mean(0)], [None], ["neutral"]
    for c in range(k_attribute):
        rows = [row_of[i] for i, m in zip(with_attr, members) if m == c]
        if not rows:
            continue
        if paired:
            images = {records[i]["meta"]["image"] for i, m in zip(with_attr, members) if m == c}
            partners = [i for i in neutral if records[i]["meta"]["image"] in images]
            if not partners:
                continue
            target, name, n_target = feats[partners].mean(0), f"neutral captions of its {len(partners)} images", len(partners)
        else:
            j = int(nearest[c])
            target, name, n_target = w[j], f"neutral concept {j}", int((neutral_members == j).sum())
        vectors.append(SteeringVector({layer: torch.tensor(target - u[c], dtype=torch.float32)}, model_id=vlm.model_id,
                                      method="concept-pair", source=f"{attribute.name} concept {c}", target=name,
                                      n_source=len(rows), n_target=n_target))
        centroids.append(prompt_feats[rows].mean(0))
        labels.append(f"{attribute.name} concept {c} -> {name}")
    return ConceptRoutes(torch.tensor(np.stack(centroids)), vectors, labels, layer)


def routed_captions(vlm: VLM, held: list[Sample], base_captions: list[str], routes: ConceptRoutes,
                    groups: np.ndarray, alpha: float, g: GenerationSettings) -> list[str]:
    """Held-out captions with each routed group steered by its own vector on the generated
    tokens; the others keep their baseline caption (an unsteered run is the baseline)."""
    captions = list(base_captions)
    for c, vector in enumerate(routes.vectors):
        rows = np.nonzero(groups == c)[0]
        if vector is None or not len(rows):
            continue
        steered = run_captions(vlm, [held[i] for i in rows], batch_size=g.batch_size,
                               max_new_tokens=g.max_new_tokens, progress=g.progress,
                               steering=Steering(vector, alpha, region=Region.GENERATED))
        for i, caption in zip(rows, steered):
            captions[i] = caption
    return captions
