"""One wrapper for every Hugging Face image-text-to-text model (and for custom VLMs).

``VLM.load("llava-hf/llava-1.5-7b-hf")``, ``VLM.load("path/to/folder")`` and
``VLM.load("shapes-llava")`` (the shipped demo model) all give the same object. The
wrapper never hard-codes module paths: decoder layers and the final norm come from
``model.get_decoder()``, the unembedding from ``model.get_output_embeddings()``.

A model that is not an HF image-text-to-text class plugs in through
:meth:`VLM.from_parts`, by naming its decoder layers, final norm, unembedding and an input
preparation function (see ``docs/custom-models.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from vlmsteer.extras import require
from vlmsteer.errors import VlmsteerError
from vlmsteer.layers import resolve_layer
from vlmsteer.data.identity import DEFAULT_MAX_IMAGE_PIXELS
from vlmsteer.loading import (_attach_adapter, adapter_fingerprint, check_device, decode_images, load_processor,
                              model_fingerprint, model_identity, parameters_fingerprint, parse_dtype, resolve_model_id)
from vlmsteer.positions import TokenRegions

Images = Sequence[Image.Image | str | Path | None]


@dataclass
class Batch:
    """A prepared, left-padded batch plus the facts later stages need about it."""

    inputs: dict[str, torch.Tensor]
    regions: TokenRegions
    prompt_length: int
    # For teacher-forced batches: per row, the (start, end) span of the response tokens.
    answer_spans: list[tuple[int, int]] | None = None
    texts: list[str] | None = None  # the templated prompt of each row

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.inputs["attention_mask"]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class VLM:
    """A vision-language model with generic access to its residual stream.

    Build it with :meth:`load` (any HF image-text-to-text model) or :meth:`from_parts`.
    """

    model: torch.nn.Module
    processor: Any
    model_id: str
    layers: torch.nn.ModuleList
    norm: torch.nn.Module
    unembed: torch.nn.Module
    image_token_ids: frozenset[int]
    prepare_fn: Callable[..., dict[str, torch.Tensor]] | None = None
    format_prompt: Callable[[str, bool], str] | None = None
    revision: str | None = None
    info: dict = field(default_factory=dict)
    adapter: dict | None = None  # {"path", "sha256"} of a LoRA adapter loaded on top
    source: dict | None = None  # where the weights came from and their digest (see loading.model_fingerprint)
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS  # larger images are refused before decoding
    image_encoder: torch.nn.Module | None = None  # the vision tower (see hooks.encode_each_image_once)
    _prompts: dict = field(default_factory=dict, repr=False, compare=False)  # see build_prompt

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, model_id: str | Path, *, adapter: str | Path | None = None, dtype: str | torch.dtype = "auto",
             device: str = "cpu", trust_remote_code: bool = False, revision: str | None = None,
             device_map: str | dict | None = None) -> "VLM":
        """Load from a hub id, a local folder or ``shapes-llava``; optionally add a LoRA adapter.

        ``device_map`` (``"auto"`` or a module -> device dict) spreads a model too large for one
        device over the available ones with accelerate's big-model loading; ``device`` is then
        ignored."""
        from transformers import AutoModelForImageTextToText

        if device_map is None:
            check_device(device)
        path = resolve_model_id(model_id, revision)
        if Path(path).exists() and not (Path(path) / "config.json").exists():
            raise VlmsteerError(f"{path}: not a model folder (no config.json)")
        torch_dtype = parse_dtype(dtype)
        extra = {}
        if device_map is not None:
            require("accelerate", "loading with a device map")
            extra["device_map"] = device_map
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=torch_dtype if torch_dtype is not None else "auto",
                trust_remote_code=trust_remote_code, revision=revision, **extra,
            )
        except (OSError, ValueError, KeyError) as exc:
            raise VlmsteerError(f"{model_id}: cannot load model ({str(exc).splitlines()[0]})") from None
        if adapter is not None:
            model = _attach_adapter(model, adapter)
        if device_map is None:
            model.to(device)
        model.eval()
        processor = load_processor(path, trust_remote_code=trust_remote_code, revision=revision)
        # a folder is recorded by its absolute path, so outputs name it the same from any folder
        shown = str(Path(path).resolve()) if path == str(model_id) and Path(path).exists() else str(model_id)
        vlm = cls.from_hf(model, processor, model_id=shown, revision=revision)
        vlm.source = model_fingerprint(model_id, path, model, revision)
        if adapter is not None:
            vlm.adapter = {"path": str(Path(adapter).resolve()), "sha256": adapter_fingerprint(adapter)}
        return vlm

    @classmethod
    def from_hf(cls, model, processor, model_id: str = "model", revision: str | None = None) -> "VLM":
        """Wrap an already-built HF image-text-to-text model and its processor."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = base.get_decoder()
        layers = getattr(decoder, "layers", None)
        norm = getattr(decoder, "norm", None)
        if layers is None or norm is None:
            raise VlmsteerError(
                f"{model_id}: get_decoder() has no .layers/.norm; use VLM.from_parts to name them"
            )
        unembed = base.get_output_embeddings()
        return cls(model=model, processor=processor, model_id=model_id, layers=layers, norm=norm,
                   unembed=unembed, image_token_ids=frozenset(_image_token_ids(base, processor)),
                   revision=revision, image_encoder=_image_encoder(base))

    @classmethod
    def from_parts(cls, model: torch.nn.Module, processor: Any, *, layers: torch.nn.ModuleList,
                   norm: torch.nn.Module, unembed: torch.nn.Module, image_token_ids: Sequence[int],
                   prepare: Callable[..., dict[str, torch.Tensor]],
                   format_prompt: Callable[[str, bool], str] | None = None,
                   model_id: str = "custom") -> "VLM":
        """Plug in a model that is not an HF image-text-to-text class.

        ``prepare(images, texts)`` must return a dict with at least ``input_ids`` and
        ``attention_mask`` (left padded) plus whatever else ``model(**inputs)`` needs; the
        model's forward must return an object with ``.logits`` and accept
        ``output_hidden_states``. ``format_prompt(text, has_image)`` turns a user prompt into
        the model's prompt string (default: the processor's chat template).
        """
        return cls(model=model, processor=processor, model_id=model_id, layers=layers, norm=norm,
                   unembed=unembed, image_token_ids=frozenset(image_token_ids), prepare_fn=prepare,
                   format_prompt=format_prompt)

    # ------------------------------------------------------------------ facts
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.unembed.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.unembed.weight.shape[0])

    @property
    def dtype(self) -> str:
        return str(next(self.model.parameters()).dtype).replace("torch.", "")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def architecture(self) -> str:
        cfg = getattr(self.model, "config", None)
        archs = getattr(cfg, "architectures", None)
        return archs[0] if archs else type(self.model).__name__

    @property
    def identity(self) -> dict:
        """What this model computes with, by content, whatever path or name it was loaded by:
        its weights' digest (or hub commit), the adapter's digest, the dtype. Outputs record it
        and whatever combines outputs compares it. A model built in Python (no ``source``) is
        identified by a digest of its parameters, computed once."""
        if self.source is None:
            self.source = parameters_fingerprint(self.model)
        return model_identity(self.source, (self.adapter or {}).get("sha256"), self.dtype, self.architecture)

    def layer_index(self, layer: int) -> int:
        """Normalize a layer index (negative counts from the end); error if out of range."""
        return resolve_layer(layer, self.num_layers, self.model_id)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, then unembedding (and the model's logit soft-capping, if any)."""
        logits = self.unembed(self.norm(hidden))
        cap = getattr(self._text_config(), "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _text_config(self):
        cfg = getattr(self.model, "config", None)
        if cfg is None:
            return None
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    # ------------------------------------------------------------------ prompts and batches
    def build_prompt(self, text: str, image: bool = True, answer: str | None = None) -> str:
        """The chat-template prompt for one (image, text) pair; with ``answer``, the full turn.
        Rendered once per distinct pair (questions repeat: the template is a fifth of preparing
        a batch)."""
        key = (text, image, self.format_prompt, getattr(self.processor, "chat_template", None))
        prompt = self._prompts.get(key)
        if prompt is None:
            if self.format_prompt is not None:
                prompt = self.format_prompt(text, image)
            else:
                content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
                messages = [{"role": "user", "content": content}]
                prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            if len(self._prompts) >= 65536:
                self._prompts.clear()
            self._prompts[key] = prompt
        if answer is None:
            return prompt
        return prompt + " " + answer if not prompt.endswith((" ", "\n")) else prompt + answer

    def prepare(self, images: Images, prompts: Sequence[str]) -> Batch:
        """Left-padded model inputs for (image, prompt) pairs (``None`` images: text only).

        Teacher-forced batches append response token ids to this batch
        (:func:`vlmsteer.extract.append_responses`), so response spans are exact.
        """
        if len(images) != len(prompts):
            raise VlmsteerError(f"{len(images)} images but {len(prompts)} prompts")
        pil = decode_images(images, self.max_image_pixels)
        texts = [self.build_prompt(p, image=im is not None) for p, im in zip(prompts, pil)]
        inputs = self._encode(pil, texts)
        regions = TokenRegions.from_batch(inputs["input_ids"], inputs["attention_mask"], self.image_token_ids)
        return Batch(inputs=inputs, regions=regions, prompt_length=inputs["input_ids"].shape[1], texts=texts)

    def _encode(self, images: list[Image.Image | None], texts: list[str]) -> dict[str, torch.Tensor]:
        if self.prepare_fn is not None:
            out = self.prepare_fn(images, texts)
        else:
            tok = self.tokenizer
            old_side = tok.padding_side
            tok.padding_side = "left"
            try:
                kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
                present = [im for im in images if im is not None]
                if present:
                    if len(present) != len(images):
                        raise VlmsteerError("a batch must have an image for every prompt or for none")
                    kwargs["images"] = [[im] for im in images]  # one list of images per prompt
                out = dict(self.processor(**kwargs))
            finally:
                tok.padding_side = old_side
        return {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in out.items()}

    def regions(self, batch: Batch | dict[str, torch.Tensor]) -> TokenRegions:
        if isinstance(batch, Batch):
            return batch.regions
        return TokenRegions.from_batch(batch["input_ids"], batch["attention_mask"], self.image_token_ids)

    # ------------------------------------------------------------------ running
    def model_inputs(self, batch: Batch) -> dict[str, Any]:
        """Forward arguments, with position ids derived from the attention mask so that
        left padding does not change any row's result."""
        inputs = dict(batch.inputs)
        if self.prepare_fn is None and "position_ids" not in inputs and not _has_own_rope_index(self.model):
            mask = inputs["attention_mask"]
            inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return inputs

    @torch.no_grad()
    def forward(self, batch: Batch, **kwargs) -> Any:
        return self.model(**self.model_inputs(batch), **kwargs)

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int = 16, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, use_cache: bool = True,
                 **kwargs) -> "Generation":
        """Generate a response for every row; returns new token ids and decoded text."""
        tok = self.tokenizer
        eos = _eos_ids(self)
        if hasattr(self.model, "generate") and self.prepare_fn is None:
            gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=use_cache,
                              pad_token_id=tok.pad_token_id, eos_token_id=eos or None)
            if do_sample:
                gen_kwargs.update(temperature=temperature, top_p=top_p)
            else:
                gen_kwargs.update(temperature=None, top_p=None, top_k=None)
            seqs = self.model.generate(**batch.inputs, **gen_kwargs, **kwargs)
            new = seqs[:, batch.prompt_length:]
        else:
            new = self._greedy_loop(batch, max_new_tokens, eos)
        return Generation.from_tokens(new, tok, eos)

    def _greedy_loop(self, batch: Batch, max_new_tokens: int, eos: list[int]) -> torch.Tensor:
        """Greedy decoding without a KV cache, for custom models that lack ``generate``."""
        inputs = dict(batch.inputs)
        ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        pad = self.tokenizer.pad_token_id or 0
        eos_ids = torch.tensor(eos or [-1], device=ids.device)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        out = []
        for _ in range(max_new_tokens):
            logits = self.model(input_ids=ids, attention_mask=mask, **inputs).logits[:, -1]
            nxt = torch.where(done, torch.full_like(done, pad, dtype=ids.dtype), logits.argmax(-1))
            out.append(nxt)
            mask = torch.cat([mask, (~done).to(mask.dtype)[:, None]], 1)  # the end token counts, pads after do not
            ids = torch.cat([ids, nxt[:, None]], 1)
            done = done | torch.isin(nxt, eos_ids)
            if bool(done.all()):
                break
        return torch.stack(out, 1) if out else ids[:, :0]

    def describe(self) -> dict:
        """Architecture facts, as ``vlmsteer info`` prints them."""
        return {
            "model": self.model_id,
            "architecture": self.architecture,
            "layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "image_tokens": self.image_token_count(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": self.dtype,
        }

    def image_token_count(self, image: Image.Image | None = None) -> int:
        """Image tokens the processor inserts for one image (a blank 224x224 image by default)."""
        image = image or _blank_image(self)
        batch = self.prepare([image], ["describe the image ."])
        return int(batch.regions.image.sum())


@dataclass
class Generation:
    tokens: torch.Tensor  # (batch, new) token ids, padded after the end token
    texts: list[str]
    lengths: list[int]  # number of response tokens before the end token

    @classmethod
    def from_tokens(cls, tokens: torch.Tensor, tokenizer, eos: list[int]) -> "Generation":
        decoded = [decode_response(row, tokenizer, eos) for row in tokens.tolist()]
        return cls(tokens=tokens, texts=[t for t, _ in decoded], lengths=[n for _, n in decoded])


def decode_response(row: Sequence[int], tokenizer, eos: Sequence[int]) -> tuple[str, int]:
    """A response's text and its number of tokens: the tokens before the first end token."""
    n = next((j for j, t in enumerate(row) if t in eos), len(row))
    return tokenizer.decode(list(row[:n]), skip_special_tokens=True).strip(), n


def _eos_ids(vlm: VLM) -> list[int]:
    ids: set[int] = set()
    gc = getattr(vlm.model, "generation_config", None)
    e = getattr(gc, "eos_token_id", None)
    if isinstance(e, int):
        ids.add(e)
    elif e:
        ids.update(e)
    if vlm.tokenizer.eos_token_id is not None:
        ids.add(vlm.tokenizer.eos_token_id)
    return sorted(ids)


def _image_token_ids(model, processor) -> set[int]:
    """Token ids whose positions the model fills with image features: the config's image token
    (the ground truth), else the processor's."""
    cfg = model.config
    for name in ("image_token_id", "image_token_index"):
        tid = getattr(cfg, name, None)
        if isinstance(tid, int):
            return {tid}
    ids: set[int] = set()
    for obj in (getattr(processor, "tokenizer", None), processor):
        tid = getattr(obj, "image_token_id", None)
        if isinstance(tid, int):
            return {tid}
    return ids


def _image_encoder(model) -> torch.nn.Module | None:
    """The vision tower, under the names transformers' image-text-to-text models give it."""
    for owner in (getattr(model, "model", None), model):
        for name in ("vision_tower", "visual", "vision_model"):
            encoder = getattr(owner, name, None)
            if isinstance(encoder, torch.nn.Module):
                return encoder
    return None


def _has_own_rope_index(model) -> bool:
    inner = getattr(model, "model", model)
    return hasattr(inner, "get_rope_index") or hasattr(model, "get_rope_index")


def _blank_image(vlm: VLM) -> Image.Image:
    return Image.new("RGB", (224, 224), (127, 127, 127))
