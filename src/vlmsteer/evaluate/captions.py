"""``vlmsteer eval captions``: generate captions, score them (CIDEr, style keywords), compare runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vlmsteer.data.keywords import STYLE_KEYWORDS, KeywordSet
from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError
from vlmsteer.evaluate.cider import Tokenizer, cider
from vlmsteer.evaluate.shapes_captions import content_kept


@dataclass
class CaptionReport:
    n: int
    cider: float | None  # None when the samples carry no reference captions
    style_counts: dict[str, int]  # captions containing at least one keyword of the style
    style_share: dict[str, float]  # the same in % of captions
    keyword_counts: dict[str, int]  # keyword occurrences per style (a caption may have several)
    per_sample_cider: list[float | None]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("per_sample_cider")
        return d


def evaluate_captions(samples: list[Sample], captions: list[str], styles: dict[str, KeywordSet] | None = None,
                      tokenizer: Tokenizer = "auto") -> CaptionReport:
    styles = STYLE_KEYWORDS if styles is None else styles
    if len(samples) != len(captions):
        raise VlmsteerError(f"{len(captions)} captions for {len(samples)} samples")
    if not samples:
        raise VlmsteerError("no captions to evaluate")
    score, per = None, [None] * len(captions)
    if samples and all(s.captions for s in samples):
        keys = [str(i) for i in range(len(samples))]
        score, per_image = cider(dict(zip(keys, captions)), {k: s.captions for k, s in zip(keys, samples)},
                                 tokenizer)
        per = [per_image[k] for k in keys]
    n = len(captions)
    counts = {name: kw.count(captions) for name, kw in styles.items()}
    return CaptionReport(
        n=n, cider=score, style_counts=counts,
        style_share={name: 100.0 * c / max(1, n) for name, c in counts.items()},
        keyword_counts={name: sum(len(kw.find(c)) for c in captions) for name, kw in styles.items()},
        per_sample_cider=per)


def compare_caption_runs(baseline: list[str], steered: list[str], base_report: CaptionReport,
                         report: CaptionReport, styles: dict[str, KeywordSet] | None = None,
                         scenes: list[dict] | None = None) -> dict:
    """Captions changed, captions gaining / losing each style, keyword and CIDEr deltas; with
    ``scenes`` (each image's, in a shapes world), the content the changed captions kept."""
    styles = STYLE_KEYWORDS if styles is None else styles
    if len(baseline) != len(steered):
        raise VlmsteerError(f"baseline has {len(baseline)} captions, steered run {len(steered)}")
    per_style = {}
    for name, kw in styles.items():
        before = [kw.matches(c) for c in baseline]
        after = [kw.matches(c) for c in steered]
        per_style[name] = {
            "gained": sum(a and not b for a, b in zip(after, before)),
            "lost": sum(b and not a for a, b in zip(after, before)),
            "share_before": base_report.style_share[name], "share_after": report.style_share[name],
            "share_delta": report.style_share[name] - base_report.style_share[name],
            "keywords_before": base_report.keyword_counts[name], "keywords_after": report.keyword_counts[name],
        }
    cider_delta = None
    if report.cider is not None and base_report.cider is not None:
        cider_delta = report.cider - base_report.cider
    out = {"n": len(steered), "captions_changed": sum(a != b for a, b in zip(baseline, steered)),
           "styles": per_style, "cider_before": base_report.cider, "cider_after": report.cider,
           "cider_delta": cider_delta}
    if scenes is not None:
        out["content"] = content_kept(baseline, steered, scenes)
    return out
