"""The language-model head alone — final norm and unembedding — for word grounding.

Grounding a concept in words needs ``logits = unembed(norm(u))`` and the tokenizer, not the
model: for LLaVA-1.5-7B that is 0.13 B of its 7 B parameters. :func:`load_head` builds the
model's skeleton on the ``meta`` device (no memory), finds its final norm and unembedding the
way :class:`~vlmsteer.model.VLM` does, and reads only their tensors from the checkpoint's
safetensors files (legacy key names are renamed with transformers' own conversion rules; a
tied unembedding is read from the input embeddings). Every tensor is checked against the
skeleton's shape; when the head cannot be found that way, it loads the whole model instead
(and says so), never a wrong head.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmsteer.errors import VlmsteerError
from vlmsteer.loading import load_processor, model_fingerprint, model_identity, parse_dtype, resolve_model_id

log = logging.getLogger(__name__)


@dataclass
class LanguageHead:
    """What word grounding reads of a model: the interface :class:`~vlmsteer.model.VLM` has too."""

    norm: torch.nn.Module
    unembed: torch.nn.Module
    processor: Any
    model_id: str
    softcap: float | None = None
    source: dict | None = None  # see vlmsteer.loading.model_fingerprint
    architecture: str | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.unembed.weight.shape[1])

    @property
    def identity(self) -> dict:
        return model_identity(self.source or {}, None, str(self.unembed.weight.dtype).replace("torch.", ""),
                              self.architecture)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.unembed(self.norm(hidden))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def load_head(model_id: str | Path, dtype: str | torch.dtype = "auto", device: str = "cpu",
              trust_remote_code: bool = False):
    """The final norm and unembedding of ``model_id`` (a model folder or ``shapes-llava``) with
    its tokenizer; the whole :class:`~vlmsteer.model.VLM` where the checkpoint does not allow
    reading the head alone (a hub id not saved to a folder, weights not in safetensors)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    path = resolve_model_id(model_id)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            skeleton = AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
        norm, unembed = skeleton.get_decoder().norm, skeleton.get_output_embeddings()
        tensors = _read_head(Path(path), skeleton, norm, unembed)
    except (OSError, ValueError, KeyError, AttributeError, VlmsteerError) as exc:
        from vlmsteer.model import VLM

        log.info("%s: reading the whole model for word grounding (%s)", model_id, str(exc).splitlines()[0])
        return VLM.load(model_id, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    torch_dtype = parse_dtype(dtype)
    for module, name, value in tensors:  # the skeleton's meta parameters replaced by the checkpoint's
        module._parameters[name] = torch.nn.Parameter(value.to(device=device, dtype=torch_dtype or value.dtype),
                                                      requires_grad=False)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    archs = getattr(config, "architectures", None)
    return LanguageHead(norm.eval(), unembed.eval(), load_processor(path, trust_remote_code=trust_remote_code),
                        str(model_id), getattr(text, "final_logit_softcapping", None),
                        model_fingerprint(model_id, path), archs[0] if archs else None)


def _read_head(folder: Path, skeleton, norm, unembed) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    """(module, parameter name, checkpoint tensor) for every parameter of ``norm`` and ``unembed``."""
    from safetensors import safe_open

    files = _weight_files(folder)
    names = {id(p): n for n, p in skeleton.named_parameters(remove_duplicate=False)}
    tied_to = {id(p): n for n, p in skeleton.get_input_embeddings().named_parameters()}
    embed_prefix = next(n for n, m in skeleton.named_modules() if m is skeleton.get_input_embeddings())
    rename = _renamer(skeleton)
    key_of: dict[str, tuple[str, Path]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                key_of[rename(key)] = (key, f)
    out = []
    for module in (norm, unembed):
        for local, param in module.named_parameters():
            if "." in local:
                raise VlmsteerError(f"{type(module).__name__} has nested parameters")
            wanted = [names[id(param)]]
            if id(param) in tied_to:  # a tied unembedding is stored as the input embedding
                wanted.append(f"{embed_prefix}.{tied_to[id(param)]}")
            found = next((key_of[w] for w in wanted if w in key_of), None)
            if found is None:
                raise VlmsteerError(f"no tensor {wanted[0]} in the checkpoint")
            key, f = found
            with safe_open(str(f), framework="pt") as handle:
                value = handle.get_tensor(key)
            if tuple(value.shape) != tuple(param.shape):
                raise VlmsteerError(f"{key} has shape {tuple(value.shape)}, the model expects {tuple(param.shape)}")
            out.append((module, local, value))
    return out


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    raise VlmsteerError(f"{folder}: no safetensors weights")


def _renamer(skeleton):
    """Checkpoint key -> the model's parameter name, by transformers' own renaming rules for
    this model (legacy layouts); keys unchanged where those rules are not available."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        renamings = [r for r in get_model_conversion_mapping(skeleton) if type(r) is WeightRenaming]
        meta = skeleton.state_dict()
        prefix = getattr(skeleton, "base_model_prefix", None)

        def rename(key: str) -> str:
            return rename_source_key(key, renamings, [], base_model_prefix=prefix, meta_state_dict=meta)[0]

        rename("probe.weight")  # the internal API is as expected
        return rename
    except (ImportError, TypeError, AttributeError):
        return lambda key: key
