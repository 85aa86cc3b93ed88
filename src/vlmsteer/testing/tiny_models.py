"""Tiny, randomly initialised VLMs built fully offline from configs.

Each builder makes a word-level tokenizer, an image processor (the PIL backends, so no
torchvision is needed), the architecture's processor with a chat template in the style of
the real model, and a tiny model; :func:`save_tiny` writes them to a folder that
``VLM.load(folder)`` reads like a hub checkpoint. Later tests and benchmarks use these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from vlmsteer.data import shapes

WORDS = shapes.vocabulary() + ["model", "system", "hello", "reddish", "none", "nonetheless"]


def word_tokenizer(specials: list[str], *, bos: str | None = "<s>", eos: str = "</s>", pad: str = "<pad>",
                   unk: str = "<unk>", extra: dict[str, str] | None = None,
                   words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer with the given special tokens."""
    vocab: dict[str, int] = {}
    for t in [pad, unk, eos] + ([bos] if bos else []) + specials:
        vocab.setdefault(t, len(vocab))
    for w in words or WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, vocab[bos])])
    kwargs = dict(eos_token=eos, unk_token=unk, pad_token=pad, padding_side="left",
                  additional_special_tokens=specials)
    if bos:
        kwargs["bos_token"] = bos
    if extra:
        kwargs["extra_special_tokens"] = extra
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    return fast


def chat_template(user: tuple[str, str], assistant: tuple[str, str], image: str, generation: str) -> str:
    """A chat template: ``user``/``assistant`` are (prefix, suffix); ``image`` the placeholder."""
    return (
        "{% for message in messages %}"
        f"{{% if message['role'] == 'user' %}}{user[0]}{{% else %}}{assistant[0]}{{% endif %}}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{image}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        f"{{% if message['role'] == 'user' %}}{user[1]}{{% else %}}{assistant[1]}{{% endif %}}"
        "{% endfor %}"
        f"{{% if add_generation_prompt %}}{generation}{{% endif %}}"
    )


def _text(**kw) -> dict:
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1)
    base.update(kw)
    return base


def _ids(tok, **names) -> dict[str, int]:
    return {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}


# ---------------------------------------------------------------------------- builders
def build_llava(image_size: int = 32, patch_size: int = 16, vision: dict | None = None, text: dict | None = None,
                vocab_size: int | None = None, vision_feature_layer: int = -1):
    """The tiny LLaVA; the arguments scale it (``benchmarks/scale.py`` builds LLaVA-1.5-7B's
    shapes with them): image size and patch, vision/text config overrides, vocabulary size."""
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    words = WORDS if vocab_size is None else (WORDS + [f"w{i}" for i in range(vocab_size)])[:vocab_size - 6]
    tok = word_tokenizer(["<image>"], extra={"image_token": "<image>"}, words=words)
    ip = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch_size,
                          vision_feature_select_strategy="default",
                          num_additional_image_tokens=1,
                          chat_template=chat_template(("USER: ", " "), ("ASSISTANT: ", "</s>"), "<image>\n",
                                                      "ASSISTANT:"))
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "projection_dim": 32, **(vision or {})}
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(image_size=image_size, patch_size=patch_size, **vision),
        text_config=LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **_text(**(text or {}))),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=vision_feature_layer, image_seq_length=(image_size // patch_size) ** 2,
    )
    return LlavaForConditionalGeneration(cfg), proc


def build_qwen2_vl(v25: bool = False):
    import transformers as tf

    from vlmsteer.loading import _image_only_processor_class

    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]
    tok = word_tokenizer(specials, bos=None, eos="<|im_end|>",
                         extra={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    ip = tf.Qwen2VLImageProcessorPil(min_pixels=32 * 32, max_pixels=32 * 32, patch_size=8, merge_size=2,
                                     temporal_patch_size=2)
    proc_cls = tf.Qwen2_5_VLProcessor if v25 else tf.Qwen2VLProcessor
    template = chat_template(("<|im_start|>user\n", "<|im_end|>\n"), ("<|im_start|>assistant\n", "<|im_end|>\n"),
                             "<|vision_start|><|image_pad|><|vision_end|>", "<|im_start|>assistant\n")
    proc = _image_only_processor_class(proc_cls)(image_processor=ip, tokenizer=tok, chat_template=template)
    ids = _ids(tok, image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
               vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>")
    text = _text(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                 bos_token_id=None, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                     "rope_theta": 10000.0})
    if v25:
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                      patch_size=8, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                      fullatt_block_indexes=[1])
        cfg = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        model = tf.Qwen2_5_VLForConditionalGeneration(cfg)
    else:
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=8,
                      spatial_merge_size=2, temporal_patch_size=2)
        cfg = tf.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        model = tf.Qwen2VLForConditionalGeneration(cfg)
    return model, proc


def build_qwen2_5_vl():
    return build_qwen2_vl(v25=True)


def build_idefics2():
    import transformers as tf

    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]
    tok = word_tokenizer(specials, extra={"image_token": "<image>", "image_boundary_token": "<fake_token_around_image>"})
    ip = tf.Idefics2ImageProcessorPil(do_image_splitting=False, size={"shortest_edge": 32, "longest_edge": 32})
    template = chat_template(("User:", "<end_of_utterance>\n"), ("Assistant:", "<end_of_utterance>\n"), "<image>",
                             "Assistant:")
    proc = tf.Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=template)
    cfg = tf.Idefics2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        perceiver_config=dict(hidden_size=32, resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                              resampler_head_dim=8, num_key_value_heads=2),
        text_config=dict(model_type="mistral", vocab_size=len(tok), pad_token_id=tok.pad_token_id, **_text()),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    return tf.Idefics2ForConditionalGeneration(cfg), proc


def build_idefics3():
    import transformers as tf

    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
        f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok = word_tokenizer(specials)
    ip = tf.Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 32},
                                      max_image_size={"longest_edge": 32})
    template = chat_template(("User:", "<end_of_utterance>\n"), ("Assistant:", "<end_of_utterance>\n"), "<image>",
                             "Assistant:")
    proc = tf.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=template)
    cfg = tf.Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(tok), pad_token_id=tok.pad_token_id, **_text()),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    return tf.Idefics3ForConditionalGeneration(cfg), proc


def build_gemma3():
    import transformers as tf

    specials = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = word_tokenizer(specials, bos="<bos>", eos="<eos>",
                         extra={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                "image_token": "<image_soft_token>"})
    ip = tf.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    template = chat_template(("<start_of_turn>user\n", "<end_of_turn>\n"), ("<start_of_turn>model\n", "<end_of_turn>\n"),
                             "<start_of_image>", "<start_of_turn>model\n")
    proc = tf.Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4, chat_template=template)
    ids = _ids(tok, boi_token_index="<start_of_image>", eoi_token_index="<end_of_image>",
               image_token_index="<image_soft_token>")
    cfg = tf.Gemma3Config(
        text_config=dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, head_dim=16, sliding_window=64, **_text()),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        mm_tokens_per_image=4, **ids,
    )
    return tf.Gemma3ForConditionalGeneration(cfg), proc


def build_llava_onevision():
    import transformers as tf

    from vlmsteer.loading import _image_only_processor_class

    specials = ["<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tok = word_tokenizer(specials, bos=None, eos="<|im_end|>", extra={"image_token": "<image>", "video_token": "<video>"})
    ip = tf.LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=[[32, 32]],
                                            do_pad=True)
    template = chat_template(("<|im_start|>user ", "<|im_end|>"), ("<|im_start|>assistant\n", "<|im_end|>"),
                             "<image>\n", "<|im_start|>assistant\n")
    proc = _image_only_processor_class(tf.LlavaOnevisionProcessor)(
        image_processor=ip, tokenizer=tok, num_image_tokens=16, vision_feature_select_strategy="full",
        chat_template=template, vision_aspect_ratio="anyres_max_9")
    cfg = tf.LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        text_config=dict(model_type="qwen2", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, **_text()),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[32, 32]], vision_feature_select_strategy="full", vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    return tf.LlavaOnevisionForConditionalGeneration(cfg), proc


@dataclass(frozen=True)
class TinySpec:
    name: str
    build: Callable


ARCHITECTURES: dict[str, TinySpec] = {s.name: s for s in [
    TinySpec("llava", build_llava),
    TinySpec("qwen2_vl", build_qwen2_vl),
    TinySpec("qwen2_5_vl", build_qwen2_5_vl),
    TinySpec("idefics2", build_idefics2),
    TinySpec("idefics3", build_idefics3),
    TinySpec("gemma3", build_gemma3),
    TinySpec("llava_onevision", build_llava_onevision),
]}


def save_tiny(name: str, folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny ``name`` model and save model + processor to ``folder``."""
    torch.manual_seed(seed)
    model, processor = ARCHITECTURES[name].build()
    model.eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------- a custom VLM
class ClipOptVLM(torch.nn.Module):
    """The paper's fourth model family in miniature: a CLIP vision encoder, a linear
    connector and an OPT decoder, joined by hand (not an HF image-text-to-text class)."""

    def __init__(self, vocab_size: int, image_token_id: int, pad_token_id: int):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel, OPTConfig, OPTForCausalLM

        vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=16)
        ocfg = OPTConfig(vocab_size=vocab_size, hidden_size=32, ffn_dim=64, num_hidden_layers=3,
                         num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                         pad_token_id=pad_token_id, do_layer_norm_before=True)
        self.vision = CLIPVisionModel(vcfg)
        self.connector = torch.nn.Linear(32, 32)
        self.lm = OPTForCausalLM(ocfg)
        self.image_token_id = image_token_id

    def forward(self, input_ids, attention_mask, pixel_values=None, output_hidden_states=False, **kwargs):
        embeds = self.lm.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            feats = self.connector(self.vision(pixel_values=pixel_values).last_hidden_state[:, 1:])
            mask = (input_ids == self.image_token_id)[..., None]
            embeds = embeds.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask,
                       output_hidden_states=output_hidden_states, **kwargs)


def build_clip_opt_vlm(seed: int = 0):
    """A ``VLM`` around :class:`ClipOptVLM`, plugged in with ``VLM.from_parts``."""
    from transformers import CLIPImageProcessorPil

    from vlmsteer.model import VLM

    torch.manual_seed(seed)
    tok = word_tokenizer(["<image>"])
    image_id = tok.convert_tokens_to_ids("<image>")
    ip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model = ClipOptVLM(len(tok), image_id, tok.pad_token_id).eval()

    def format_prompt(text: str, has_image: bool) -> str:
        return ("<image>" * 4 if has_image else "") + f" user : {text} assistant :"

    def prepare(images, texts):
        tok.padding_side = "left"
        enc = tok(list(texts), return_tensors="pt", padding=True)
        out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if images and images[0] is not None:
            out["pixel_values"] = ip(images, return_tensors="pt")["pixel_values"]
        return out

    decoder = model.lm.model.decoder
    return VLM.from_parts(model, tok, layers=decoder.layers, norm=decoder.final_layer_norm,
                          unembed=model.lm.lm_head, image_token_ids=[image_id], prepare=prepare,
                          format_prompt=format_prompt, model_id="tiny-clip-opt")
