"""No module imports torchvision; nothing loads pickles; trust_remote_code is off by default."""

import ast
import inspect
from pathlib import Path

import vlmsteer
from vlmsteer.model import VLM

SRC = Path(vlmsteer.__file__).parent


def _python_files():
    return sorted(SRC.rglob("*.py"))


def test_no_torchvision_import():
    for path in _python_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "torchvision" for n in names), path


def test_no_pickle_loading():
    """No file is ever unpickled. One exemption: the prefetch worker process, a fork of this
    process, hands its prepared batch back pickled through a pipe (batching.py, once)."""
    banned = ("import pickle", "pickle.load", "torch.load(", "joblib.load", "allow_pickle=True")
    for path in _python_files():
        text = path.read_text()
        if path.name == "batching.py" and path.parent.name == "vlmsteer":
            assert text.count("pickle.load") == 1 and "pickle.loads(next(worker" in text
            text = text.replace("import pickle", "").replace("pickle.loads(next(worker", "")
        for b in banned:
            assert b not in text, f"{path}: {b}"


def test_trust_remote_code_off_by_default():
    assert inspect.signature(VLM.load).parameters["trust_remote_code"].default is False
