"""COCO captions: the official ``captions_<split>.json`` and Karpathy's ``dataset_coco.json``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from vlmsteer.data.identity import check_unique_ids, regular_file
from vlmsteer.data.io import dataset_file, read_json, require_keys, require_string
from vlmsteer.data.sample import Sample, subsample
from vlmsteer.errors import input_error

DEFAULT_CAPTION_PROMPT = "Describe the image."
KARPATHY_SPLITS = ("train", "restval", "val", "test")


def load_coco_captions(path: str | Path, split: str = "val2014", images: str | Path | None = None,
                       limit: int | None = None, seed: int = 0, prompt: str = DEFAULT_CAPTION_PROMPT,
                       check_images: bool = True, allow_outside_images: bool = False) -> list[Sample]:
    """Read either format. ``path`` is a JSON file or a folder holding ``captions_<split>.json``
    (official) or ``dataset_coco.json`` (Karpathy; ``split`` is then train/restval/val/test)."""
    path = Path(path)
    if path.is_dir():
        official = path / f"captions_{split}.json"
        if not official.exists():
            official = path / "annotations" / f"captions_{split}.json"
        karpathy = path / "dataset_coco.json"
        if official.exists():
            return _official(official, split, images or path / split, limit, seed, prompt, check_images,
                             allow_outside_images)
        if karpathy.exists():
            return _karpathy(karpathy, split, images or path, limit, seed, prompt, check_images, allow_outside_images)
        raise input_error(path / f"captions_{split}.json", f"no COCO captions file for split {split!r}")
    data = read_json(path, "COCO captions file")
    if isinstance(data, dict) and "annotations" in data:
        return _official(path, split, images or path.parent / split, limit, seed, prompt, check_images,
                         allow_outside_images, data)
    return _karpathy(path, split, images or path.parent, limit, seed, prompt, check_images, allow_outside_images, data)


def _official(path, split, image_dir, limit, seed, prompt, check_images, allow_outside, data=None) -> list[Sample]:
    data = data if data is not None else read_json(path, "COCO captions file")
    require_keys(data, ["images", "annotations"], path)
    caps = defaultdict(list)
    styles = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        require_keys(ann, ["image_id", "caption"], path, f"annotations[{i}]")
        caps[ann["image_id"]].append(require_string(ann["caption"], path, f"annotations[{i}]: 'caption'"))
        styles[ann["image_id"]].append(ann.get("style"))
    if not isinstance(data["images"], list):
        raise input_error(path, "'images' must be a list")
    for i, img in enumerate(data["images"]):
        require_keys(img, ["id", "file_name"], path, f"images[{i}]")
    check_unique_ids([str(img["id"]) for img in data["images"]], path, lambda i: f"images[{i}]")
    samples = []
    for img in subsample(data["images"], limit, seed):
        image = dataset_file(image_dir, img["file_name"], path, f"image {img['id']}", allow_outside)
        if check_images:
            regular_file(image, f"image {img['id']}")
        meta = {"image_id": img["id"], "split": split}
        if any(s is not None for s in styles[img["id"]]):
            meta["caption_styles"] = styles[img["id"]]
        samples.append(Sample(id=str(img["id"]), image=image, prompt=prompt, captions=caps[img["id"]], meta=meta))
    return samples


def _karpathy(path, split, image_root, limit, seed, prompt, check_images, allow_outside, data=None) -> list[Sample]:
    data = data if data is not None else read_json(path, "Karpathy COCO file")
    require_keys(data, ["images"], path)
    if split not in KARPATHY_SPLITS:
        raise input_error(path, f"unknown Karpathy split {split!r}; choose one of: {', '.join(KARPATHY_SPLITS)}")
    chosen = [im for im in data["images"] if isinstance(im, dict) and im.get("split") == split]
    check_unique_ids([str(im.get("cocoid", im.get("imgid"))) for im in chosen], path,
                     lambda i: f"image {chosen[i].get('filename')!r}")
    samples = []
    for im in subsample(chosen, limit, seed):
        require_keys(im, ["filename", "sentences"], path, "images[]")
        name = str(Path(im.get("filepath", "")) / str(im["filename"]))
        image = dataset_file(image_root, name, path, f"image {im['filename']!r}", allow_outside)
        if check_images:
            regular_file(image, "image")
        image_id = im.get("cocoid", im.get("imgid"))
        captions = [s["raw"] if isinstance(s, dict) else str(s) for s in im["sentences"]]
        samples.append(Sample(id=str(image_id), image=image, prompt=prompt, captions=captions,
                              meta={"image_id": image_id, "split": split}))
    return samples
