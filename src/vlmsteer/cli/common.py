"""What every command module shares: the typer apps, consoles, model loading, option
definitions and small parsers. Nothing here computes."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import NamedTuple, Optional

import typer
from rich.console import Console

from vlmsteer.errors import VlmsteerError


app = typer.Typer(help="Concept-level analysis and training-free steering of multimodal LLMs.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Datasets: generate the shapes world, check dataset files.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a model (optionally steered).", no_args_is_help=True)
vectors_app = typer.Typer(help="Build steering vectors from feature stores.", no_args_is_help=True)
store_app = typer.Typer(help="Feature stores: import features extracted by other tools, export them.",
                        no_args_is_help=True)
demo_app = typer.Typer(help="The end-to-end demo on the shipped shapes-llava model.", invoke_without_command=True)
organisms_app = typer.Typer(help="Model organisms: fine-tunes with a known objective, to grade model diffing.",
                            no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.add_typer(vectors_app, name="vectors")
app.add_typer(store_app, name="store")
app.add_typer(demo_app, name="demo")
app.add_typer(organisms_app, name="organisms")

@app.callback()
def _root(threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: the CPUs "
                                                                      "this process may use, split among torchrun "
                                                                      "ranks).")):
    """Concept-level analysis and training-free steering of multimodal LLMs."""
    import torch

    from vlmsteer.threads import default_threads

    if threads is not None and threads < 1:
        raise VlmsteerError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads or default_threads())


out_console = Console()
err_console = Console(stderr=True)


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load_samples(*args, **kwargs):
    """:func:`vlmsteer.data.load_samples`, then what this process holds so far (the samples,
    imported modules) frozen out of the cyclic collector's scans for the rest of the command:
    records hold no cycles, yet each full collection would walk them all, and a forked prefetch
    worker would copy every page such a walk touches. Measured with 103,161 VQAv2 questions:
    loading the model after them 3.1 -> 2.8 s. A command is one process; whatever it froze is
    freed when it exits."""
    from vlmsteer.data import load_samples

    samples = load_samples(*args, **kwargs)
    gc.freeze()
    return samples


def _load_model(model: str, adapter: Optional[Path] = None, dtype: str = "auto", device: str = "cpu",
                device_map: Optional[str] = None, trust_remote_code: bool = False,
                max_image_pixels: Optional[int] = None):
    _quiet_transformers()
    from vlmsteer.model import VLM

    vlm = VLM.load(model, adapter=adapter, dtype=dtype, device=_device_for_rank(device),
                   device_map=device_map or None, trust_remote_code=trust_remote_code)
    if max_image_pixels is not None:
        vlm.max_image_pixels = max_image_pixels
    return vlm


def _load_head(model: str, dtype: str = "auto", device: str = "cpu", device_map: Optional[str] = None):
    """The final norm and unembedding alone, for word grounding (see :mod:`vlmsteer.head`); the
    whole model with a device map."""
    if device_map:
        return _load_model(model, None, dtype, device, device_map)
    _quiet_transformers()
    from vlmsteer.head import load_head

    return load_head(model, dtype=dtype, device=_device_for_rank(device))


def _grounding_identity(vlm, store) -> dict | None:
    """The grounding head's identity, after checking it reads vectors of the store's size."""
    if vlm is None:
        return None
    if vlm.hidden_size != store.hidden_size:
        raise VlmsteerError(f"{vlm.model_id} has hidden size {vlm.hidden_size} but the features of {store.path} have "
                            f"{store.hidden_size}: ground the words with the store's own model", "model")
    return vlm.identity


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes, as torchrun (or any launcher setting
    RANK and WORLD_SIZE) gives them; (0, 1) when run alone."""
    import os

    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise VlmsteerError("RANK and WORLD_SIZE must be integers (set by torchrun)") from None


def _device_for_rank(device: str, env: Optional[dict] = None) -> str:
    """Under torchrun (LOCAL_RANK set), a bare ``cuda`` means this rank's own GPU."""
    env = os.environ if env is None else env
    if device == "cuda" and "LOCAL_RANK" in env:
        return f"cuda:{int(env['LOCAL_RANK'])}"
    return device


class _RegistryOption(typer.models.OptionInfo):
    """An option whose help text is read from a registry each time the command is built (so a
    plugin's entries appear in ``--help``)."""

    @property
    def help(self) -> str:
        return self._help_of()

    @help.setter
    def help(self, value) -> None:  # typer's constructor sets it; the registry decides
        pass


def registry_option(default, *flags: str, registry, intro: str = "", where=None, **kwargs):
    """A ``typer.Option`` choosing an entry of ``registry``: its help lists every entry (those
    ``where`` accepts) with its one-line description."""
    info = typer.Option(default, *flags, **kwargs)
    info.__class__ = _RegistryOption
    info._help_of = lambda: registry.help(intro, where)
    return info


# options of every command that loads a model
_DTYPE = typer.Option("auto", help="Model dtype: auto (the checkpoint's), float32, bfloat16 or float16.")
def _checked_device(value: str) -> str:
    from vlmsteer.loading import check_device

    check_device(value)
    return value


_DEVICE = typer.Option("cpu", callback=_checked_device, help="Device for the model: cpu, cuda, cuda:1, mps.")
_DEVICE_MAP = typer.Option(None, help="'auto': spread a model too large for one device over all of them "
                                      "(accelerate); overrides --device.")



_ALLOW_OUTSIDE = typer.Option(False, "--allow-outside-images",
                              help="Read image paths that lead outside the dataset folder (symlinks resolved).")
_MAX_PIXELS = typer.Option(4096 * 4096, "--max-image-pixels", min=1,
                           help="Refuse images with more pixels than this (read from the header, before decoding).")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace an output made from other inputs or settings (the "
                                                     "old one stays whole until the new one is complete).")
_ALLOW_OTHER_MODEL = typer.Option(False, "--allow-other-model",
                                  help="Use a vector, dictionary or condition store made with another model's "
                                       "weights (same hidden size).")
_ALLOW_PARTIAL = typer.Option(False, "--allow-partial", help="Accept a store whose extraction did not finish.")


def _open_store(path: Path, allow_partial: bool = False):
    from vlmsteer.store import FeatureStore

    return FeatureStore.open(path, allow_partial=allow_partial).verify()


# options shared by the evaluation commands (typer reads these as defaults)
_VECTOR = typer.Option(None, help="Steering vector file (.safetensors).")
_NAME = typer.Option(None, help="Vector name, for files holding several ('i->j' for concept pairs, or their top "
                                "words: 'yes->no').")
_ALPHA = typer.Option(1.0, help="Steering strength.")
_LAYERS = typer.Option(None, help="Layer(s) to steer (default: the vector's).")
_BASELINE = typer.Option(None, help="Unsteered run folder to compare against.")
_LIMIT = typer.Option(None, min=1, help="Use a seeded random subset of this many samples (--seed).")
_SPLIT = typer.Option("val2014", help="Split name in the dataset's file names (VQAv2/COCO).")
_IMAGES = typer.Option(None, help="Image folder (default: the dataset's own, e.g. DATA/val2014).")
_ADAPTER = typer.Option(None, help="LoRA adapter folder (from vlmsteer finetune) to load on the model.")
_PROMPT = typer.Option(None, help="Prompt for every sample (default: the loader's, e.g. the caption prompt).")


def _MAX_NEW_TOKENS(default: int):  # noqa: N802 - an option factory
    return typer.Option(default, min=1, help="Most tokens generated per sample (greedy).")


def _SEED(default: int = 0, help: str = "Random seed."):  # noqa: N802 - an option factory
    return typer.Option(default, min=0, max=2 ** 32 - 1, help=help)


def _REGION(default: str, why: str):  # noqa: N802 - an option factory
    return typer.Option(default, help=f"Where the vector is added: prompt, image, text, last_prompt, generated or all "
                                      f"(default {default}: {why}).")


def _BATCH(default: int):  # noqa: N802 - an option factory, like the constants around it
    return typer.Option(default, min=1, help="Samples per batch (halved on an accelerator out-of-memory error).")
# fine-grained steering: apply the vector only where a concept is active
_DICTIONARY = typer.Option(None, help="Fine-grained: dictionary.safetensors from `vlmsteer concepts`; steer only "
                                      "samples whose feature at the steering layer (last prompt token) falls in "
                                      "--concept.")
_CONCEPT = typer.Option(None, help="Active concept(s) of --dictionary: an index or a top word (every concept "
                                   "labelled with it), repeated or comma-separated.")
_EDIT_DICTIONARY = typer.Option(None, help="Steer through a dictionary instead of adding a vector: a "
                                           "dictionary.safetensors from `vlmsteer concepts` or an SAELens folder "
                                           "(its layer unless --layer; see --edit).")
_EDIT = typer.Option("clamp", help="With --edit-dictionary: clamp (set --latent to --value), scale (multiply "
                                   "--latent by --value), splice (the residual replaced by its reconstruction) "
                                   "or zero.")
_LATENT = typer.Option(None, help="With --edit clamp|scale: latent(s), by index or top word, repeated or "
                                  "comma-separated.")
_VALUE = typer.Option(0.0, help="With --edit clamp: the latent's value; scale: the factor.")
_CONDITION_STORE = typer.Option(None, help="Fine-grained: a store whose labelled groups are the concepts "
                                           "(centroid = mean feature); use with --active.")
_ACTIVE = typer.Option(None, help="The active group(s) of --condition-store, e.g. answer=yes or answer=1|2.")


def _parse_ints(values: str | list[str], option: str = "--layer") -> list[int]:
    """Integers from repeated and/or comma-separated option values; one-line error otherwise."""
    numbers = []
    for v in [values] if isinstance(values, str) else values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                numbers.append(int(part))
            except ValueError:
                raise VlmsteerError(f"{option} expects integers, got {part!r}") from None
    if not numbers:
        raise VlmsteerError(f"give at least one value for {option}")
    return numbers


def _parse_layers(values: list[str]) -> list[int]:
    return _parse_ints(values, "--layer")


def _condition_spec(dictionary: Optional[Path], concept: Optional[list[str]], condition_store: Optional[Path],
                    active: Optional[str], allow_partial: bool = False):
    """The fine-grained condition the options name (None for coarse steering)."""
    if dictionary is None and condition_store is None:
        if concept or active:
            raise VlmsteerError("--concept needs --dictionary, and --active needs --condition-store")
        return None
    from vlmsteer.steer.conditions import ConditionSpec

    return ConditionSpec(dictionary=str(dictionary) if dictionary else None,
                         concepts=tuple(c.strip() for part in concept or () for c in part.split(",") if c.strip()),
                         store=str(condition_store) if condition_store else None, active=active,
                         allow_partial=allow_partial)


class EditSpec(NamedTuple):
    """The dictionary-edit options of a command (``--edit-dictionary`` and friends)."""

    dictionary: Path
    mode: str
    latents: tuple[str, ...]
    value: float


def _edit_spec(dictionary: Optional[Path], mode: str, latent: Optional[list[str]], value: float) -> Optional[EditSpec]:
    latents = tuple(c.strip() for part in latent or () for c in part.split(",") if c.strip())
    if dictionary is None:
        if latents:
            raise VlmsteerError("--latent needs --edit-dictionary")
        return None
    return EditSpec(dictionary, mode, latents, value)


def _steering(vlm, vector: Optional[Path], name: Optional[str], alpha: float, layer: Optional[list[str]],
              region: str, condition=None, allow_other_model: bool = False, edit: Optional[EditSpec] = None):
    """The ``Steering`` the vector options describe (None without ``--vector``), checked against
    the model (sizes, layers, the weights the vector and condition were made with, the
    scale); ``condition`` (a ConditionSpec) is built at the first steered layer. With ``edit``,
    a :class:`~vlmsteer.steer.dictionary_edit.DictionarySteering` instead."""
    if edit is not None:
        if vector is not None or condition is not None:
            raise VlmsteerError("steer with --vector or with --edit-dictionary, not both (a dictionary edit takes "
                                "no condition)")
        from vlmsteer.steer.dictionary_edit import load_dictionary_steering

        layers = _parse_layers(layer) if layer else None
        if layers is not None and len(layers) != 1:
            raise VlmsteerError("a dictionary edit acts at one layer; give one --layer", "layer")
        return load_dictionary_steering(edit.dictionary, edit.mode, edit.latents, edit.value,
                                        layers[0] if layers else None, region).check(vlm)
    if vector is None:
        if condition is not None:
            raise VlmsteerError("a steering condition needs a steering vector (--vector)")
        return None
    from vlmsteer.steer import Steering
    from vlmsteer.steer.vector import load_vector

    vec = load_vector(vector, name, vlm, allow_other_model)
    layers = vec.check_model(vlm, _parse_layers(layer) if layer else None, allow_other_model)
    built = condition.build(min(layers)) if condition is not None else None
    if built is not None and hasattr(built, "check_model"):
        built.check_model(vlm, allow_other_model)
    return Steering(vec, alpha, layers, region, built).check(vlm)


def _current_params() -> dict:
    """The running command's parsed options (typer >= 0.29 keeps its own copy of click)."""
    ctx = _current_context()
    if ctx is None:
        raise RuntimeError("no command is running")
    return dict(ctx.params)


# options that do not change what a command computes (where it runs, how it reports): left out of
# the identity an output records; options naming files are replaced by their contents' identity
NOT_RESULTS = {"out", "overwrite", "device", "device_map", "threads", "show", "allow_partial",
               "allow_outside_images", "max_image_pixels", "allow_other_model"}


def _run_identity(**contents) -> dict:
    """What an output folder is made of: ``contents`` (model, data, stores, steering by their
    content identities) plus the command's options that change its result. Paths as typed
    are not part of it: the same inputs named by another path make the same output."""
    params = _current_params()
    ctx = _current_context()
    settings = {k: v for k, v in params.items()
                if k not in NOT_RESULTS and not isinstance(v, Path) and k not in contents and k != "model"}
    return {"command": ctx.command_path if ctx is not None else None, "settings": settings,
            "versions": _result_versions(), **contents}


def _result_versions() -> dict:
    from vlmsteer.evaluate.runinfo import versions

    v = versions()
    return {k: v.get(k) for k in ("vlmsteer", "torch", "transformers", "vllm") if k in v}


def _publish(out: Path, overwrite: bool = False):
    """An output folder built in a staging folder beside ``out`` and swapped in whole at the end
    (see :func:`vlmsteer.outputs.published`): its lock is taken and writability checked now,
    before any model work. Under torchrun every rank writes its part into the same staging
    folder and rank 0 alone locks and publishes."""
    from vlmsteer.outputs import published

    rank, _ = _rank_and_world()
    return published(out, overwrite, lock=rank == 0, commit=rank == 0)


def _claim(pub, identity: dict) -> str:
    """Check ``identity`` against what ``pub``'s output folder holds (refused unless
    --overwrite when it differs); the staging folder keeps only work of this identity (rank 0
    clears the rest, the other ranks wait for it)."""
    import time

    from vlmsteer.outputs import atomic_write_text

    rank, _ = _rank_and_world()
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


def _current_context():
    import importlib

    for module in ("typer._click.globals", "click.globals"):
        try:
            ctx = importlib.import_module(module).get_current_context(silent=True)
        except ImportError:
            continue
        if ctx is not None:
            return ctx
    return None


def _write_run_json(out, *, model_id: Optional[str] = None, revision: Optional[str] = None, **extra) -> None:
    """``run.json`` from the options this command was given, as parsed (nothing listed by hand);
    ``out`` is a folder or a :class:`~vlmsteer.outputs.Publication` (written into its staging
    folder, with the identity it claimed)."""
    from vlmsteer.evaluate.runinfo import write_run_json

    params = _current_params()
    identity = getattr(out, "identity", None)
    if identity is not None:
        extra = {**extra, "identity": identity, "fingerprint": out.fingerprint}
        out = out.stage
    write_run_json(out, options=params, seed=params.get("seed"), model_id=model_id, revision=revision, **extra)
