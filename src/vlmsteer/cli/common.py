"""What every command module shares: the typer apps, consoles, model loading, option
definitions and small parsers. Nothing here computes."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable, NamedTuple, Optional

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
score_app = typer.Typer(help="Score answers or captions made by any tool (POPE, CHAIR), as their references do.",
                        no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.add_typer(vectors_app, name="vectors")
app.add_typer(store_app, name="store")
app.add_typer(demo_app, name="demo")
app.add_typer(organisms_app, name="organisms")
app.add_typer(score_app, name="score")

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


class _RegistryHelp:
    """Help text read from a registry each time the command is built (so a plugin's entries
    appear in ``--help``)."""

    @property
    def help(self) -> str:
        from rich.markup import escape

        return escape(self._help_of())  # (a description's [brackets] are text, not markup)

    @help.setter
    def help(self, value) -> None:  # typer's constructor sets it; the registry decides
        pass


class _RegistryOption(_RegistryHelp, typer.models.OptionInfo):
    pass


class _RegistryArgument(_RegistryHelp, typer.models.ArgumentInfo):
    pass


def data_parallel(command: Callable) -> Callable:
    """Marks a command that runs data-parallel under torchrun (each rank takes its slice of the
    samples; the parts merge into the one-process result). Put it below ``@app.command``; every
    other command is refused under torchrun by every rank before anything starts."""
    command.data_parallel = True
    return command


def resumes(what: str) -> Callable[[Callable], Callable]:
    """Marks a command that a rerun resumes after Ctrl-C or SIGTERM: ``what`` it keeps (shown
    in the interrupted message). Put it below ``@app.command``."""
    def mark(command: Callable) -> Callable:
        command.resume_hint = what
        return command
    return mark


def registry_option(default, *flags: str, registry, intro: str = "", where=None, refuse_others: bool = False,
                    **kwargs):
    """A ``typer.Option`` choosing an entry of ``registry``: its help lists every entry (those
    ``where`` accepts) with its one-line description; with ``refuse_others``, an entry ``where``
    does not accept is a one-line error when the command line is read."""

    def accepted(ctx, param, value):
        if value is not None and not where(registry.entry(value)):
            flag = max(param.opts, key=len)
            raise VlmsteerError(f"{flag} {value}: choose one of {', '.join(registry.names(where))}")
        return value

    if refuse_others:
        kwargs["callback"] = accepted
    info = typer.Option(default, *flags, **kwargs)
    info.__class__ = _RegistryOption
    info._help_of = lambda: registry.help(intro, where)
    return info


def registry_argument(default, *, registry, intro: str = "", where=None, **kwargs):
    """:func:`registry_option` for a positional argument."""
    info = typer.Argument(default, **kwargs)
    info.__class__ = _RegistryArgument
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
    from vlmsteer.positions import REGIONS

    return registry_option(default, registry=REGIONS, intro=f"Where the vector is added (default {default}: {why}).")


def _ANSWERS_FORMAT():  # noqa: N802 - an option factory
    """``--format`` of the commands that score answers: the data formats with reference answers."""
    from vlmsteer.data.formats import DATA_FORMATS

    return registry_option("vqav2", "--format", registry=DATA_FORMATS, refuse_others=True,
                           where=lambda e: e.value.reference == "answers")


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
_VISUAL = typer.Option(None, "--visual-alpha",
                       help="Visual steering (VISTA-style, a hallucination mitigation): add this many times each "
                            "sample's own vector, the residual at its last prompt token with its image minus with a "
                            "blank image, at --layer (default every layer) on --region.")
_VISUAL_CONTROL = typer.Option(False, "--visual-control",
                               help="With --visual-alpha: the random control, each sample's vector replaced by a "
                                    "random direction of the same norm.")
_VALUE = typer.Option(0.0, help="With --edit clamp: the latent's value; scale: the factor.")
_CONDITION_STORE = typer.Option(None, help="Fine-grained: a store whose labelled groups are the concepts "
                                           "(centroid = mean feature); use with --active.")
_ACTIVE = typer.Option(None, help="The active group(s) of --condition-store, e.g. answer=yes or answer=1|2.")
_CONDITION_LAYER = typer.Option(None, "--condition-layer", min=0,
                                help="The layer whose features --condition-store's groups are told apart at (from 0 "
                                     "to the first steered layer; default: the first steered layer).")


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
                    active: Optional[str], allow_partial: bool = False, layer: Optional[int] = None):
    """The fine-grained condition the options name (None for coarse steering)."""
    if dictionary is None and condition_store is None:
        if concept or active or layer is not None:
            raise VlmsteerError("--concept needs --dictionary, and --active and --condition-layer need "
                                "--condition-store")
        return None
    from vlmsteer.steer.conditions import ConditionSpec

    return ConditionSpec(dictionary=str(dictionary) if dictionary else None,
                         concepts=tuple(c.strip() for part in concept or () for c in part.split(",") if c.strip()),
                         store=str(condition_store) if condition_store else None, active=active,
                         allow_partial=allow_partial, layer=layer)


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
              region: str, condition=None, allow_other_model: bool = False, edit: Optional[EditSpec] = None,
              visual: Optional[float] = None, visual_control: bool = False):
    """The ``Steering`` the vector options describe (None without ``--vector``), checked against
    the model (sizes, layers, the weights the vector and condition were made with, the
    scale); ``condition`` (a ConditionSpec) is built at the first steered layer. With ``edit``,
    a :class:`~vlmsteer.steer.dictionary_edit.DictionarySteering` instead; with ``visual``, a
    :class:`~vlmsteer.steer.visual.VisualSteering`."""
    if visual_control and visual is None:
        raise VlmsteerError("--visual-control is the random control of visual steering: give --visual-alpha",
                            "visual_control")
    if visual is not None:
        if vector is not None or edit is not None or condition is not None:
            raise VlmsteerError("visual steering makes its own vector per sample: give it without --vector, "
                                "--edit-dictionary or a condition", "visual_alpha")
        if alpha != 1.0:
            raise VlmsteerError("--alpha scales --vector; visual steering's strength is its own value", "alpha")
        from vlmsteer.steer.visual import VisualSteering

        return VisualSteering(visual, tuple(_parse_layers(layer)) if layer else None, region,
                              visual_control).check(vlm)
    if edit is not None:
        if vector is not None or condition is not None:
            raise VlmsteerError("steer with --vector or with --edit-dictionary, not both (a dictionary edit takes "
                                "no condition)")
        from vlmsteer.steer.dictionary_edit import load_dictionary_steering

        layers = _parse_layers(layer) if layer else None
        if layers is not None and len(layers) != 1:
            raise VlmsteerError("a dictionary edit acts at one layer; give one --layer", "layer")
        return load_dictionary_steering(edit.dictionary, edit.mode, edit.latents, edit.value,
                                        layers[0] if layers else None, region).check(vlm, allow_other_model)
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


def command_spec():
    """The running command and its parsed options, for the run protocol."""
    from vlmsteer.runs.protocol import RunSpec

    ctx = _current_context()
    return RunSpec(ctx.command_path if ctx is not None else None, _current_params())


def command_identity(**contents) -> dict:
    """:func:`vlmsteer.runs.protocol.run_identity` of the running command."""
    from vlmsteer.runs.protocol import run_identity

    return run_identity(command_spec(), **contents)


def command_run_json(out, **extra) -> None:
    """:func:`vlmsteer.runs.protocol.write_run_json` with the running command's options."""
    from vlmsteer.runs.protocol import write_run_json

    write_run_json(out, command_spec(), **extra)


_VQA_TOKENS = typer.Option(3, min=1, help="Tokens generated per answer (short VQA answers need few).")


def _condition_identity(spec, vlm, layers, allow_other_model: bool):
    """The digests of the conditions ``spec`` builds at ``layers`` (where steering starts),
    after checking they were made for ``vlm``; None without a condition."""
    if spec is None:
        return None
    digests = {}
    for layer in sorted(set(layers)):
        built = spec.build(layer)
        built.check_model(vlm, allow_other_model)
        digests[str(layer)] = built.digest()
    return digests
