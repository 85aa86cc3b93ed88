"""HTML reports (jinja2, autoescaped) and plots."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape


def environment() -> Environment:
    return Environment(loader=PackageLoader("vlmsteer", "report/templates"),
                       autoescape=select_autoescape(["html", "xml", "j2"]))


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def image_data_uri(path: str | Path | None, size: int = 96) -> str | None:
    """An image as an embedded PNG data URI (so pages open from disk with no network)."""
    if not path:
        return None
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((size, size), Image.NEAREST)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
