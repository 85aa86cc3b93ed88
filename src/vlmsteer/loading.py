"""Loading what a VLM is made of: the demo model's folder, dtypes, images, processors (with an
image-only path where torchvision is missing) and LoRA adapters (with a fingerprint of their
weights). :class:`vlmsteer.model.VLM` puts them together."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path

import torch
from PIL import Image

from vlmsteer.data.identity import DEFAULT_MAX_IMAGE_PIXELS, check_pixels, open_image, regular_file
from vlmsteer.extras import require
from vlmsteer.errors import VlmsteerError

DEMO_MODEL_NAMES = {"shapes-llava", "vlmsteer/shapes-llava", "shapes_llava"}
DTYPES = {"auto": None, "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def demo_model_path() -> Path:
    """Folder of the shipped demo model (``shapes-llava``)."""
    return Path(__file__).parent / "assets" / "shapes-llava"


def resolve_model_id(name: str | Path, revision: str | None = None) -> str:
    """Map the demo model's names to its folder; a folder or a hub id is returned unchanged.

    A name that is neither a folder nor a shipped model, and is not in the local Hugging Face
    cache, is looked up on the hub only when the hub can be reached: offline, a typo is one
    line at once (naming the closest shipped model), not a minute of download retries."""
    if str(name).lower() in DEMO_MODEL_NAMES:
        path = demo_model_path()
        if not (path / "config.json").exists():
            raise VlmsteerError(f"{path}: the shipped demo model is missing from this installation")
        return str(path)
    name = str(name)
    if Path(name).exists():
        return name
    close = difflib.get_close_matches(name.lower(), sorted(DEMO_MODEL_NAMES), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "the shipped model is shapes-llava"
    if name.startswith(("/", "./", "../", "~")) or name.endswith("/") or name.count("/") > 1:
        raise VlmsteerError(f"{name}: no such model folder ({hint})")
    if not _in_hub_cache(name, revision) and not hub_reachable():
        raise VlmsteerError(f"{name}: not a model folder or a shipped model ({hint}), and the Hugging Face hub "
                            "cannot be reached to look it up (offline?)")
    return name


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)
    except Exception:  # an id the hub library itself rejects: let loading say what is wrong
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) answers a TCP connection within ``timeout``
    seconds; False at once when ``HF_HUB_OFFLINE`` is set. Name resolution runs in a daemon
    thread, so a resolver that hangs costs ``timeout`` seconds, not its own."""
    import socket
    import threading
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    answered: list[bool] = []

    def connect():
        try:
            socket.create_connection((url.hostname or "", port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            answered.append(False)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(answered and answered[0])


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this machine has, or a one-line error saying why not."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise VlmsteerError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps", "device") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise VlmsteerError(f"device {device!r}: this machine (or this torch build) has no CUDA GPU", "device")
        if dev.index is not None and dev.index >= count:
            raise VlmsteerError(f"device {device!r}: only {count} CUDA GPU(s) here (cuda:0..cuda:{count - 1})",
                                "device")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise VlmsteerError(f"device {device!r}: MPS is not available here", "device")
    elif dev.type not in ("cpu", "cuda", "mps", "meta", "xpu"):
        raise VlmsteerError(f"device {device!r}: not supported; use cpu, cuda, cuda:N or mps", "device")
    return dev


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise VlmsteerError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_image(image: Image.Image | str | Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """An RGB PIL image from a PIL image or a path; a one-line error if it cannot be read, is
    not a regular file, or announces more than ``max_pixels`` pixels (checked from the header,
    before decoding)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    regular_file(path)
    with open_image(path, path) as im:
        check_pixels(im.size, max_pixels, path)
        return im.convert("RGB")


def decode_images(images, max_pixels: int | None) -> list[Image.Image | None]:
    """A batch's images as RGB PIL images, each path decoded once: VQAv2 lists an image's
    ~5 questions together, so most of a batch shares a few images. Images above
    ``max_pixels`` are refused before decoding."""
    decoded: dict[str, Image.Image] = {}
    out: list[Image.Image | None] = []
    for im in images:
        if im is None or isinstance(im, Image.Image):
            out.append(None if im is None else load_image(im, max_pixels))
            continue
        key = str(im)
        if key not in decoded:
            decoded[key] = load_image(im, max_pixels)
        out.append(decoded[key])
    return out


def check_images(samples, progress: bool = False, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> int:
    """Decode every distinct image of ``samples`` (a missing, truncated or corrupt one is a
    one-line error naming it); returns how many were decoded."""
    from vlmsteer.progress import progress_bar

    paths = sorted({s.image_path for s in samples if s.image_path})
    with progress_bar("decoding images", len(paths), enabled=progress) as advance:
        for image in paths:
            load_image(image, max_pixels)
            advance(1)
    return len(paths)


def _image_only_processor_class(cls):
    """``cls`` without its video part, for processors whose video half needs torchvision."""

    class ImageOnlyProcessor(cls):
        @classmethod
        def get_attributes(klass):
            return [a for a in super().get_attributes() if "video" not in a]

    ImageOnlyProcessor.__name__ = cls.__name__
    ImageOnlyProcessor.__qualname__ = cls.__qualname__
    return ImageOnlyProcessor


def load_processor(path: str, trust_remote_code: bool = False, revision: str | None = None):
    """``AutoProcessor``, or the same processor class built without its video processor when
    that part cannot be built (no torchvision)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except (ImportError, ValueError, TypeError, AttributeError, OSError) as first:
        cls_name = _processor_class_name(path)
        if cls_name is None:
            raise VlmsteerError(f"{path}: cannot load a processor ({first})") from None
        import transformers

        cls = getattr(transformers, cls_name, None)
        if cls is None or "video_processor" not in cls.get_attributes():
            raise VlmsteerError(f"{path}: cannot load processor {cls_name} ({first})") from None
        return _image_only_processor_class(cls).from_pretrained(
            path, trust_remote_code=trust_remote_code, revision=revision
        )


def _processor_class_name(path: str) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        f = Path(path) / name
        if f.exists():
            try:
                cls = json.loads(f.read_text()).get("processor_class")
            except json.JSONDecodeError:
                continue
            if cls:
                return cls
    return None


def _hash_files(files: list[Path], root: Path, digest, sampled: bool) -> None:
    """Names and bytes of ``files`` into ``digest``; ``sampled``: size + 64 evenly spread
    64 KiB blocks per file instead of every byte (weights of 7B+ models)."""
    for f in files:
        digest.update(str(f.relative_to(root)).encode())
        size = f.stat().st_size
        digest.update(str(size).encode())
        with open(f, "rb") as fh:
            if not sampled:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                continue
            block = 1 << 16
            for i in range(64):
                fh.seek(max(0, size - block) * i // 63)
                digest.update(fh.read(block))


FULL_HASH_LIMIT = 1 << 30  # model folders up to 1 GiB are hashed byte for byte


def adapter_fingerprint(adapter: str | Path) -> str:
    """SHA-256 over an adapter folder's config and weight files (names and bytes)."""
    path = Path(adapter)
    digest = hashlib.sha256()
    files = sorted(f for f in path.iterdir() if f.is_file() and (f.name == "adapter_config.json"
                                                                 or f.name.startswith("adapter_model")))
    _hash_files(files, path, digest, sampled=False)
    return digest.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_fingerprint(model_id: str | Path, resolved: str, model=None, revision: str | None = None) -> dict:
    """What identifies a model's weights, whatever name it was loaded by: for a folder, a
    digest of its config and weight files (every byte up to 1 GiB, else 64 blocks per file,
    said in ``"hash"``); for a hub id, the commit it resolved to."""
    path = Path(resolved)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and (f.name == "config.json"
                                                                       or f.suffix in WEIGHT_SUFFIXES))
        sampled = sum(f.stat().st_size for f in files) > FULL_HASH_LIMIT
        digest = hashlib.sha256()
        _hash_files(files, path, digest, sampled)
        return {"weights_sha256": digest.hexdigest(), "hash": "sampled" if sampled else "full",
                "path": os.path.realpath(path)}
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return {"hub_id": str(model_id), "commit": commit or revision}


def parameters_fingerprint(model) -> dict:
    """A digest of a model's parameters and buffers (names and bytes): the identity of a model
    built in Python rather than loaded from files."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"weights_sha256": digest.hexdigest(), "hash": "parameters"}


def model_identity(source: dict, adapter_sha256: str | None, dtype: str, architecture: str | None) -> dict:
    """The compared identity of a model: weights (digest, or hub id @ commit), adapter, dtype."""
    weights = source.get("weights_sha256") or f"{source.get('hub_id')}@{source.get('commit')}"
    return {"weights": weights, "adapter": adapter_sha256, "dtype": dtype, "architecture": architecture}


def _attach_adapter(model, adapter: str | Path):
    PeftModel = require("peft", "loading a LoRA adapter").PeftModel

    path = Path(adapter)
    if not (path / "adapter_config.json").exists():
        raise VlmsteerError(f"{path}: not a LoRA adapter folder (no adapter_config.json)")
    import warnings

    with warnings.catch_warnings():  # peft reads a transformers attribute deprecated in 5.x
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(model, str(path))
