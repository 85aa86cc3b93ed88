"""HTML reports (jinja2, autoescaped) and plots."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from vlmsteer.errors import VlmsteerError

log = logging.getLogger(__name__)


def environment() -> Environment:
    return Environment(loader=PackageLoader("vlmsteer", "report/templates"),
                       autoescape=select_autoescape(["html", "xml", "j2"]))


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def image_data_uri(path: str | Path | None, size: int = 96, digest: str | None = None) -> str | None:
    """An image as an embedded PNG data URI (so pages open from disk with no network).

    ``digest`` (a store record's ``image_digest``) is checked against the file's bytes: an
    image that is missing or is not the one the features were extracted from is a one-line
    error, never another picture. A relative path with no digest (a store from an older
    version or another tool) is not guessed at from the working folder: no thumbnail."""
    if not path:
        return None
    from PIL import Image

    from vlmsteer.data.identity import DEFAULT_MAX_IMAGE_PIXELS, image_digest
    from vlmsteer.loading import load_image

    if digest is None and not Path(path).is_absolute():
        log.warning("%s: relative image path without a content digest; no thumbnail", path)
        return None
    if digest is not None and image_digest(path, max_pixels=None) != digest:
        raise VlmsteerError(f"{path}: not the image the features were extracted from (its bytes changed); "
                            "restore the dataset, or leave images out of the report", "top_images")
    # an image whose bytes match was accepted by the extraction's pixel limit: decode it as it is
    im = load_image(path, None if digest is not None else DEFAULT_MAX_IMAGE_PIXELS).resize((size, size), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
