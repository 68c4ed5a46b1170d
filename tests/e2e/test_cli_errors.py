"""The CLI refuses what it cannot do with one clear line, and starts nothing."""

import os
import socket
import subprocess
import sys
from pathlib import Path


def meshkit(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **(env or {})},
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


def test_serve_where_it_cannot_listen_is_one_line(tmp_path: Path) -> None:
    """A port in use or a host that does not resolve: one line naming it, before registering."""
    (tmp_path / "echo.py").write_text("async def app(scope, receive, send):\n    pass\n")
    # A registry nobody listens on: the listen check comes first, so it is never called.
    mesh = {"MESHKIT_REGISTRY": "http://127.0.0.1:1", "MESHKIT_TOKEN": "a-test-token-0123456789"}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = meshkit(
            "serve", "echo:app", "--name", "echo", "--port", str(port), cwd=tmp_path, env=mesh
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"meshkit: port: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already in use"
    )
    no_host = {**mesh, "MESHKIT_HOST": "no-such-host.invalid"}
    result = meshkit("serve", "echo:app", "--name", "echo", cwd=tmp_path, env=no_host)
    assert result.returncode == 2
    assert "cannot listen on no-such-host.invalid:0" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_bad_environment_is_one_line(tmp_path: Path) -> None:
    """A Service built at import time with a bad MESHKIT_* value fails with one line."""
    (tmp_path / "svc.py").write_text(
        "from meshkit.service import Service\n"
        "async def app(scope, receive, send):\n    pass\n"
        "service = Service(app, name='svc')\n"
    )
    result = meshkit("serve", "svc:service", cwd=tmp_path, env={"MESHKIT_PORT": "abc"})
    assert result.returncode == 2
    assert result.stderr.strip() == "meshkit: svc: MESHKIT_PORT: must be a number, got 'abc'"


def test_gateway_without_its_jwt_secret_says_which_variable(tmp_path: Path) -> None:
    """`meshkit gateway` with a JWT route and no secret exits 2 naming the variable."""
    (tmp_path / "meshkit.toml").write_text(
        '[services.a]\ncommand = ["sleep", "1"]\n'
        '[gateway]\nport = 1\n[gateway.jwt]\nsecret_env = "MESHKIT_TEST_NO_SUCH_SECRET"\n'
        '[[gateway.routes]]\npath = "/a"\nservice = "a"\nauth = "jwt"\n'
    )
    result = meshkit("gateway", str(tmp_path), env={"MESHKIT_TOKEN": "some-token-0123456789"})
    assert result.returncode == 2
    assert "$MESHKIT_TEST_NO_SUCH_SECRET must hold a secret" in result.stderr
    assert "Traceback" not in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_gateway_whose_admin_port_is_taken_names_the_admin_listener(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        admin = busy.getsockname()[1]
        (tmp_path / "meshkit.toml").write_text(
            f'[services.a]\ncommand = ["sleep", "1"]\n[gateway]\nport = {free_port()}\n'
            f'[gateway.admin]\nport = {admin}\n[[gateway.routes]]\npath = "/a"\nservice = "a"\n'
        )
        result = meshkit("gateway", str(tmp_path), env={"MESHKIT_TOKEN": "some-token-0123456789"})
    assert result.returncode == 2
    assert f"gateway.admin: cannot listen on 127.0.0.1:{admin}" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_stops_when_its_gateway_cannot_start(tmp_path: Path) -> None:
    """A gateway that exits three times before it is ever ready is not restarted forever."""
    (tmp_path / "meshkit.toml").write_text(
        f"[control_plane]\nport = {free_port()}\n"
        '[services.a]\ncommand = ["sleep", "600"]\n'
        f"[gateway]\nport = {free_port()}\n"
        '[gateway.jwt]\nsecret_env = "MESHKIT_TEST_NO_SUCH_SECRET"\n'
        '[[gateway.routes]]\npath = "/a"\nservice = "a"\nauth = "jwt"\n'
    )
    result = meshkit("up", str(tmp_path))
    assert result.returncode == 1
    assert "$MESHKIT_TEST_NO_SUCH_SECRET must hold a secret" in result.stdout
    assert "the gateway did not start; stopping" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_gateway_without_a_gateway_section_says_so(tmp_path: Path) -> None:
    (tmp_path / "meshkit.toml").write_text('[services.a]\ncommand = ["sleep", "1"]\n')
    result = meshkit("gateway", str(tmp_path))
    assert result.returncode == 2
    assert "has no [gateway] section" in result.stderr


def test_sidecar_with_bad_options_is_one_line() -> None:
    """A bad --app, --fall, --id or missing registry: one line naming it, exit 2, no traceback."""
    base = ["sidecar", "--service", "plain", "--health", "/health"]
    registry = {"MESHKIT_REGISTRY": "http://127.0.0.1:9", "MESHKIT_TOKEN": "t" * 24}
    cases = [
        (["--app", "nohost"], registry, "--app must be HOST:PORT"),
        (["--app", "127.0.0.1:9", "--fall", "0"], registry, "fall: must be between 1 and 100"),
        (["--app", "127.0.0.1:9", "--ttl", "0.1"], registry, "ttl: must be between"),
        (["--app", "127.0.0.1:9", "--id", "a b"], registry, "id: must be letters, digits"),
        (["--app", "127.0.0.1:9", "--advertise", "no host"], registry, "host: must be an IP"),
        (["--app", "127.0.0.1:9"], {"MESHKIT_REGISTRY": ""}, "MESHKIT_REGISTRY is not set"),
    ]
    for extra, env, message in cases:
        result = meshkit(*base, *extra, env=env)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
