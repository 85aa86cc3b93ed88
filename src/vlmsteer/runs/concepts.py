"""``vlmsteer concepts``: fit a concept dictionary on a store, ground it in words and images,
measure its quality and splice cost, and publish the folder (``concepts.json``,
``dictionary.safetensors``, optionally an SAELens folder, ``report.html``, ``pca.png``,
``run.json``). :func:`concepts` is the command itself, callable from Python."""

from __future__ import annotations

import inspect

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from vlmsteer.concepts.grounding import ground_images, ground_text, mean_pairwise_overlap
from vlmsteer.concepts.methods import CONCEPT_METHODS, make_dictionary
from vlmsteer.concepts.quality import dictionary_quality, held_out_split
from vlmsteer.concepts.scan import scan_rows
from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.splice_cost import splice_cost, usable_records
from vlmsteer.mapped import Rows
from vlmsteer.outputs import atomic_write_json, make_folder
from vlmsteer.report.concepts import write_concepts_report
from vlmsteer.runs.models import grounding_identity, load_head, load_model, open_store, store_adapter
from vlmsteer.runs.protocol import RunSpec, claim, publish, run_identity, write_run_json
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
    sizes = scan.sizes
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
    write_concepts_report(out, result, feats, scan.assign, method=cfg.method,
                          names={k: (words[k].words or ["?"])[0] for k in range(cfg.k)} if words else None,
                          shown=cfg.report_concepts if dictionary.family == "sae" else None)
    return result


def _method_options() -> set[str]:
    return {o for entry in CONCEPT_METHODS for o in entry.options}


def concepts(store: str | Path, out: str | Path, *, method: str = "kmeans", k: int = 20, latents: Optional[int] = None,
             l0: int = 32, epochs: Optional[int] = None, batch_size: int = 1024, lr: Optional[float] = None,
             train_dtype: str = "float32", held_out: float = 0.1, saelens: bool = False, report_concepts: int = 64,
             layer: Optional[int] = None, model: Optional[str] = None, no_words: bool = False,
             splice_samples: int = 100, top_words: int = 15, top_images: int = 8, seed: int = 0,
             backend: str = "auto", dtype: str = "auto", device: str = "cpu", device_map: Optional[str] = None,
             allow_partial: bool = False, overwrite: bool = False, progress: bool = True,
             note: Callable[[str], None] | None = None) -> dict:
    """``vlmsteer concepts`` from Python: the same options (by the same names and defaults), the
    same published folder and ``run.json`` (identity and fingerprint included), the same refusal
    of a rerun with other settings unless ``overwrite``. Returns the ``concepts.json`` record;
    ``note`` receives the lines the CLI prints on stderr (a skipped splice cost)."""
    spec = RunSpec.of_call("vlmsteer concepts", {k: v for k, v in locals().items() if k not in ("progress", "note")},
                           paths=("store", "out"))
    family = CONCEPT_METHODS.get(method).family
    sae = family == "sae"
    if family == "paired":
        raise VlmsteerError(f"{method} learns from two models' paired features: use vlmsteer diff --method crosscoder")
    # an option of another method, set away from its default, is refused, never ignored
    defaults = {name: p.default for name, p in inspect.signature(concepts).parameters.items()}
    chosen = {name: value for name, value in spec.options.items() if name in defaults}
    CONCEPT_METHODS.check_options(method, {name: chosen[name] if chosen[name] != defaults[name] else None
                                           for name in _method_options() if name in chosen}, shared=("seed", "device"))
    n = (latents or 1024) if sae else k
    with publish(Path(out), overwrite, resumable=("checkpoint.safetensors",)) as pub:
        st = open_store(Path(store), allow_partial)
        absolute = st.layer_index(layer) if layer is not None else max(st.layers)
        records, why = usable_records(st)
        splice = splice_samples > 0 and not no_words and bool(records)
        if splice_samples > 0 and not no_words and not records and note is not None:
            note(f"splice cost skipped: {why}")
        name = model or st.header["model_id"]
        vlm = None if no_words else (load_model(name, store_adapter(st), dtype, device, device_map) if splice
                                     else load_head(name, dtype, device, device_map))
        claim(pub, run_identity(spec, store=st.fingerprint, grounding=grounding_identity(vlm, st)))
        result = run_concepts(st, pub.stage, ConceptRun(
            method=method, k=n, layer=absolute, seed=seed, top_words=top_words, top_images=top_images,
            backend=backend, device=device, held_out=held_out, l0=l0, epochs=epochs, batch_size=batch_size, lr=lr,
            train_dtype=train_dtype, report_concepts=report_concepts, progress=progress, saelens=saelens,
            splice_samples=splice_samples), vlm=vlm, model=vlm if splice else None)
        write_run_json(pub, spec, model_id=st.header.get("model_id"))
    return result
