"""Writing outputs whole, or not at all.

* :func:`atomic_write` / :func:`atomic_write_json`: a file is written beside its target and
  renamed over it only when complete, so readers see the old file or the whole new one.
* :class:`Publication`: an output *folder* (a run, a report, a fine-tune) is built in a
  staging folder beside it (``.<name>.partial``) and swapped in by rename when complete; an
  earlier output at that path stays whole until then and survives any failure of the new run.
  One lock per output folder keeps two runs from writing it at once. An existing output made
  with other inputs or settings (its ``run.json`` fingerprint differs) is refused unless
  overwriting was asked for.
* Every ``OSError`` of a writer (a full disk, a read-only folder, no permission) becomes a
  one-line :class:`~vlmsteer.errors.VlmsteerError` naming the path and what was kept.

Fingerprints are SHA-256 digests of canonical JSON (:func:`fingerprint`), so an identity is
a plain dict that any output can record and any reader can compare.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from vlmsteer.errors import VlmsteerError

RUN_FILE = "run.json"


def fingerprint(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries where two JSON-like dicts differ (``settings.alpha``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "value"]


def write_error(path: str | Path, exc: OSError, kept: str = "nothing earlier was replaced") -> VlmsteerError:
    """One line for a failed write: the path, why, and what was kept."""
    reason = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
              errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}.get(exc.errno)
    return VlmsteerError(f"{path}: cannot write ({reason or exc.strerror or exc}); {kept}")


@contextmanager
def safetensors_writes(path: str | Path, kept: str = "nothing earlier was replaced") -> Iterator[None]:
    """Around a safetensors ``save_file``: its error (a full disk arrives as a SafetensorError,
    ``... (os error 28)``) becomes the one line :func:`write_error` gives an OSError, and the
    half-written file goes."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        _remove_quietly(Path(path))
        code = re.search(r"os error (\d+)", str(exc))
        raise write_error(path, OSError(int(code[1]) if code else errno.EIO, str(exc)), kept) from None


def atomic_write(path: str | Path, write: Callable[[Any], None], durable: bool = True,
                 kept: str = "nothing earlier was replaced") -> Path:
    """Write through ``write(file)`` to a temporary name beside ``path``, then rename: readers
    see the old file or the whole new one. ``durable`` forces it to disk before the rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise write_error(path, exc, kept) from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any, durable: bool = True, indent: int | None = 1) -> Path:
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent, default=str).encode()), durable)


def atomic_write_text(path: str | Path, text: str, durable: bool = False) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), durable)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def make_folder(path: str | Path) -> Path:
    """``path`` and its parents, or a one-line error saying why it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise VlmsteerError(f"{path}: exists and is not a folder") from None
    except OSError as exc:
        raise write_error(path, exc) from None
    return path


def check_writable(folder: str | Path) -> Path:
    """Fail now, before any model work, if files cannot be created in ``folder`` (made if absent)."""
    folder = make_folder(folder)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".vlmsteer-write-check-"):
            pass
    except OSError as exc:
        raise write_error(folder, exc) from None
    return folder


def check_can_create(path: str | Path) -> Path:
    """Fail now if ``path`` (a folder to be written) could not be made or written, creating
    nothing: its nearest existing ancestor must be a folder where files can be created."""
    path = Path(path)
    ancestor = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not ancestor.is_dir():
        raise VlmsteerError(f"{path}: cannot be made: {ancestor} is a file, not a folder")
    check_writable(ancestor)
    return path


def lock_file(path: Path, what: str, owner: str | Path | None = None):
    """An open file holding an exclusive, non-blocking lock on ``path``; the OS releases it
    when the process ends, so a killed writer never leaves a stale lock. ``owner`` is what the
    error names (default: the lock's folder)."""
    try:
        f = open(path, "a+")
    except OSError as exc:
        raise write_error(path, exc) from None
    if sys.platform != "win32":
        import fcntl

        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise VlmsteerError(f"{owner or path.parent}: another process is writing {what}; wait for it or choose "
                                "another output folder") from None
    return f


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def read_run_record(folder: Path) -> dict | None:
    """The ``run.json`` of an output folder, or None if it has none (or an unreadable one)."""
    try:
        record = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


class Publication:
    """An output folder built whole in ``.<name>.partial`` beside ``out`` and published by rename.

    ``begin()`` (or entering the ``with`` block) checks that the staging folder can be written
    and takes its lock (``.lock`` inside it: one writer per output folder); :meth:`claim`
    compares this run's identity with what is already published at ``out`` (refused, unless
    ``overwrite``, when another output is there); :meth:`commit` swaps the staging folder in.
    On an error the staging folder stays if it holds work a rerun of the same identity resumes
    from — the entries named in ``resumable`` (data-parallel ``parts``, a training checkpoint;
    None: whatever it holds) — and is removed, with any folder ``begin`` made, otherwise: a
    failed run (a full disk, a refusal midway) leaves no ``.NAME.partial`` behind. The
    published output is untouched either way.
    """

    LOCK = ".lock"
    KEEP = (".lock", ".identity")  # what a staging folder holds before any work

    def __init__(self, out: str | Path, overwrite: bool = False, lock: bool = True,
                 resumable: tuple[str, ...] | None = ()):
        self.out = Path(os.path.abspath(out))  # `.` and `a/..` have a name, and a folder beside them
        if not self.out.name:
            raise VlmsteerError(f"{out}: not a folder an output can be written to; choose a subfolder")
        self.overwrite = overwrite
        self.stage = self.out.with_name(f".{self.out.name}.partial")
        self._want_lock = lock
        self.resumable = resumable
        self._lock = None
        self._made: list[Path] = []

    def begin(self) -> "Publication":
        if self.out.exists() and not self.out.is_dir():
            raise VlmsteerError(f"{self.out}: exists and is not a folder; choose another output folder")
        missing = [p for p in [self.stage, *self.stage.parents] if not p.exists()]
        check_writable(self.out.parent)
        make_folder(self.stage)
        self._made = [p for p in missing if p.exists()]  # deepest first
        if self._want_lock and self._lock is None:
            self._lock = lock_file(self.stage / self.LOCK, "this output", self.out)
        return self

    def claim(self, identity: dict) -> str:
        """Record this run's identity; an output with a different one already at ``out`` is a
        one-line error unless ``overwrite``. Returns the identity's fingerprint."""
        identity = json.loads(json.dumps(identity, default=str))  # as run.json will hold it (tuples: lists)
        self.identity = identity
        self.fingerprint = fingerprint(identity)
        if (self.out / "manifest.json").exists():  # never replace a feature store with a report
            raise VlmsteerError(f"{self.out}: holds a feature store; choose another output folder")
        if self.out.is_dir() and any(self.out.iterdir()):
            record = read_run_record(self.out)
            if record is None or "options" not in record:  # never replace what may be the user's own files
                raise VlmsteerError(f"{self.out}: holds files that are not a vlmsteer output (no run.json); choose "
                                    "another output folder, or move them away")
            old_identity = record.get("identity")
            if old_identity is None and not self.overwrite:  # written by a vlmsteer without fingerprints
                raise VlmsteerError(f"{self.out}: holds an output with no fingerprint of what made it (an older "
                                    "vlmsteer); choose another output folder, or overwrite it", "overwrite")
            if old_identity is not None and fingerprint(old_identity) != self.fingerprint and not self.overwrite:
                diff = ", ".join(differences(old_identity, identity)[:4])
                raise VlmsteerError(f"{self.out}: holds an output made from other inputs or settings ({diff}); "
                                    "choose another output folder, or overwrite it", "overwrite")
        return self.fingerprint

    def clear_stage(self) -> None:
        """Empty the staging folder of everything but its lock (work of another identity)."""
        for entry in self.stage.iterdir():
            if entry.name == self.LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def commit(self) -> Path:
        """Swap the complete staging folder in for ``out``; the old output goes only after."""
        try:
            if self.out.exists():
                if not _exchange(self.stage, self.out):
                    old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
                    os.rename(self.out, old)
                    os.rename(self.stage, self.out)
                    self.stage = old
                shutil.rmtree(self.stage, ignore_errors=True)  # now the previous output
            else:
                os.rename(self.stage, self.out)
        except OSError as exc:
            raise write_error(self.out, exc, f"the new output is complete in {self.stage}") from None
        self._made = []
        self.close()
        return self.out

    def abandon(self) -> None:
        """After a failure: keep the staging folder if it holds work a rerun resumes from (see
        the class); remove it, and the folders ``begin`` made, otherwise."""
        try:
            held = {p.name for p in self.stage.iterdir()} - set(self.KEEP) if self.stage.is_dir() else set()
            keep = bool(held) if self.resumable is None else bool(held & set(self.resumable))
            if self.stage.is_dir() and not keep:
                shutil.rmtree(self.stage, ignore_errors=True)
                for folder in self._made[1:]:
                    folder.rmdir()
        except OSError:
            pass  # a folder someone else filled meanwhile stays
        self.close()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "Publication":
        return self.begin()

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def published(out: str | Path, overwrite: bool = False, lock: bool = True, commit: bool = True,
              resumable: tuple[str, ...] | None = ()) -> Iterator[Publication]:
    """``with published(out) as pub: pub.claim(identity); write into pub.stage`` — swapped in
    at the end of the block if it ends normally (and ``commit``); abandoned on an error
    (``resumable``: see :class:`Publication`)."""
    pub = Publication(out, overwrite, lock, resumable).begin()
    try:
        yield pub
    except BaseException:
        if lock:
            pub.abandon()
        raise
    else:
        if commit:
            pub.commit()
    finally:
        pub.close()
