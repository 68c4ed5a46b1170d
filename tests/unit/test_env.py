"""The environment is read in meshkit/_env.py only, and each variable's reading is checked there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from meshkit import _env
from meshkit.errors import ConfigError

SRC = Path(__file__).resolve().parents[2] / "src" / "meshkit"

_READS = {"environ", "environb", "getenv", "getenvb"}
_MODULES = {"os", "posix"}


def environment_reads(source: str) -> list[int]:
    """The lines of ``source`` that read the process environment through ``os``."""
    tree = ast.parse(source)
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name in _MODULES
    }
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in _MODULES:
            if any(alias.name in _READS for alias in node.names):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in _READS
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_finds_each_way_of_reading_the_environment() -> None:
    """Attribute reads, os.getenv, an aliased os and from-imports are all found."""
    source = (
        "import os\n"
        "import os as system\n"
        "from os import environ\n"
        "a = os.environ['A']\n"
        "b = os.getenv('B')\n"
        "c = system.environ.get('C')\n"
        "d = os.path.join('x', 'y')\n"
        "from os import path\n"
    )
    assert environment_reads(source) == [3, 4, 5, 6]


def test_no_module_but_env_reads_the_environment() -> None:
    """Every module of src/meshkit except _env.py leaves the environment alone."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if relative == Path("_env.py"):
            continue
        found += [f"{relative}:{line}" for line in environment_reads(path.read_text())]
    assert found == [], f"read the environment through meshkit._env instead: {found}"


def test_mesh_variables_are_parsed_and_a_bad_number_names_its_variable() -> None:
    env = _env.read_environment(
        {
            "MESHKIT_SERVICE": "orders",
            "MESHKIT_PORT": "8001",
            "MESHKIT_TTL": "2.5",
            "MESHKIT_BUS": "",
        }
    )
    assert (env.service, env.port, env.ttl, env.bus, env.restarts) == ("orders", 8001, 2.5, None, 0)
    with pytest.raises(ConfigError) as caught:
        _env.read_environment({"MESHKIT_PORT": "eighty"})
    assert caught.value.key == "MESHKIT_PORT"


def test_an_empty_token_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHKIT_TOKEN", "")
    assert _env.token() is None
    monkeypatch.setenv("MESHKIT_TOKEN", "a-token-of-some-length")
    assert _env.token() == "a-token-of-some-length"


def test_a_configured_secret_is_read_from_the_variable_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOP_JWT_SECRET", "s" * 32)
    monkeypatch.delenv("SHOP_OTHER_SECRET", raising=False)
    assert _env.secret("SHOP_JWT_SECRET") == "s" * 32
    assert _env.secret("SHOP_OTHER_SECRET") is None


@pytest.mark.parametrize(("value", "wanted"), [("1", True), ("0", False), ("", False)])
def test_require_backends_takes_one_or_zero(
    monkeypatch: pytest.MonkeyPatch, value: str, wanted: bool
) -> None:
    monkeypatch.setenv("MESHKIT_REQUIRE_BACKENDS", value)
    assert _env.require_backends() is wanted


def test_require_backends_refuses_a_value_it_would_have_to_guess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESHKIT_REQUIRE_BACKENDS", "true")
    with pytest.raises(ConfigError) as caught:
        _env.require_backends()
    assert caught.value.key == "MESHKIT_REQUIRE_BACKENDS"


def test_force_colour_is_any_non_empty_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    assert not _env.force_colour()
    monkeypatch.setenv("FORCE_COLOR", "0")  # force-color.org: any non-empty value
    assert _env.force_colour()


def test_a_child_inherits_the_environment_under_its_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOP_INHERITED", "parent")
    monkeypatch.setenv("SHOP_REPLACED", "parent")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    child = _env.child_environment({"SHOP_REPLACED": "child"})
    assert (child["SHOP_INHERITED"], child["SHOP_REPLACED"]) == ("parent", "child")
    assert _env.python_path() == "/somewhere"
