"""Layers import downward: no package reaches into a private module of a sibling or one above."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "meshkit"

# meshkit's packages from the bottom up. A package may use the private
# modules of its own layer's top-level modules and of the layers below it,
# never those of a package beside it or above it: what two siblings share
# moves down a layer (as discovery did for the SDK, the gateway and the sidecar).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"policy"}),
    frozenset({""}),  # meshkit's top-level modules (_clock, _env, errors, the plane's client)
    frozenset({"http"}),
    frozenset({"observe"}),
    frozenset({"registry", "ratelimit", "bus", "saga"}),
    frozenset({"discovery"}),
    frozenset({"proxy"}),
    frozenset({"service", "gateway", "sidecar", "control"}),
    frozenset({"deploy", "testing"}),
    frozenset({"cli"}),
)
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def _private_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, package)`` of each import of another package's private module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        parts = node.module.split(".")
        if parts[0] != "meshkit" or len(parts) < 2 or parts[1].startswith("_"):
            continue
        names = [alias.name for alias in node.names]
        if any(part.startswith("_") for part in parts[2:]) or any(
            name.startswith("_") for name in names
        ):
            found.append((node.lineno, parts[1]))
    return found


def test_every_package_has_a_layer() -> None:
    """A new package is placed in LAYERS, so the rule below covers it."""
    packages = {path.parent.name for path in SRC.glob("*/__init__.py")}
    assert packages <= set(RANK), sorted(packages - set(RANK))


def test_private_modules_are_imported_only_from_below() -> None:
    """No module imports a private module of a sibling package, or of a package above it."""
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        own = relative.parts[0] if len(relative.parts) > 1 else ""
        for line, package in _private_imports(path):
            if package != own and RANK[package] >= RANK[own]:
                wrong.append(f"{relative}:{line} imports meshkit.{package}'s private module")
    assert wrong == []
