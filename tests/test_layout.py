"""The layout of ``common/``: wings named for what they hold, imports one way, every config reference resolvable.

The wings, from the bottom up (README, "Where things live in common/"): the base (``errors``, ``error_hook``,
``files``), the method core (``maps``, ``transforms``, ``losses``, ``networks``), ``data``, then the application
wings ``evaluation``, ``training`` (which validates with evaluation's metrics) and ``inference``. A module imports
only from its own wing and the wings it may build on.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "common"
MAX_TOP_LEVEL_ENTRIES = 12
MAX_MODULE_LINES = 600
VAGUE_NAMES = {"engines", "utils", "helpers", "misc"}
WING_OF = {  # first name below common -> wing
    "errors": "base",
    "error_hook": "base",
    "files": "base",
    "maps": "core",
    "transforms": "core",
    "losses": "core",
    "networks": "core",
    "data": "data",
    "evaluation": "evaluation",
    "training": "training",
    "inference": "inference",
}
MAY_IMPORT = {  # wing -> the wings its modules may import from
    "base": {"base"},
    "core": {"base", "core"},
    "data": {"base", "core", "data"},
    "evaluation": {"base", "core", "data", "evaluation"},
    "training": {"base", "core", "data", "evaluation", "training"},
    "inference": {"base", "core", "data", "inference"},
}
REFERENCE = re.compile(r"(?<![\w.])common(?:\.\w+)+")
FROM_IMPORT = re.compile(r"\bfrom\s+(common(?:\.\w+)*)\s+import\s+(\w+)")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in path.parts}


def wing(module: str) -> str:
    parts = module.split(".")
    return "package" if len(parts) == 1 else WING_OF[parts[1]]


def common_imports(path: Path) -> set[str]:
    """The modules of ``common`` that the file at ``path`` imports (the longest prefix naming a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] != "common":
            continue
        prefixes = (".".join(parts[:end]) for end in range(len(parts), 0, -1))
        found.add(next(prefix for prefix in prefixes if prefix in MODULES))
    return found


GRAPH = {module: common_imports(path) - {module} for module, path in MODULES.items()}


def test_every_module_belongs_to_a_wing():
    assert {module.split(".")[1] for module in MODULES if "." in module} <= set(WING_OF)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_one_way(module):
    if wing(module) == "package":
        assert not GRAPH[module], "common/__init__.py imports nothing"
        return
    allowed = MAY_IMPORT[wing(module)]
    wrong = sorted(name for name in GRAPH[module] if wing(name) not in allowed)
    assert not wrong, f"{module} ({wing(module)}) imports {wrong}; {wing(module)} may import from {sorted(allowed)}"


def test_no_import_cycles():
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for name in sorted(GRAPH[module]):
            if state.get(name) == "open":
                raise AssertionError(" -> ".join([*trail[trail.index(name) :], name]))
            if name not in state:
                visit(name, [*trail, name])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_top_level_is_small_and_names_say_what_modules_hold():
    entries = sorted(path.name for path in PACKAGE.iterdir() if path.name != "__pycache__")
    assert len(entries) <= MAX_TOP_LEVEL_ENTRIES, entries
    vague = sorted(module for module in MODULES if VAGUE_NAMES & set(module.split(".")))
    assert not vague, f"modules named for a mechanism, not for what they hold: {vague}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_short_and_start_with_what_they_hold(module):
    path = MODULES[module]
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES, f"{path}: split it (one concept per module)"
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring and docstring.splitlines()[0].strip(), f"{path}: the first docstring line says what it holds"


def test_scripts_use_public_names_only():
    private = []
    for path in sorted((REPO_ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "common":
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert not private


def config_files() -> list[Path]:
    return [
        *sorted(REPO_ROOT.glob("bundles/*/configs/*.yaml")),
        *sorted(REPO_ROOT.glob("bundles/*/bundle.yaml")),
        *sorted((REPO_ROOT / "templates").rglob("*.yaml")),
    ]


def resolve(reference: str) -> object:
    """The object a dotted ``common...`` reference names: the longest importable module, then its attributes."""
    parts = reference.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[end:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(reference)


def test_every_common_reference_of_the_configs_imports_and_resolves():
    references: dict[str, set[str]] = {}
    for path in config_files():
        text = path.read_text()
        found = set(REFERENCE.findall(text)) | {f"{module}.{name}" for module, name in FROM_IMPORT.findall(text)}
        for reference in found:
            references.setdefault(reference, set()).add(str(path.relative_to(REPO_ROOT)))
    assert "common.error_hook" in references and any(".losses." in reference for reference in references)
    broken = {}
    for reference, paths in sorted(references.items()):
        try:
            resolve(reference)
        except (ImportError, AttributeError) as error:
            broken[reference] = f"{error} (in {sorted(paths)[0]} and {len(paths) - 1} more)"
    assert not broken, broken
