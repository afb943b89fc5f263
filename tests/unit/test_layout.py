"""The layout keeps its promises: no module imports upward or in a circle, each imports alone.

Layers, bottom to top. A module may import its own package, any lower layer, and the base
modules; an import of a higher layer is what turns a tree of packages back into a tangle.
``backfill`` sits on top of ``ingest``; ``ingest`` never imports ``backfill`` or ``luigi``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: ``ingest`` subpackages by layer; modules directly under ``ingest/`` are the base (layer 0).
LAYERS: dict[str, int] = {
    "avro": 1,
    "ledger": 2,
    "kafka": 3,
    "search": 3,
    "pipeline": 4,
    "daemon": 5,
    "ops": 6,
    "dev": 6,
    "cli": 7,
}
#: Base modules that exist to re-export for outside users, above everything they re-export.
FACADES = {"ingest.producer", "ingest.__main__"}


def _modules() -> list[str]:
    found = []
    for path in sorted(
        [*ROOT.joinpath("ingest").rglob("*.py"), *ROOT.joinpath("backfill").rglob("*.py")]
    ):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append(".".join(parts))
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] == "backfill":
        return 100
    if module == "ingest":
        return 0
    if module in FACADES:
        return 99
    if len(parts) == 2 and not (ROOT / "ingest" / parts[1]).is_dir():
        return 0
    return LAYERS[parts[1]]


def _imports(module: str) -> set[str]:
    """Every ``ingest``/``backfill``/``luigi`` module named by an import, lazy ones included."""
    base = ROOT.joinpath(*module.split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] in {"ingest", "backfill", "luigi"}}


MODULES = _modules()


def test_the_layer_table_covers_every_ingest_package() -> None:
    """A new subpackage must be placed in a layer before it can be imported from anywhere."""
    packages = {p.name for p in ROOT.joinpath("ingest").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("module", MODULES)
def test_nothing_imports_upward(module: str) -> None:
    """Imports go to the module's own package or down; ``ingest`` never reaches luigi."""
    mine = _layer(module)
    own_package = module.split(".")[:2]
    upward = []
    for target in sorted(_imports(module)):
        if target.split(".")[0] in {"backfill", "luigi"}:
            if module.startswith("ingest"):
                upward.append(target)
            continue
        if target.split(".")[:2] == own_package or target == "ingest":
            continue
        if _layer(target) > mine:
            upward.append(target)
    assert not upward, f"{module} imports a higher layer: {upward}"


def test_no_package_imports_in_a_circle() -> None:
    """The package graph (ingest subpackages, the base, backfill) has no cycle."""

    def package(module: str) -> str:
        parts = module.split(".")
        if parts[0] == "backfill":
            return "backfill"
        return "ingest" if _layer(module) in (0, 99) else f"ingest.{parts[1]}"

    edges: dict[str, set[str]] = {}
    for module in MODULES:
        for target in _imports(module):
            if target.split(".")[0] == "luigi":
                continue
            a, b = package(module), package(target)
            if a != b and not (a == "ingest" and module in FACADES):
                edges.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    circles = sorted(a for a in edges if reaches(a, a, {a}))
    assert not circles, f"packages in an import circle: {circles}"


def _import_alone(module: str) -> tuple[str, str]:
    if module.endswith("__main__"):
        return module, ""  # running it is the CLI itself, covered by the CLI tests
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    return module, done.stderr.strip().splitlines()[-1] if done.returncode else ""


def test_every_module_imports_on_its_own() -> None:
    """Each module imports in a fresh interpreter: no import order hides a cycle."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = {m: err for m, err in pool.map(_import_alone, MODULES) if err}
    assert not failures


@pytest.mark.parametrize("command", ["ingest", "backfill"])
def test_help_does_not_load_the_database_driver(command: str) -> None:
    """``--help`` stays fast: psycopg (and the search clients) load only when a command runs."""
    code = (
        "import sys\n"
        f"from {command}.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('psycopg', 'elasticsearch', 'opensearchpy')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "HEAVY="
