"""``vlmsteer organisms build``: fine-tunes with a known objective, to grade model diffing."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vlmsteer.cli.common import (
    _BATCH,
    _DEVICE,
    _DTYPE,
    _OVERWRITE,
    _SEED,
    command_identity,
    command_run_json,
    organisms_app,
    out_console,
    resumes,
)
from vlmsteer.runs.models import load_model
from vlmsteer.runs.protocol import claim, publish


@organisms_app.command("build")
@resumes("organisms already built are kept")
def organisms_build(out: Path = typer.Option(..., help="Output folder: the training world, one folder per organism."),
                    seed: int = _SEED(), model: str = typer.Option("shapes-llava", help="The model to fine-tune."),
                    n: int = typer.Option(300, "--n", min=1, help="Scenes of the training world (seed --seed)."),
                    only: Optional[str] = typer.Option(None, help="Comma list of organisms (default: all): colors, "
                                                                  "cheerful, beach, three, diamond-no, control, "
                                                                  "hallucination."),
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
    with publish(out, overwrite, resumable=None) as pub:  # organisms already built
        base = load_model(model, None, dtype, device)
        identity, model_id, revision = base.identity, base.model_id, base.revision
        claim(pub, command_identity(model=identity))  # the world and the objectives follow from the options
        worlds = {}  # scene kind -> the training world of that kind (seed --seed, --n scenes)
        for kind in dict.fromkeys(o.scenes for o in chosen):
            worlds[kind] = pub.stage / ("world" if kind == "plain" else f"world-{kind}")
            shapes.write_dataset(worlds[kind], n, seed=seed, scenes=kind)
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
                record = build_organism(fresh, objective, worlds[objective.scenes], pub.stage / objective.name, cfg,
                                        progress=True)
            index.append({"name": objective.name, "adapter": f"{objective.name}/final",
                          "world": worlds[objective.scenes].name,
                          "words": list(objective.words), "trigger": objective.trigger,
                          "trigger_images": len(record["trigger_images"]),
                          "loss": [record["finetune"]["first_loss"], record["finetune"]["last_loss"]]})
        atomic_write_json(pub.stage / "organisms.json", {"model": identity, "seed": seed, "n": n,
                                                         "world": worlds[chosen[0].scenes].name,
                                                         "organisms": index}, indent=2)
        command_run_json(pub, model_id=model_id, revision=revision)
    out_console.print(f"{len(index)} organisms -> {out}")
