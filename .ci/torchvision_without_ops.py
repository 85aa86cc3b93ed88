"""Make PyPI's torchvision importable beside a CPU build of torch (the vLLM job only).

PyPI's Linux torchvision wheels link their C++ operators against CUDA torch; beside torch's CPU
build the operator library does not load and ``import torchvision`` then fails while registering
fake kernels for the missing operators. vLLM's LLaVA imports transformers' Pixtral image
processor, which imports ``torchvision.transforms.v2`` (pure Python). This rewrites the installed
``torchvision/__init__.py`` so the two operator-registration modules load only where the operator
library did: nothing else of torchvision changes, and a torchvision whose operators load (a GPU
machine's) behaves exactly as before. Idempotent."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

MARK = "# vlmsteer CI: operator registrations only where torchvision's operators loaded"

spec = importlib.util.find_spec("torchvision")
if spec is None or spec.origin is None:
    sys.exit("torchvision is not installed")
init = pathlib.Path(spec.origin)
text = init.read_text()
if MARK in text:
    sys.exit(0)
old = "from torchvision import (\n    _autograd_registrations,\n    _meta_registrations,\n"
if old not in text:
    sys.exit(f"{init}: unexpected layout; update .ci/torchvision_without_ops.py for this torchvision")
new = (f"{MARK}\nif extension._has_ops():\n    from torchvision import _autograd_registrations, _meta_registrations\n"
       "from torchvision import (\n")
init.write_text(text.replace(old, new))
print(f"patched {init}")
