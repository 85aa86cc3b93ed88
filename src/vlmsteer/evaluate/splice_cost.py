"""The downstream cost of a concept dictionary, as the field reports it ("loss recovered").

The model re-reads its own responses (the store's records: image, prompt, response) and the
next-token cross-entropy of those responses is measured three times: clean; with the residual
at the store's layer replaced by the dictionary's reconstruction at the store's selector
positions (the last prompt position, the response tokens, the image or text tokens — each
position spliced on its own); with the residual zeroed there. Only tokens predicted at or after
the first spliced position count (the others cannot change).
``loss recovered = (zero − spliced) / (zero − clean)``: 1 when the reconstruction loses nothing
the model uses, 0 when it is as bad as deleting the residual.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vlmsteer.concepts.dictionary import ConceptDictionary
from vlmsteer.data.identity import image_digest
from vlmsteer.errors import VlmsteerError
from vlmsteer.extract import append_responses, response_ids, select_positions
from vlmsteer.hooks import edit_residual
from vlmsteer.loading import load_image
from vlmsteer.model import VLM
from vlmsteer.progress import progress_bar
from vlmsteer.positions import Selector
from vlmsteer.steer.dictionary_edit import EditMode, dictionary_delta
from vlmsteer.steer.vector import check_same_model
from vlmsteer.store import FeatureStore


@dataclass(frozen=True)
class SpliceCost:
    positions: str  # the selector's positions, in words
    n_samples: int
    n_tokens: int  # response tokens scored
    clean: float  # mean next-token cross-entropy (nats per token)
    spliced: float
    zero: float

    @property
    def loss_recovered(self) -> float:
        gap = self.zero - self.clean
        return float("nan") if gap <= 0 else (self.zero - self.spliced) / gap

    def to_dict(self) -> dict:
        return {**asdict(self), "loss_recovered": self.loss_recovered}


def usable_records(store: FeatureStore) -> tuple[list[dict], str | None]:
    """The store's records the model can re-read (found, with a prompt, a response and an image
    file, or no image), and why there are none if so."""
    if not store.header.get("selector"):
        return [], "the store records no token selector (imported features): the positions to splice are unknown"
    records = store.records
    if not any(r.get("response") for r in records):
        return [], "the store's records have no responses"
    keep = [r for r in records if r.get("found") and r.get("response") and r.get("prompt") is not None]
    missing = [r for r in keep if r.get("image") and not Path(r["image"]).is_file()]
    if missing:
        return [], f"image {missing[0]['image']} (sample {missing[0]['id']}) is gone"
    return keep, None


@torch.no_grad()
def splice_cost(vlm: VLM, store: FeatureStore, dictionary: ConceptDictionary, layer: int, n_samples: int = 100,
                seed: int = 0, batch_size: int = 16, progress: bool = False) -> SpliceCost:
    """Cross-entropy of ``n_samples`` of the store's responses (a seeded subset), clean, with
    ``dictionary``'s reconstruction spliced in at ``layer``, and with the residual zeroed."""
    records, why = usable_records(store)
    if not records:
        raise VlmsteerError(f"{store.path}: cannot measure the splice cost: {why}")
    recorded = store.header.get("model")
    check_same_model(recorded, vlm, "feature store")
    if isinstance(recorded, dict) and recorded.get("adapter") != vlm.identity["adapter"]:
        def name(digest):
            return f"adapter {str(digest)[:12]}" if digest else "no adapter"
        raise VlmsteerError(f"the feature store was made with {name(recorded.get('adapter'))} but {vlm.model_id} "
                            f"has {name(vlm.identity['adapter'])}: measure the splice cost on the store's own model",
                            "adapter")
    selector = Selector(**store.header["selector"])
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(records), size=min(n_samples, len(records)), replace=False).tolist())
    layer = vlm.layer_index(layer)
    totals = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_tokens = 0
    edits = {"spliced": dictionary_delta(dictionary, EditMode.SPLICE),
             "zero": dictionary_delta(dictionary, EditMode.ZERO)}
    with progress_bar("splice cost", len(chosen), enabled=progress) as advance:
        for a in range(0, len(chosen), batch_size):
            rows = [records[i] for i in chosen[a:a + batch_size]]
            images = [_image(r) for r in rows]
            prompt = vlm.prepare(images, [r["prompt"] for r in rows])
            responses = response_ids(vlm, prompt.texts, [r["response"] for r in rows])
            full = append_responses(vlm, prompt, responses)
            p = full.prompt_length
            mask = torch.zeros(full.input_ids.shape, dtype=torch.bool)
            scored = torch.zeros(full.input_ids.shape, dtype=torch.bool)  # targets whose prediction can change
            for i, resp in enumerate(responses):
                pos = [q for q in select_positions(vlm, full, selector, i, resp) if q >= 0]
                if not pos or not resp:
                    continue
                mask[i, pos] = True
                scored[i, max(p, min(pos) + 1):p + len(resp)] = True
            targets = full.input_ids[:, 1:].cpu()
            keep = scored[:, 1:]
            n_tokens += int(keep.sum())
            for name in totals:
                edit = None if name == "clean" else _edit_at(mask, edits[name])
                with edit_residual(vlm.layers, {layer: edit} if edit else {}):
                    logits = vlm.forward(full).logits[:, :-1].float().cpu()
                ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
                totals[name] += float(ce[keep].sum())
            advance(len(rows))
    if n_tokens == 0:
        raise VlmsteerError(f"{store.path}: no response token follows the spliced positions")
    return SpliceCost(selector.describe(), len(chosen), n_tokens,
                      *(totals[k] / n_tokens for k in ("clean", "spliced", "zero")))


def _edit_at(mask: torch.Tensor, delta):
    def edit(hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        m = mask.to(hidden.device)
        out = hidden.clone()
        out[m] = hidden[m] + delta(hidden[m])
        return out
    return edit


def _image(record: dict):
    path = record.get("image")
    if not path:
        return None
    digest = record.get("image_digest")
    if digest is not None and image_digest(path, max_pixels=None) != digest:
        raise VlmsteerError(f"{path} changed since the features were extracted (sample {record['id']})")
    return load_image(path)
