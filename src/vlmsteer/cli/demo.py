"""``vlmsteer demo`` and ``vlmsteer demo train``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from vlmsteer.cli.common import (
    _BATCH,
    _DEVICE,
    _DEVICE_MAP,
    _DTYPE,
    _OVERWRITE,
    _SEED,
    command_identity,
    command_run_json,
    demo_app,
    out_console,
)
from vlmsteer.errors import VlmsteerError
from vlmsteer.runs.models import quiet_transformers
from vlmsteer.runs.protocol import claim, publish


@demo_app.callback()
def demo(ctx: typer.Context,
         out: Path = typer.Option(Path("runs/demo"), help="Output folder for the demo page and its reports."),
         n_scenes: int = typer.Option(120, min=1, help="Held-out scenes to generate (about 9 questions and a caption "
                                                        "each)."),
         seed: int = _SEED(7, "Seed of the held-out world (the model was trained on 1000)."),
         batch_size: int = _BATCH(64), model: str = typer.Option("shapes-llava", help="Model to demo."),
         dtype: str = _DTYPE, device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP,
         overwrite: bool = typer.Option(False, "--overwrite", help="Rerun into a folder holding a demo of other "
                                                                   "settings.")):
    """The paper's analyses and steering on the shipped model (concepts, steering, captions, debiasing, safety,
    fine-tuning shift, separability): one HTML page linking each section's report."""
    if ctx.invoked_subcommand is not None:
        return
    import json
    from dataclasses import asdict

    from vlmsteer.demo.run import DemoSettings, run_demo
    from vlmsteer.outputs import check_can_create, differences, read_run_record

    quiet_transformers()
    settings = DemoSettings(model=model, n_scenes=n_scenes, seed=seed, batch_size=batch_size, dtype=dtype,
                            device=device, device_map=device_map)
    # the demo writes its own datasets into --out (their absolute paths are recorded), so it runs in
    # place: a folder holding a demo of other settings is refused rather than mixed with this one
    check_can_create(out)
    old = (read_run_record(out) or {}).get("options") if out.is_dir() else None
    new = json.loads(json.dumps(asdict(settings), default=str))
    if out.is_dir() and any(out.iterdir()) and old != new and not overwrite:
        what = ", ".join(differences(old, new)[:4]) if old is not None else "not a vlmsteer demo"
        raise VlmsteerError(f"{out}: holds another output ({what}); choose another output folder, or overwrite it",
                            "overwrite")
    page = run_demo(out, settings, progress=True)
    out_console.print(f"demo page: {page}")


@demo_app.command("train")
def demo_train(out: Path = typer.Option(..., help="Folder to save the trained model in."),
               seed: int = _SEED(), samples: int = typer.Option(480_000, min=1, help="Training samples."),
               threads: int = typer.Option(2, min=1, help="Torch CPU threads (2 on the 2-core reference machine)."),
               batch_size: int = typer.Option(32, min=1, help="Training samples per step."),
               lr: float = typer.Option(1e-3, help="Peak learning rate."),
               warmup_steps: int = typer.Option(100, min=0, help="Linear learning-rate warm-up steps."),
               init_from: Optional[Path] = typer.Option(None, help="Continue from this model's weights."),
               count_questions: str = typer.Option("any", help="'any' or 'mostly_present' (curriculum phase 1)."),
               mix: Optional[str] = typer.Option(None, help="Task mix, e.g. 'vqa=0.55,caption=0.15,"
                                                            "style_caption=0.1,list=0.15,unsafe=0.05'."),
               overwrite: bool = _OVERWRITE):
    """Train shapes-llava from scratch on the shapes world (CPU only; about 40 minutes on 2 cores)."""
    from vlmsteer.demo.train import TrainConfig, train_demo_model

    quiet_transformers()
    if not (math.isfinite(lr) and lr > 0):
        raise VlmsteerError(f"--lr must be a positive number, got {lr}")
    if count_questions not in ("any", "mostly_present"):
        raise VlmsteerError(f"--count-questions must be 'any' or 'mostly_present', got {count_questions!r}")
    cfg = TrainConfig(seed=seed, samples=samples, threads=threads, batch_size=batch_size, lr=lr,
                      warmup_steps=warmup_steps, init_from=str(init_from) if init_from else None,
                      count_questions=count_questions)
    if mix:
        try:
            cfg.mix = {k.strip(): float(v) for k, v in (part.split("=") for part in mix.split(","))}
        except ValueError:
            raise VlmsteerError(f"--mix expects task=weight pairs, got {mix!r}") from None
        unknown = set(cfg.mix) - {"vqa", "caption", "style_caption", "list", "unsafe"}
        if unknown:
            raise VlmsteerError(f"--mix: unknown task(s) {sorted(unknown)}")
    with publish(out, overwrite) as pub:
        claim(pub, command_identity())
        record = train_demo_model(pub.stage, cfg, log=lambda line: out_console.print(line, highlight=False))
        command_run_json(pub)
    out_console.print(f"trained in {record['train_seconds']:.0f} s; saved to {out}")


