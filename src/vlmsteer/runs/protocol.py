"""The run protocol every command that writes an output folder follows, for the CLI and the
Python API alike: the folder is staged beside ``out`` and appears whole (:func:`publish`), its
**identity** — the command, the settings that change its result and the contents it read (model,
data, stores, steering by their content identities) — is claimed before any model work
(:func:`claim`: a different identity is refused unless ``overwrite``), and ``run.json`` records
options, identity and fingerprint (:func:`write_run_json`).

A :class:`RunSpec` names the command and every option it was given, by the CLI's names; the CLI
builds it from the parsed command line, the Python API from its arguments, so both write the same
folder."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from vlmsteer.errors import VlmsteerError

# options that do not change what a command computes (where it runs, how it reports): left out of
# the identity an output records; options naming files are replaced by their contents' identity
NOT_RESULTS = {"out", "overwrite", "device", "device_map", "threads", "show", "allow_partial",
               "allow_outside_images", "max_image_pixels", "allow_other_model"}


@dataclass(frozen=True)
class RunSpec:
    """A command (``"vlmsteer concepts"``) and every option it was given, by the CLI's names."""

    command: Optional[str]
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_call(cls, command: str, arguments: dict[str, Any], paths: tuple[str, ...] = ()) -> "RunSpec":
        """From a Python call's arguments; those named in ``paths`` become :class:`Path` (as the
        CLI parses them), so a path typed as a string is not mistaken for a setting."""
        return cls(command, {k: (Path(v) if k in paths and v is not None else v) for k, v in arguments.items()})

    def settings(self, contents: dict) -> dict:
        """The options that change the result (not where or how it runs, not paths, not what
        ``contents`` records by identity)."""
        return {k: v for k, v in self.options.items()
                if k not in NOT_RESULTS and not isinstance(v, Path) and k not in contents and k != "model"}


def result_versions() -> dict:
    """The versions of the packages that decide a result."""
    from vlmsteer.runs.runinfo import versions

    v = versions()
    return {k: v.get(k) for k in ("vlmsteer", "torch", "transformers", "vllm") if k in v}


def run_identity(spec: RunSpec, **contents) -> dict:
    """What an output folder is made of: ``contents`` (model, data, stores, steering by their
    content identities) plus the options that change its result. Paths as typed are not part of
    it: the same inputs named by another path make the same output."""
    return {"command": spec.command, "settings": spec.settings(contents), "versions": result_versions(), **contents}


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes, as torchrun (or any launcher setting
    RANK and WORLD_SIZE) gives them; (0, 1) when run alone."""
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise VlmsteerError("RANK and WORLD_SIZE must be integers (set by torchrun)") from None


def device_for_rank(device: str, env: Optional[dict] = None) -> str:
    """Under torchrun (LOCAL_RANK set), a bare ``cuda`` means this rank's own GPU."""
    env = os.environ if env is None else env
    if device == "cuda" and "LOCAL_RANK" in env:
        return f"cuda:{int(env['LOCAL_RANK'])}"
    return device


def publish(out: Path, overwrite: bool = False, resumable: tuple[str, ...] | None = ()):
    """An output folder built in a staging folder beside ``out`` and swapped in whole at the end
    (see :func:`vlmsteer.outputs.published`): its lock is taken and writability checked now,
    before any model work. Under torchrun every rank writes its part into the same staging
    folder and rank 0 alone locks and publishes. ``resumable``: what a failed run's staging
    folder keeps for a rerun (by name; None: all of it); otherwise it goes."""
    from vlmsteer.outputs import published

    rank, _ = rank_and_world()
    return published(Path(out), overwrite, lock=rank == 0, commit=rank == 0, resumable=resumable)


def claim(pub, identity: dict) -> str:
    """Check ``identity`` against what ``pub``'s output folder holds (refused unless
    ``overwrite`` when it differs); the staging folder keeps only work of this identity (rank 0
    clears the rest, the other ranks wait for it)."""
    from vlmsteer.outputs import atomic_write_text

    rank, _ = rank_and_world()
    digest = pub.claim(identity)
    marker = pub.stage / ".identity"
    if rank == 0:
        try:
            current = marker.read_text()
        except OSError:
            current = None
        if current != digest:
            pub.clear_stage()
            atomic_write_text(marker, digest)
    else:
        while True:
            try:
                if marker.read_text() == digest:
                    break
            except OSError:
                pass
            time.sleep(0.1)
    return digest


def write_run_json(out, spec: RunSpec, *, model_id: Optional[str] = None, revision: Optional[str] = None,
                   **extra) -> None:
    """``run.json`` from the options of ``spec``; ``out`` is a folder or a
    :class:`~vlmsteer.outputs.Publication` (written into its staging folder, with the identity it
    claimed and its fingerprint)."""
    from vlmsteer.runs.runinfo import write_run_json as write

    identity = getattr(out, "identity", None)
    if identity is not None:
        extra = {**extra, "identity": identity, "fingerprint": out.fingerprint}
        out = out.stage
    write(out, options=spec.options, seed=spec.options.get("seed"), model_id=model_id, revision=revision, **extra)
