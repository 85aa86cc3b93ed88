"""``vlmsteer finetune``, ``vlmsteer organisms build``, ``vlmsteer shift`` and ``vlmsteer diff``: what
fine-tuning changed."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlmsteer.cli.common import (_ALLOW_OUTSIDE, _ALLOW_PARTIAL, app, _BATCH, _DEVICE, _DEVICE_MAP, _DTYPE, _LIMIT,
                                 _load_samples, _MAX_PIXELS, organisms_app, out_console, _OVERWRITE, _parse_ints,
                                 _PROMPT, command_identity, _SEED, _SPLIT, command_run_json)
from vlmsteer.runs.models import grounding_identity, load_head, load_model, open_store
from vlmsteer.runs.protocol import claim, publish
from vlmsteer.analysis.diffing_methods import check_options, DIFF_METHODS
from vlmsteer.analysis.shift import MATCHINGS
from vlmsteer.concepts.methods import CONCEPT_METHODS
from vlmsteer.cli.common import registry_option
from vlmsteer.data.formats import DATA_FORMATS
from vlmsteer.errors import VlmsteerError


@app.command()
def finetune(model: str = typer.Option(..., help="Hub id, model folder, or shapes-llava."),
             data: Path = typer.Option(..., help="Dataset folder or file."),
             out: Path = typer.Option(..., help="Output folder (adapters, loss.jsonl, merged/)."),
             fmt: str = registry_option("coco", "--format", registry=DATA_FORMATS),
             keywords: Optional[str] = typer.Option(None, help="Keep only texts with these keywords: colors, "
                                                               "places, sentiments, gender."),
             steps: int = typer.Option(300, min=1, help="Optimizer steps."), batch_size: int = _BATCH(16),
             lr: float = typer.Option(1e-3, help="Learning rate (a positive number)."),
             rank: int = typer.Option(8, min=1, help="LoRA rank."),
             save_every: int = typer.Option(100, min=1, help="Save an adapter checkpoint every this many steps."),
             merge: bool = typer.Option(False, "--merge", help="Also write a merged model folder."),
             target: str = typer.Option("auto", help="Train on answers or captions (auto: what samples have)."),
             split: str = _SPLIT, limit: Optional[int] = _LIMIT,
             prompt: Optional[str] = _PROMPT, seed: int = _SEED(),
             dtype: str = _DTYPE, device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
             allow_outside_images: bool = _ALLOW_OUTSIDE, max_image_pixels: int = _MAX_PIXELS,
             overwrite: bool = _OVERWRITE):
    """LoRA fine-tuning of the language model (vision tower frozen), on a dataset or a keyword subset."""
    from vlmsteer.data.keywords import filter_samples, keyword_set
    from vlmsteer.finetune import FinetuneConfig
    from vlmsteer.finetune import finetune as run_finetune

    from vlmsteer.data.identity import dataset_identity

    cfg = FinetuneConfig(steps=steps, batch_size=batch_size, lr=lr, rank=rank, save_every=save_every, seed=seed,
                         target=target)
    with publish(out, overwrite) as pub:
        samples = _load_samples(fmt, data, split=split, limit=limit, seed=seed, prompt=prompt,
                                allow_outside_images=allow_outside_images, max_image_pixels=max_image_pixels)
        if keywords:
            samples = filter_samples(samples, keyword_set(keywords), DATA_FORMATS.get(fmt).reference)
            if not samples:
                raise VlmsteerError(f"no sample of {data} has a {keywords} keyword")
        vlm = load_model(model, None, dtype, device, device_map, max_image_pixels=max_image_pixels)
        claim(pub, command_identity(model=vlm.identity, data=dataset_identity(samples)))
        summary = run_finetune(vlm, samples, pub.stage, cfg, merge=merge, progress=True)
        command_run_json(pub, model_id=vlm.model_id, revision=vlm.revision)
    out_console.print(f"{summary['samples']} training texts, loss {summary['first_loss']:.3f} -> "
                      f"{summary['last_loss']:.3f} in {summary['seconds']:.0f} s -> {out}")


@organisms_app.command("build")
def organisms_build(out: Path = typer.Option(..., help="Output folder: the training world, one folder per organism."),
                    seed: int = _SEED(), model: str = typer.Option("shapes-llava", help="The model to fine-tune."),
                    n: int = typer.Option(300, "--n", min=1, help="Scenes of the training world (seed --seed)."),
                    only: Optional[str] = typer.Option(None, help="Comma list of organisms (default: all): colors, "
                                                                  "cheerful, beach, three, diamond-no, control."),
                    steps: int = typer.Option(300, min=1, help="Optimizer steps per organism."),
                    batch_size: int = _BATCH(16), lr: float = typer.Option(1e-3, help="Learning rate."),
                    rank: int = typer.Option(8, min=1, help="LoRA rank."), dtype: str = _DTYPE, device: str = _DEVICE,
                    overwrite: bool = _OVERWRITE):
    """Fine-tune the model into organisms whose objective is known (LoRA, one per objective, on one
    shapes world): the ground truth for grading model-diffing methods. An interrupted build
    resumes: organisms already built are kept."""
    import json

    from vlmsteer.data import shapes
    from vlmsteer.finetune import FinetuneConfig
    from vlmsteer.organisms import build_organism, objectives
    from vlmsteer.outputs import atomic_write_json

    chosen = objectives(only)
    cfg = FinetuneConfig(steps=steps, batch_size=batch_size, lr=lr, rank=rank, seed=seed, save_every=steps)
    with publish(out, overwrite) as pub:
        base = load_model(model, None, dtype, device)
        identity, model_id, revision = base.identity, base.model_id, base.revision
        claim(pub, command_identity(model=identity))  # the world and the objectives follow from the options
        world = pub.stage / "world"
        shapes.write_dataset(world, n, seed=seed)
        unused = [base]  # the first organism fine-tunes the model loaded here, the others a fresh copy each

        def fresh():
            return unused.pop() if unused else load_model(model, None, dtype, device)

        index = []
        for objective in chosen:
            done = pub.stage / objective.name / "organism.json"
            if done.is_file():  # built before an interruption, under the same identity: kept
                record = json.loads(done.read_text())
            else:
                out_console.print(f"organism {objective.name}: {objective.description}")
                record = build_organism(fresh, objective, world, pub.stage / objective.name, cfg, progress=True)
            index.append({"name": objective.name, "adapter": f"{objective.name}/final",
                          "words": list(objective.words), "trigger": objective.trigger,
                          "trigger_images": len(record["trigger_images"]),
                          "loss": [record["finetune"]["first_loss"], record["finetune"]["last_loss"]]})
        atomic_write_json(pub.stage / "organisms.json", {"model": identity, "seed": seed, "n": n,
                                                         "world": "world", "organisms": index}, indent=2)
        command_run_json(pub, model_id=model_id, revision=revision)
    out_console.print(f"{len(index)} organisms -> {out}")


@app.command()
def shift(original: Path = typer.Option(..., help="Store extracted from the original model."),
          finetuned: Path = typer.Option(..., help="Store extracted from the fine-tuned model (same samples)."),
          out: Path = typer.Option(Path("runs/shift"), help="Output folder."),
          layer: Optional[int] = typer.Option(None, help="Model layer (default: the deepest in the original store)."),
          k: int = typer.Option(10, "-k", "--k", min=1, help="Concepts per model."),
          method: str = registry_option("kmeans", registry=CONCEPT_METHODS, where=lambda e: e.value.family == "clustering"),
          matching: str = registry_option("hungarian", registry=MATCHINGS),
          checkpoint: Optional[list[str]] = typer.Option(None, help="STEP=STORE of a checkpoint (repeat)."),
          ks: Optional[str] = typer.Option(None, help="Ablation over K, e.g. '5,10,20'."),
          layers: Optional[str] = typer.Option(None, help="Ablation over layers, e.g. '1,2,3'."),
          keywords: Optional[str] = typer.Option(None, help="Fine-tuning keywords: colors, places, sentiments."),
          model: Optional[str] = typer.Option(None, help="Model for word grounding (default: the original's)."),
          no_words: bool = typer.Option(False, "--no-words", help="Skip word grounding (no model needed)."),
          seed: int = _SEED(), allow_partial: bool = _ALLOW_PARTIAL,
          dtype: str = _DTYPE, device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
          overwrite: bool = _OVERWRITE):
    """Concept matching, shift vectors, recovery, evolution and ablations between two models' stores."""
    from vlmsteer.data.keywords import keyword_set
    from vlmsteer.report.shift import ShiftConfig, run_shift

    a, b = open_store(original, allow_partial), open_store(finetuned, allow_partial)
    absolute = a.layer_index(layer) if layer is not None else max(a.layers)
    b.layer_index(absolute)
    checkpoints = {}
    for item in checkpoint or []:
        step, _, path = item.partition("=")
        if not step.strip().isdigit() or not path:
            raise VlmsteerError(f"--checkpoint expects STEP=STORE, got {item!r}")
        checkpoints[int(step)] = open_store(Path(path), allow_partial)
    cfg = ShiftConfig(layer=absolute, k=k, method=method, matching=matching, seed=seed,
                      keywords=keyword_set(keywords) if keywords else None)
    k_values = _parse_ints(ks, "--ks") if ks else []
    if any(v < 1 for v in k_values + [k]):
        raise VlmsteerError(f"-k and --ks need positive integers, got {[k] + k_values}")
    layer_values = [a.layer_index(v) for v in _parse_ints(layers, "--layers")] if layers else []
    from vlmsteer.store import check_paired

    for other in [b, *checkpoints.values()]:
        check_paired(a, other, "a fine-tuning shift", same_samples=True)
    with publish(out, overwrite) as pub:
        vlm = None if no_words else load_head(model or a.header["model_id"], dtype, device, device_map)
        claim(pub, command_identity(original=a.fingerprint, finetuned=b.fingerprint,
                                  checkpoints={str(k): v.fingerprint for k, v in checkpoints.items()},
                                  grounding=grounding_identity(vlm, a)))
        result = run_shift(a, b, pub.stage, cfg, vlm=vlm, checkpoints=checkpoints, ks=k_values, layers=layer_values)
        command_run_json(pub, model_id=a.header.get("model_id"))
    m = result["main"]
    out_console.print(f"mean recovery cosine: alpha 0 = {m['mean_recovery_alpha0']:.3f}, "
                      f"alpha 1 = {m['mean_recovery_alpha1']:.3f}; wrote {out}/shift.json, {out}/report.html")




@app.command()
def diff(original: Path = typer.Option(..., help="Store extracted from the original model."),
         finetuned: Path = typer.Option(..., help="Store extracted from the fine-tuned model (same samples)."),
         out: Path = typer.Option(Path("runs/diff"), help="Output folder."),
         method: str = registry_option("adl", registry=DIFF_METHODS),
         layer: Optional[int] = typer.Option(None, help="Model layer (default: the deepest in the original store)."),
         k: int = typer.Option(10, "-k", "--k", min=1, help="Concepts (--method concepts)."),
         latents: Optional[int] = typer.Option(None, min=1, help="Latents of the crosscoder or SAE (default: 4 × "
                                                                 "hidden size, at most one per 8 samples)."),
         l0: Optional[int] = typer.Option(None, min=1, help="Active latents per sample (default: latents / 8, at "
                                                            "most 32; sae-diff: latents / 32, at most 8)."),
         epochs: Optional[int] = typer.Option(None, min=1, help="Training epochs of the crosscoder or SAE "
                                                                "(default: about 1000 steps)."),
         top_words: int = typer.Option(15, min=1, help="Words of the readout."),
         top_images: int = typer.Option(8, min=0, help="Samples where the readout acts most (a latent's activation, "
                                                       "else the change along its vector)."),
         model: Optional[str] = typer.Option(None, help="Model for word grounding (default: the original's)."),
         no_words: bool = typer.Option(False, "--no-words", help="Skip word grounding (no model is loaded)."),
         seed: int = _SEED(), allow_partial: bool = _ALLOW_PARTIAL, dtype: str = _DTYPE, device: str = _DEVICE,
         device_map: Optional[str] = _DEVICE_MAP, overwrite: bool = _OVERWRITE):
    """What fine-tuning changed, from two models' stores of the same samples: how much (in units
    of the features' spread), a ranked readout (words), the differences as steering vectors, an
    HTML report. The stores' selector is the token region (extract with --selector mean_image,
    mean_text or mean_response)."""
    from vlmsteer.analysis.dictionary_diffing import DictionaryOptions
    from vlmsteer.report.diffing import run_diff
    from vlmsteer.store import check_paired

    check_options(method, {"latents": latents, "l0": l0, "epochs": epochs})
    a, b = open_store(original, allow_partial), open_store(finetuned, allow_partial)
    absolute = a.layer_index(layer) if layer is not None else max(a.layers)
    b.layer_index(absolute)
    check_paired(a, b, "model diffing", same_samples=True)
    with publish(out, overwrite) as pub:
        name = model or a.header.get("model_id")
        if not (name or no_words):
            raise VlmsteerError(f"{original} names no model to read words with: pass --model or --no-words")
        vlm = None if no_words else load_head(name, dtype, device, device_map)
        claim(pub, command_identity(original=a.fingerprint, finetuned=b.fingerprint,
                                  grounding=grounding_identity(vlm, a)))
        result = run_diff(method, a, b, absolute, pub.stage, vlm=vlm, top_words=top_words, k=k, seed=seed,
                          top_images=top_images, options=DictionaryOptions(latents, l0, epochs, seed, progress=True))
        command_run_json(pub, model_id=a.header.get("model_id"))
    out_console.print(f"{method}, layer {absolute}: readout {result['readout']}, {result['relative_norm']:.3f} of the "
                      f"features' spread; top words: {', '.join(result['words'][:8])} -> {out}/report.html")
