"""The CLI refuses what it cannot do with one clear line, and starts nothing."""

import subprocess
import sys
from pathlib import Path


def meshkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_up_with_a_bad_meshkit_toml_starts_nothing(tmp_path: Path) -> None:
    """An unknown key stops `meshkit up` before anything starts, naming file, line and key."""
    (tmp_path / "meshkit.toml").write_text('[services.users]\napp = "u:app"\nreplicaz = 2\n')
    result = meshkit("up", str(tmp_path))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "services.users.replicaz: is not a known key" in message
    assert f"{tmp_path / 'meshkit.toml'}:3" in message
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".meshkit").exists()  # nothing was started, not even a data dir


def test_status_without_a_running_project_says_so(tmp_path: Path) -> None:
    """`meshkit status` with nothing running exits 1 and says what to do."""
    (tmp_path / "meshkit.toml").write_text("[control_plane]\nport = 1\n")
    (tmp_path / ".meshkit").mkdir()
    (tmp_path / ".meshkit" / "token").write_text("some-token-0123456789\n")
    result = meshkit("status", str(tmp_path))
    assert result.returncode == 1
    assert "is `meshkit up" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_bad_target_says_what_is_wrong(tmp_path: Path) -> None:
    """`meshkit serve` names an unimportable module or a missing attribute."""
    result = meshkit("serve", "no_such_module:app", cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot import 'no_such_module'" in result.stderr
    (tmp_path / "present.py").write_text("x = 1\n")
    result = meshkit("serve", "present:app", cwd=tmp_path)
    assert "has no attribute 'app'" in result.stderr
    result = meshkit("serve", "present", cwd=tmp_path)
    assert "expected MODULE:ATTRIBUTE" in result.stderr
