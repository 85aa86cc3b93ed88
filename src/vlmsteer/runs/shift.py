"""``vlmsteer shift``: the full fine-tuning shift analysis on two (or more) feature stores,
published with plots and an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from vlmsteer.analysis.shift_analysis import ShiftConfig, analyse, evolution, with_changes
from vlmsteer.outputs import atomic_write_json, make_folder
from vlmsteer.report.shift import write_shift_report
from vlmsteer.store import FeatureStore

__all__ = ["ShiftConfig", "run_shift"]


def run_shift(store_a: FeatureStore, store_b: FeatureStore, out: str | Path, cfg: ShiftConfig, vlm=None,
              checkpoints: dict[int, FeatureStore] | None = None, ks: Sequence[int] = (),
              layers: Sequence[int] = ()) -> dict:
    cfg = with_changes(cfg, layer=store_a.layer_index(cfg.layer))
    layers = [store_a.layer_index(layer) for layer in layers]
    out = Path(out)
    result = {"original": str(store_a.path), "finetuned": str(store_b.path), "main": analyse(store_a, store_b, cfg, vlm)}
    if checkpoints:
        result["evolution"] = evolution(store_a, checkpoints, cfg, vlm)
    if ks:
        result["ks"] = [{k: v for k, v in analyse(store_a, store_b, with_changes(cfg, k=k), None).items()
                         if k not in ("concepts", "recovery")} for k in ks]
    if layers:
        result["layers"] = [{k: v for k, v in analyse(store_a, store_b, with_changes(cfg, layer=l), None).items()
                             if k not in ("concepts", "recovery")} for l in layers]
    make_folder(out)  # only once there is something to write
    write_shift_report(out, result)
    atomic_write_json(out / "shift.json", result, durable=False, indent=2)
    return result


