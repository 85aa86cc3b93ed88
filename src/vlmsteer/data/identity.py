"""What a dataset *is*, by content: per sample a digest of its text and its image bytes.

Outputs (stores, runs, data-parallel parts) record these digests instead of paths as typed,
so the same dataset named by another path, or from another working folder, is recognised as
the same, and another dataset that happens to use the same ids is not.

Images are read here once per distinct file (VQAv2 lists ~5 questions per image); only
regular files are opened (a FIFO or a device named as an image would block or stream
forever), and an image whose header announces more than ``max_pixels`` pixels is refused
before anything is decoded (a 140 KB PNG can announce 12000 x 12000).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from PIL import Image

from vlmsteer.data.sample import Sample
from vlmsteer.errors import VlmsteerError, input_error

# 4096 x 4096: well below PIL's decompression-bomb limit (89.5 M), above every VQAv2/COCO image
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
_DIGEST_SIZE = 16


def regular_file(path: str | Path, what: str = "image") -> os.stat_result:
    """``stat`` of ``path`` (symlinks followed), which must be a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise input_error(path, f"{what} not found") from None
    except OSError as exc:
        raise input_error(path, f"cannot read {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, socket or device)"
        raise input_error(path, f"{what} is {kind}; only regular files are read")
    return st


def check_pixels(size: tuple[int, int], max_pixels: int | None, where: str | Path) -> None:
    """A one-line error for an image larger than ``max_pixels`` (None: no limit)."""
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise VlmsteerError(f"{where}: image of {w}x{h} = {w * h:,} pixels is above the limit of "
                            f"{max_pixels:,}; raise the limit to read it", "max_image_pixels")


@contextmanager
def open_image(source, where: str | Path) -> Iterator[Image.Image]:
    """``PIL.Image.open(source)`` (a path or a file object) with one-line errors naming
    ``where``: for a file PIL cannot read, and for what the block does with it (decoding a
    truncated file fails only there). PIL's bomb warning is left to the caller's pixel limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                yield im
    except VlmsteerError:
        raise
    except Image.DecompressionBombError:
        raise VlmsteerError(f"{where}: image is a decompression bomb (PIL refused its size)",
                            "max_image_pixels") from None
    except Exception as exc:  # PIL raises several types for files it cannot read
        raise input_error(where, f"cannot decode image ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else 'corrupt'})") from None


def image_digest(path: str | Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> str:
    """Digest of an image file's bytes (read in 1 MiB blocks: memory stays flat whatever the
    file's size), after checking it is a regular file of at most ``max_pixels`` pixels."""
    regular_file(path)
    try:
        with open(path, "rb") as f:
            with open_image(f, path) as im:  # the header only
                check_pixels(im.size, max_pixels, path)
            f.seek(0)
            return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=_DIGEST_SIZE)).hexdigest()
    except OSError as exc:
        raise input_error(path, f"cannot read image ({exc.strerror or exc})") from None


def pil_digest(image: Image.Image) -> str:
    """Digest of an in-memory image's mode, size and pixels."""
    h = hashlib.blake2b(f"{image.mode}:{image.size}".encode(), digest_size=_DIGEST_SIZE)
    h.update(image.tobytes())
    return h.hexdigest()


def _text_digest(sample: Sample) -> "hashlib._Hash":
    text = json.dumps([sample.id, sample.prompt, sample.answers, sample.answer_type, sample.question_type,
                       sample.captions, sample.meta, [str(a) for a in sample.answer_ids]],
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=_DIGEST_SIZE)


def fingerprint_samples(samples: Sequence[Sample], max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> str:
    """Give every sample its ``digest`` (text + image bytes) and ``image_digest``, reading each
    distinct image file once (samples that have them keep them); returns the dataset's digest:
    the samples' ids and digests in order."""
    by_path: dict[str, str] = {}
    whole = hashlib.sha256()
    for s in samples:
        if s.digest is None:
            if s.image is None:
                s.image_digest = None
            elif isinstance(s.image, Image.Image):
                s.image_digest = pil_digest(s.image)
            else:
                key = str(s.image)
                if key not in by_path:
                    by_path[key] = image_digest(key, max_pixels)
                s.image_digest = by_path[key]
            h = _text_digest(s)
            h.update(str(s.image_digest).encode())
            s.digest = h.hexdigest()
        whole.update(f"{s.id}\t{s.digest}\n".encode())
    return whole.hexdigest()


def dataset_identity(samples: Sequence[Sample]) -> dict:
    """``{"n", "digest"}`` of samples (fingerprinted here if they are not yet)."""
    return {"n": len(samples), "digest": fingerprint_samples(samples)}


def check_unique_ids(ids: Sequence, source: str | Path, where: Callable | None = None) -> None:
    """A one-line error naming the first id used twice and both places (``where(i)`` names
    the i-th entry; default ``entry i``)."""
    seen: dict = {}
    name = where or (lambda i: f"entry {i}")
    for i, key in enumerate(ids):
        first = seen.setdefault(key, i)
        if first != i:
            raise input_error(source, f"duplicate id {key!r} ({name(first)} and {name(i)}); ids must be unique")
