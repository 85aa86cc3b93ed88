"""``vlmsteer concepts``: fit a dictionary on a store, ground it, and write JSON, a PCA plot
and an HTML report (one card per concept: words + most activating images)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from vlmsteer.report.plots import pca_plot
from vlmsteer.concepts.methods import CONCEPT_METHODS, make_dictionary
from vlmsteer.mapped import Rows
from vlmsteer.concepts.quality import dictionary_quality, held_out_split
from vlmsteer.concepts.sae import SparseAutoencoder
from vlmsteer.concepts.scan import scan_rows
from vlmsteer.concepts.grounding import ground_images, ground_text, mean_pairwise_overlap
from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.splice_cost import splice_cost
from vlmsteer.report import image_data_uri, render
from vlmsteer.outputs import atomic_write_json, atomic_write_text, make_folder
from vlmsteer.store import FeatureStore


@dataclass
class ConceptRun:
    method: str = "kmeans"
    k: int = 20
    layer: int = -1
    seed: int = 0
    top_words: int = 15
    top_images: int = 8
    backend: str = "auto"  # K-Means only: auto, sklearn or torch (see KMeansConcepts)
    device: str = "cpu"  # K-Means torch backend, SAE training
    held_out: float = 0.1  # rows kept out of the fit, on which FVU / L0 / dead / dense are measured
    l0: int = 32  # SAEs: active latents per row (TopK's k; the target of the others)
    epochs: int | None = None  # SAEs: passes over the rows (None: enough for ~1000 steps)
    batch_size: int = 1024  # SAEs
    lr: float | None = None  # SAEs (None: 2e-4 / sqrt(latents / 16384))
    train_dtype: str = "float32"  # SAEs: float32 or bfloat16 for the dense product
    report_concepts: int = 64  # concept cards in report.html (the most used first; all in concepts.json)
    progress: bool = False
    saelens: bool = False  # SAEs: also an SAELens folder (out/saelens)
    splice_samples: int = 100  # responses re-read for the splice cost (needs the whole model)

    def options(self, checkpoint: Path) -> dict:
        """The settings the method takes (its ``FIT_OPTIONS``), for :func:`make_dictionary`."""
        offered = {"l0": self.l0, "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                   "dtype": self.train_dtype, "device": self.device, "checkpoint": checkpoint,
                   "progress": self.progress, "backend": self.backend}
        takes = CONCEPT_METHODS.get(self.method).FIT_OPTIONS
        return {name: value for name, value in offered.items() if name in takes}


def run_concepts(store: FeatureStore, out: str | Path, cfg: ConceptRun, vlm=None, model=None) -> dict:
    """Fit, ground and report; ``vlm`` (for word grounding) may be None to skip words; with the
    whole ``model`` (the store's), the splice cost ("loss recovered") of ``cfg.splice_samples``
    of the store's responses."""
    out = Path(out)
    layer = store.layer_index(cfg.layer)
    idx = store.select()
    if len(idx) == 0:
        raise VlmsteerError(f"{store.path}: no samples with the selected token")
    feats = store.features(layer, indices=idx, dtype=None)  # float16 stores stay float16
    train, held = held_out_split(len(idx), cfg.held_out, cfg.seed)
    make_folder(out)
    dictionary = make_dictionary(cfg.method, cfg.k, seed=cfg.seed, **cfg.options(out / "checkpoint.safetensors"))
    dictionary.fit(Rows(feats, train) if len(held) else feats)
    quality = dictionary_quality(dictionary, feats, held if len(held) else train)
    scan = scan_rows(dictionary, feats, cfg.top_images)  # one encoding pass: assignments, sizes, top images
    assign, sizes = scan.assign, scan.sizes
    words = ground_text(vlm, dictionary, top_n=cfg.top_words) if vlm is not None else None
    # each concept's label ("3:red": index and top word) travels with the dictionary, so
    # vectors built from it name their source and target
    labels = [f"{k}:{(words[k].words or ['?'])[0]}" for k in range(cfg.k)] if words else None
    dictionary.save(out / "dictionary.safetensors", layer=layer, store=str(store.path.resolve()),
                    store_fingerprint=store.fingerprint, model_id=store.header.get("model_id"),
                    model=store.header.get("model"), labels=labels)
    if cfg.saelens:
        from vlmsteer.concepts.saelens import save_saelens

        save_saelens(dictionary, out / "saelens", layer=layer, model_id=store.header.get("model_id"))
    images = ground_images(dictionary, store, layer, top_n=cfg.top_images, indices=idx, scan=scan)
    splice = splice_cost(model, store, dictionary, layer, cfg.splice_samples, cfg.seed,
                         progress=cfg.progress).to_dict() if model is not None and cfg.splice_samples else None
    concepts = []
    for k in range(cfg.k):
        concepts.append({
            "index": k,
            "size": int(sizes[k]),
            "words": words[k].words if words else [],
            "logits": words[k].logits if words else [],
            "top_samples": [{"id": r["id"], "activation": r["activation"], "response": r.get("response"),
                             "image": r.get("image"), "image_digest": r.get("image_digest"),
                             "prompt": r.get("prompt")} for r in images[k].samples],
        })
    result = {"method": dictionary.method, "k": cfg.k, "layer": layer, "seed": cfg.seed, "n_samples": int(len(idx)),
              "params": dictionary.params(), "n_train": int(len(train)),
              "quality": {**quality.to_dict(), "rows": "held-out" if len(held) else "fitted"}, "splice": splice,
              "training": getattr(dictionary, "history_", None),
              "store": str(store.path), "model_id": store.header.get("model_id"),
              "selector": store.header.get("selector_description"),
              "mean_pairwise_t_overlap": mean_pairwise_overlap(words) if words else None, "concepts": concepts}
    atomic_write_json(out / "concepts.json", result, durable=False, indent=2)
    names = {k: (words[k].words or ["?"])[0] for k in range(cfg.k)} if words else None
    pca_plot(feats, assign, out / "pca.png", f"{len(idx)} samples by {cfg.method} concept, layer {layer}", names)
    shown = sorted(concepts, key=lambda c: -c["size"])[:cfg.report_concepts] \
        if isinstance(dictionary, SparseAutoencoder) else concepts
    cards = [{**c, "samples": [{**s, "img": image_data_uri(s["image"], digest=s["image_digest"])}
                               for s in c["top_samples"]]} for c in shown]
    atomic_write_text(out / "report.html", render("concepts.html.j2", r=result, cards=cards))
    return result
