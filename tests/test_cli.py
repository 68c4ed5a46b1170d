import subprocess
import sys
from pathlib import Path

import meshkit

BIN = Path(sys.executable).parent


def test_version_from_the_installed_script() -> None:
    """`meshkit --version` prints the package version and exits 0."""
    result = subprocess.run(
        [BIN / "meshkit", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"meshkit {meshkit.__version__}"


def test_no_arguments_prints_usage() -> None:
    """`meshkit` alone shows its usage instead of doing anything."""
    result = subprocess.run(
        [BIN / "meshkit"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2  # click's code for "usage shown, nothing done"
    assert "Usage: meshkit" in result.stdout + result.stderr


def test_unknown_command_is_a_clear_error() -> None:
    """An unknown subcommand exits non-zero and names it, without a traceback."""
    result = subprocess.run(
        [BIN / "meshkit", "fly"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "fly" in result.stderr
    assert "Traceback" not in result.stderr
