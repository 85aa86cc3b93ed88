"""The documented command tables name exactly what the registries hold: a row that names a
method, format, selector, region, engine or matching the registry lacks, or misses one it has,
fails here (docs/commands.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vlmsteer.analysis.diffing_methods import DIFF_METHODS
from vlmsteer.analysis.shift import MATCHINGS
from vlmsteer.concepts.methods import CONCEPT_METHODS
from vlmsteer.data.formats import DATA_FORMATS
from vlmsteer.engines import ENGINES
from vlmsteer.positions import REGIONS, SELECTORS
from vlmsteer.registry import canonical

ROOT = Path(__file__).resolve().parents[1]
TABLE = (ROOT / "docs" / "commands.md").read_text()

# a plugin loaded into this process (tests/test_extension_points.py) is not documented here
BUILT_IN = {reg: {canonical(e.name) for e in reg if "test's toy" not in e.description}
            for reg in (CONCEPT_METHODS, DIFF_METHODS, DATA_FORMATS, SELECTORS, REGIONS, ENGINES, MATCHINGS)}


def documented(command: str, option: str) -> set[str]:
    """The choices the rows of ``command`` give ``option`` (``--method a\\|b``), all rows together."""
    found = set()
    for row in TABLE.splitlines():
        cell = row.split("|", 2)[1] if row.startswith("| `") else ""
        if cell.strip().startswith(f"`vlmsteer {command} "):
            for m in re.finditer(rf"{option} ([\w-]+(?:\\\|[\w-]+)*)", row):
                found |= {canonical(x) for x in m[1].split("\\|")}
    return found


@pytest.mark.parametrize("command, option, registry, where", [
    ("concepts", "--method", CONCEPT_METHODS, lambda e: e.value.family != "paired"),
    ("diff", "--method", DIFF_METHODS, None),
    ("extract", "--format", DATA_FORMATS, None),
    ("extract", "--selector", SELECTORS, None),
    ("extract", "--engine", ENGINES, None),
    ("eval vqa", "--region", REGIONS, None),
    ("shift", "--matching", MATCHINGS, None),
])
def test_command_tables_name_what_the_registries_hold(command, option, registry, where):
    want = {canonical(e.name) for e in registry if where is None or where(e)} & BUILT_IN[registry]
    got = documented(command, option)
    assert got == want, f"docs/commands.md, `vlmsteer {command}` {option}: documents {sorted(got - want)} the " \
                        f"registry lacks, misses {sorted(want - got)}"


def test_the_table_check_reads_a_row():
    assert documented("diff", "--method") >= {"adl", "sae_diff"}
    assert documented("no-such-command", "--method") == set()


def test_every_path_contributing_names_exists():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    names = set(re.findall(r"`([\w./-]+(?:\.py|\.md|/))`", text))
    missing = [n for n in sorted(names)
               if not any((base / n).exists() for base in (ROOT, ROOT / "src" / "vlmsteer"))]
    assert len(names) > 30 and not missing, f"CONTRIBUTING.md names paths that do not exist: {missing}"
    for registry in ("CONCEPT_METHODS", "DIFF_METHODS", "DATA_FORMATS", "ENGINES", "REGIONS", "SELECTORS"):
        assert registry in text, f"CONTRIBUTING.md does not say how to add to {registry}"
