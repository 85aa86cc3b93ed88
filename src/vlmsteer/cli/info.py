"""``vlmsteer info``: a model's architecture, sizes and the installed versions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from vlmsteer.cli.common import _DEVICE, _DEVICE_MAP, _DTYPE, app, err_console, out_console
from vlmsteer.runs.models import load_model


@app.command()
def info(model: str = typer.Argument(..., help="Hub id, model folder, or shapes-llava."),
         adapter: Optional[Path] = typer.Option(None, help="LoRA adapter folder."),
         trust_remote_code: bool = typer.Option(False, "--trust-remote-code",
                                                help="Allow the model's own code to run."),
         dtype: str = _DTYPE, device: str = _DEVICE, device_map: Optional[str] = _DEVICE_MAP):
    """Print a model's architecture, layer count, hidden size, vocabulary size and image-token count."""
    from vlmsteer.runs.runinfo import version_warnings, versions

    vlm = load_model(model, adapter, dtype, device, device_map, trust_remote_code=trust_remote_code)
    table = Table(show_header=False)
    for k, v in vlm.describe().items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    for name, version in versions().items():
        table.add_row(name, version)
    out_console.print(table)
    for line in version_warnings():
        err_console.print(f"warning: {line}", highlight=False, soft_wrap=True)
