"""Optional dependencies: each belongs to an extra of the package, and a missing one is a
one-line error that names the extra to install.

==============  ==============  ====================================================
extra           package         needed for
==============  ==============  ====================================================
``captions``    pycocoevalcap   CIDEr (``eval captions`` on data with references)
``ot``          POT             optimal-transport concept matching (``shift --matching ot``)
``plots``       matplotlib      PNG figures (sweep, separability, shift, concept PCA)
``finetune``    peft            LoRA fine-tuning and loading adapters
``accelerate``  accelerate      ``--device-map auto`` (a model larger than one device)
``faiss``       faiss-cpu       ``concepts --backend faiss`` (faiss-gpu works too)
==============  ==============  ====================================================

``pip install "vlmsteer[all]"`` installs every one; without them vlmsteer still extracts
features, learns concepts, builds and applies steering vectors and scores VQA.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vlmsteer.errors import VlmsteerError

EXTRAS = {"pycocoevalcap": ("captions", "pycocoevalcap"), "ot": ("ot", "POT"), "matplotlib": ("plots", "matplotlib"),
          "peft": ("finetune", "peft"), "accelerate": ("accelerate", "accelerate"), "faiss": ("faiss", "faiss-cpu")}


def available(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def require(module: str, purpose: str) -> ModuleType:
    """``module`` imported, or a one-line error: ``<purpose> needs <package>: pip install
    "vlmsteer[<extra>]"``."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError:
        extra, package = EXTRAS[top]
        raise VlmsteerError(f"{purpose} needs the optional package {package}: "
                            f"pip install \"vlmsteer[{extra}]\"") from None
