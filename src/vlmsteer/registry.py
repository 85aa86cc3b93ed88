"""Extension points as registries: concept methods, diffing methods, dataset formats, engines,
token regions and extraction selectors are each one :class:`Registry` whose entries carry a
name, a one-line description and the options they take. The CLI's choices and help text are
read from the registries when a command is built, so an entry registered by a plugin (a module
named in ``VLMSTEER_PLUGINS`` or under the ``vlmsteer.plugins`` entry-point group, see
:func:`load_plugins`) appears in ``--help`` and is accepted by every command that takes its
kind — without another file of the project being edited.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, Generic, Iterator, TypeVar

from vlmsteer.errors import VlmsteerError

T = TypeVar("T")


def canonical(name: str) -> str:
    """Names compare without case, and ``-`` equals ``_`` (``topk-sae`` is ``topk_sae``)."""
    return str(name).strip().lower().replace("-", "_")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing: its name (as users type it), a one-line description, the options
    it takes (option name -> what it does) and the thing itself (a class, a function, a value)."""

    name: str
    description: str
    value: T
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not self.name or not self.description or "\n" in self.description:
            raise ValueError(f"a registry entry needs a name and a one-line description, got {self.name!r}")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order. ``kind`` names the kind in errors
    ("concept method") and ``option`` the command-line option that chooses one (``--method``)."""

    def __init__(self, kind: str, option: str):
        self.kind, self.option = kind, option
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, value: T, description: str, options: dict[str, str] | None = None,
            replace: bool = False) -> Entry[T]:
        """Register ``value`` under ``name``; a second entry of the same name is refused unless
        ``replace``."""
        entry = Entry(name, description, value, dict(options or {}))
        key = canonical(name)
        if not replace and key in self._entries:
            raise VlmsteerError(f"a {self.kind} named {name!r} is registered already")
        self._entries[key] = entry
        return entry

    def remove(self, name: str) -> None:
        self._entries.pop(canonical(name), None)

    def entry(self, name: str) -> Entry[T]:
        """The entry called ``name``; a one-line error listing the choices otherwise."""
        key = canonical(name)
        if key not in self._entries:
            raise VlmsteerError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}",
                                self.option.lstrip("-") or None)
        return self._entries[key]

    def get(self, name: str) -> T:
        return self.entry(name).value

    def check_options(self, name: str, given: dict[str, object], shared: tuple[str, ...] = ("seed",)) -> None:
        """Refuse, in one line, options (option name -> value; None: not given) that the entry
        ``name`` does not take (its ``options``); ``shared`` ones every entry takes."""
        entry = self.entry(name)
        unused = [o for o, value in given.items() if value is not None and o not in entry.options and o not in shared]
        if unused:
            flag = lambda o: "-k" if o == "k" else "--" + o.replace("_", "-")  # noqa: E731
            takes = ", ".join(flag(o) for o in entry.options if o not in shared) or f"no {self.kind} options"
            raise VlmsteerError(f"{self.option} {entry.name} does not use {', '.join(map(flag, unused))} (it takes "
                                f"{takes})", self.option.lstrip("-") or None)

    def __contains__(self, name: object) -> bool:
        return canonical(str(name)) in self._entries

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self.entries())

    def names(self, where: Callable[[Entry[T]], bool] | None = None) -> list[str]:
        return [e.name for e in self.entries() if where is None or where(e)]

    def help(self, intro: str = "", where: Callable[[Entry[T]], bool] | None = None) -> str:
        """Help text for the option choosing an entry: ``intro`` then each name with its
        description."""
        listed = "; ".join(f"{e.name}: {e.description}" for e in self.entries() if where is None or where(e))
        return f"{intro} {listed}".strip() if intro else listed


# -- plugins: modules that register entries, named by the user


PLUGINS_ENV = "VLMSTEER_PLUGINS"
ENTRY_POINT_GROUP = "vlmsteer.plugins"


def load_plugins(env: dict[str, str] | None = None) -> list[str]:
    """Import every plugin module: those named (comma-separated) in ``$VLMSTEER_PLUGINS`` and the
    installed packages' ``vlmsteer.plugins`` entry points. Returns the modules imported; a module
    that fails to import is a one-line error naming it."""
    env = os.environ if env is None else env
    names = [m.strip() for m in env.get(PLUGINS_ENV, "").split(",") if m.strip()]
    loaded = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the plugin's own failure, in one line
            raise VlmsteerError(f"plugin {name!r} (from ${PLUGINS_ENV}) failed to import: "
                                f"{type(exc).__name__}: {exc}") from None
        loaded.append(name)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001
            raise VlmsteerError(f"plugin {ep.name!r} (entry point {ep.value}) failed to import: "
                                f"{type(exc).__name__}: {exc}") from None
        loaded.append(ep.value)
    return loaded
