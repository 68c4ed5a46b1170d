"""`meshkit gateway --host`: the address to listen on, in place of the file's."""

from pathlib import Path

from typer.testing import CliRunner

from meshkit.cli import app

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


def test_the_gateway_refuses_a_bad_host() -> None:
    """--host takes an address, checked before anything starts, in one line."""
    result = CliRunner().invoke(app, ["gateway", "-p", str(SHOP), "--host", "not a host"])
    assert result.exit_code == 2
    assert "--host: must be an IP address (no brackets) or a host name" in result.stderr
    assert "Traceback" not in result.output


def test_the_help_names_the_option() -> None:
    """--help says what --host replaces, and why a container wants it."""
    result = CliRunner().invoke(app, ["gateway", "--help"])
    assert result.exit_code == 0
    assert "Listen on HOST instead of [gateway] host (in a container: 0.0.0.0)." in " ".join(
        result.stdout.split()
    )
