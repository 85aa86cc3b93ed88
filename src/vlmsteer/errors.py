"""User-facing errors.

Every problem caused by the user's input (a missing file, malformed JSON, a layer out of
range, ...) is raised as a :class:`VlmsteerError` with a one-line message that names the
thing at fault. The CLI prints the message and exits with code 2; the Python API lets it
propagate so callers can catch it.
"""

from __future__ import annotations

from pathlib import Path


class VlmsteerError(Exception):
    """A problem with the user's input, explained in one line.

    ``param`` names the Python parameter that would fix it (``"allow_outside_images"``); the
    library's messages never name command-line flags, and the CLI adds the flag that sets
    that parameter (``(option --allow-outside-images)``).
    """

    exit_code = 2

    def __init__(self, message: str, param: str | None = None, every_rank: bool = False):
        super().__init__(" ".join(str(message).split()))
        self.param = param
        self.every_rank = every_rank  # raised alike by every rank of a launcher: only rank 0 says it


def input_error(path: str | Path, problem: str, param: str | None = None) -> VlmsteerError:
    """An error about a file: ``<path>: <problem>``."""
    return VlmsteerError(f"{path}: {problem}", param)


def parse_choice(enum_cls, value, what: str):
    """``value`` as a member of ``enum_cls`` (case-insensitive, '-' read as '_'), or a one-line
    error listing the choices."""
    if isinstance(value, enum_cls):
        return value
    for candidate in (value, str(value).lower().replace("-", "_")):
        try:
            return enum_cls(candidate)
        except ValueError:
            pass
    choices = ", ".join(str(m.value) for m in enum_cls)
    raise VlmsteerError(f"unknown {what} {value!r}; choose one of: {choices}")
