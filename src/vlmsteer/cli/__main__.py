"""``python -m vlmsteer.cli``."""

from vlmsteer.cli import entry

entry()
