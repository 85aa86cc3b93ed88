"""Build the demo model's tokenizer, processor and (untrained) LLaVA model.

The demo model is an ordinary ``LlavaForConditionalGeneration``: a tiny CLIP vision tower
(32x32 images, 16 px patches, so one patch per scene cell and 4 image tokens), a
two-layer MLP connector and a tiny Llama decoder with a word-level tokenizer. It is saved
with ``save_pretrained`` and loaded through the same code path as LLaVA-1.5.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from vlmsteer.data import shapes

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
IMAGE_TOKEN = "<image>"

# LLaVA-1.5's conversation format, written as a chat template over typed content parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class DemoArchitecture:
    image_size: int = shapes.IMAGE_SIZE
    patch_size: int = 16
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 512
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512
    max_positions: int = 96
    initializer_range: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer(words: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer; ``words`` defaults to the shapes vocabulary."""
    words = shapes.vocabulary() if words is None else words
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side="left",
        model_max_length=DemoArchitecture.max_positions,
    )
    return fast


def build_processor(arch: DemoArchitecture | None = None, words: list[str] | None = None) -> LlavaProcessor:
    arch = arch or DemoArchitecture()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": arch.image_size},
        crop_size={"height": arch.image_size, "width": arch.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(words),
        patch_size=arch.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(processor: LlavaProcessor, arch: DemoArchitecture | None = None, seed: int = 0):
    import torch

    arch = arch or DemoArchitecture()
    tok = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=arch.vision_hidden,
        intermediate_size=arch.vision_intermediate,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        initializer_range=arch.initializer_range,
        projection_dim=arch.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=arch.text_hidden,
        intermediate_size=arch.text_intermediate,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        num_key_value_heads=arch.text_heads,
        max_position_embeddings=arch.max_positions,
        initializer_range=arch.initializer_range,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    n_image_tokens = (arch.image_size // arch.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=n_image_tokens,
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model
