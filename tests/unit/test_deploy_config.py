"""meshkit.toml is checked before anything starts, and every problem names its place."""

import socket
from pathlib import Path

import pytest

from meshkit.deploy import load_project
from meshkit.errors import ConfigError
from meshkit.policy import CanaryConfig, RollingConfig

GOOD = """
[project]
name = "demo"

[control_plane]
port = 7799

[services.users]
app = "shop.users:service"

[services.orders]
app = "shop.orders:service"
replicas = 2
ports = [8801, 8802]
depends_on = ["users"]
env = { A = "1" }
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "meshkit.toml").write_text(text)
    return tmp_path


def test_a_good_file_gives_the_start_order(tmp_path: Path) -> None:
    """Services come out in dependency order, with their settings and data directory."""
    project = load_project(write(tmp_path, GOOD), check_ports=False)
    assert project.order == ("users", "orders")
    assert project.fixed_ports("orders") == [8801, 8802]
    assert project.fixed_ports("users") == [None]
    assert project.services["users"].health_path() == "/-/ready"
    assert project.data_dir == (tmp_path / ".meshkit").resolve()


@pytest.mark.parametrize(
    ("text", "key", "problem", "line"),
    [
        (
            '[services.users]\napp = "u:app"\nreplica = 2\n',
            "services.users.replica",
            "not a known key",
            3,
        ),
        ('[service.users]\napp = "u:app"\n', "service", "not a known key", 1),
        (
            '[services.users]\napp = "u:app"\nreplicas = "two"\n',
            "services.users.replicas",
            "expected `int`",
            3,
        ),
        ("[services.users]\nreplicas = 1\n", "services.users", "exactly one of app", 1),
        (
            '[services.users]\napp = "u:app"\ncommand = ["x"]\n',
            "services.users",
            "exactly one of app",
            1,
        ),
        ('[services.users]\napp = "no-colon"\n', "services.users.app", "MODULE:ATTRIBUTE", 2),
        ('[services.Users]\napp = "u:app"\n', "services.Users", "lower-case", 1),
        (
            '[services.a]\napp = "a:app"\ndepends_on = ["zz"]\n',
            "services.a.depends_on",
            "unknown service 'zz'",
            3,
        ),
        (
            '[services.a]\napp = "a:app"\ndepends_on = ["b"]\n'
            '[services.b]\napp = "b:app"\ndepends_on = ["a"]\n',
            "services.b.depends_on",
            "cycle: a -> b -> a",
            6,
        ),
        (
            '[services.a]\napp = "a:app"\nreplicas = 2\nport = 8000\n',
            "services.a.port",
            "use ports",
            4,
        ),
        (
            '[services.a]\napp = "a:app"\nreplicas = 2\nports = [1]\n',
            "services.a.ports",
            "1 ports for 2",
            4,
        ),
        ('[services.a]\napp = "a:app"\nttl = 0.1\n', "services.a.ttl", "between 1 and 3600", 3),
        (
            '[services.a]\napp = "a:app"\nhealth = "ready"\n',
            "services.a.health",
            "starting with '/'",
            3,
        ),
        (
            '[services.a]\napp = "a:app"\nhealth = "/ready now"\n',
            "services.a.health",
            "without spaces",
            3,
        ),
        (
            '[services.a]\ncommand = ["meshkit-no-such-program", "x"]\n',
            "services.a.command",
            "cannot run 'meshkit-no-such-program'",
            2,
        ),
        (
            '[services.a]\ncommand = ["./missing.sh"]\n',
            "services.a.command",
            "cannot run './missing.sh'",
            2,
        ),
        (
            '[control_plane]\nport = 70000\n[services.a]\napp = "a:app"\n',
            "control_plane.port",
            "70000 is not a TCP port",
            2,
        ),
        (
            '[control_plane]\nhost = "no such host"\n[services.a]\napp = "a:app"\n',
            "control_plane.host",
            "",
            2,
        ),
        (
            '[control_plane]\nport = 8000\n[services.a]\napp = "a:app"\nport = 8000\n',
            "services.a.port",
            "also control_plane.port",
            5,
        ),
        (
            '[services.a]\napp = "a:app"\n[gateway]\nport = 8000\n'
            '[[gateway.routes]]\npath = "/a"\nservice = "b"\n',
            "gateway.routes[0].service",
            "no service named 'b'",
            7,
        ),
        (
            '[services.a]\napp = "a:app"\n[gateway]\nport = 0\n'
            '[[gateway.routes]]\npath = "/a"\nservice = "a"\n',
            "gateway.port",
            "must be between 1 and 65535",
            4,
        ),
        (
            '[services.a]\napp = "a:app"\n[gateway]\nport = 8000\n'
            '[[gateway.api_keys]]\nname = "k"\nkey = "key-12345"\nservices = ["b"]\n'
            '[[gateway.routes]]\npath = "/a"\nservice = "a"\n',
            "gateway.api_keys[0].services",
            "no service named 'b'",
            8,
        ),
        (
            '[services.a]\napp = "a:app"\n[gateway]\nport = 8000\n'
            '[[gateway.routes]]\npath = "/a"\nservice = "a"\n'
            '[[gateway.global_limits]]\nname = "g"\nrate = 1\nburst = 1\nservices = ["b"]\n',
            "gateway.global_limits[0].services",
            "no service named 'b'",
            12,
        ),
        (
            '[services.a]\napp = "a:app"\n[gateway]\nport = 8000\n'
            '[[gateway.routes]]\npath = "/a"\nservice = "a"\n'
            '[gateway.redis]\nurl = "redis://127.0.0.1:6379/0"\n',
            "gateway.redis.on_unreachable",
            "is required",
            8,
        ),
        (
            '[services.a]\napp = "a:app"\n[gateway]\nlisten = 1\n',
            "gateway.listen",
            "is not a known key",
            4,
        ),
        (
            '[services.a]\napp = "a:app"\nport = 8000\n[gateway]\nport = 8000\n'
            '[[gateway.routes]]\npath = "/a"\nservice = "a"\n',
            "services.a.port",
            "also gateway.port",
            3,
        ),
        (
            '[services.a]\napp = "a:app"\n[gateway]\nport = 8000\n'
            '[[gateway.routes]]\npath = "/a"\nservice = "a"\n'
            '[[gateway.routes]]\npath = "/b"\nservice = "a"\nauth = "nope"\n',
            "gateway.routes[1].auth",
            "invalid enum value 'nope'",
            11,
        ),
        (
            '[services.a]\napp = "a:app"\n[gateway]\nport = 8000\n'
            '[[gateway.routes]]\npath = "/a"\nservice = "a"\n'
            '[gateway.cors]\nallow_origins = ["https://a.example/path"]\n',
            "gateway.cors.allow_origins[0]",
            "got 'https://a.example/path' (",  # msgspec's ' - at $.cors' cut
            9,
        ),
        (
            '[services.n]\napp = "n:app"\n'
            'subscribe = [{ topic = "order.created", path = "/events" }]\n',
            "services.n.subscribe",
            "is for an app beside a sidecar",
            3,
        ),
        (
            '[services.n]\ncommand = ["true"]\nsidecar = true\nhealth = "/health"\n'
            'subscribe = [{ topic = "order.created", path = "events" }]\n',
            "services.n.subscribe[0].path",
            "must be a path starting with '/'",
            5,
        ),
        (
            '[services.n]\ncommand = ["true"]\nsidecar = true\nhealth = "/health"\n'
            'subscribe = [{ topic = "Order", path = "/events" }]\n',
            "services.n.subscribe[0].topic",
            "Order",
            5,
        ),
        (
            '[services.n]\ncommand = ["true"]\nsidecar = true\nhealth = "/health"\n'
            'subscribe = [{ topic = "a", path = "/events", grp = "x" }]\n',
            "services.n.subscribe[0].grp",
            "not a known key",
            5,
        ),
        (
            '[services.n]\ncommand = ["true"]\nsidecar = true\nhealth = "/health"\n'
            'subscribe = [{ topic = "a", path = "/a" }]\nmax_deliveries = 0\n',
            "services.n.max_deliveries",
            "between 1 and 100",
            6,
        ),
        (
            '[services.n]\ncommand = ["true"]\nsidecar = true\nhealth = "/health"\n'
            "max_deliveries = 3\n",
            "services.n.max_deliveries",
            "is for the messages of subscribe",
            5,
        ),
        (
            '[services.n]\ncommand = ["true"]\nsidecar = true\nhealth = "/health"\n'
            'subscribe = [{ topic = "a", path = "/a", group = "" }]\n',
            "services.n.subscribe[0].group",
            "",
            5,
        ),
        (
            '[services.n]\ncommand = ["true"]\nsidecar = true\nhealth = "/health"\n'
            'subscribe = [{ topic = "a", path = "/a" }, { topic = "a", path = "/b" }]\n',
            "services.n.subscribe[1]",
            "as subscribe[0] does",
            5,
        ),
        (
            '[services.n]\napp = "n:app"\n[services.n.deploy]\nstrategy = "purple"\n',
            "services.n.deploy.strategy",
            "must be one of 'rolling', 'blue-green', 'canary'",
            4,
        ),
        (
            '[services.n]\napp = "n:app"\n[services.n.deploy]\nstrategy = "canary"\n'
            "steps = [50, 10]\n",
            "services.n.deploy.steps",
            "must rise from step to step",
            5,
        ),
        (
            '[services.n]\napp = "n:app"\n[services.n.deploy]\nstrategy = "canary"\n'
            "analysis = { min_success = 2 }\n",
            "services.n.deploy.analysis.min_success",
            "must be a share",
            5,
        ),
        (
            '[services.n]\napp = "n:app"\n[services.n.deploy]\nsteps = [10]\n',
            "services.n.deploy.steps",
            "not a known key",  # a rolling update (the default) has no steps
            4,
        ),
    ],
)
def test_each_problem_names_key_line_and_file(
    tmp_path: Path, text: str, key: str, problem: str, line: int
) -> None:
    """The error names the key, says what is wrong, and points at file:line."""
    with pytest.raises(ConfigError) as caught:
        load_project(write(tmp_path, text), check_ports=False)
    assert caught.value.key == key
    assert problem in str(caught.value)
    assert f"meshkit.toml:{line})" in str(caught.value)


def test_a_sidecar_subscription_defaults_to_the_service_group(tmp_path: Path) -> None:
    """subscribe entries become the sidecar's routes; the group is the service's unless named."""
    text = (
        '[services.notifications]\ncommand = ["true"]\nsidecar = true\nhealth = "/health"\n'
        'subscribe = [{ topic = "order.created", path = "/a" },'
        ' { topic = "order.paid", path = "/b", group = "audit" }]\n'
    )
    project = load_project(write(tmp_path, text), check_ports=False)
    routes = project.services["notifications"].events("notifications")
    assert [(r.topic, r.group, r.path) for r in routes] == [
        ("order.created", "notifications", "/a"),
        ("order.paid", "audit", "/b"),
    ]
    assert project.services["notifications"].max_deliveries is None  # the sidecar's default


def test_invalid_toml_and_a_missing_file_are_config_errors(tmp_path: Path) -> None:
    """A syntax error names its line; a directory without meshkit.toml says so."""
    with pytest.raises(ConfigError, match="line 1"):
        load_project(write(tmp_path, "[services.a\napp = 1\n"))
    with pytest.raises(ConfigError, match=r"no meshkit\.toml here"):
        load_project(tmp_path / "nowhere")


def test_a_port_in_use_stops_it_before_anything_starts(tmp_path: Path) -> None:
    """A configured port something else listens on is refused, naming the key."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} is already in use") as caught:
            load_project(write(tmp_path, f'[services.a]\napp = "a:app"\nport = {port}\n'))
    assert caught.value.key == "services.a"


def test_a_command_relative_to_the_project_runs_from_there(tmp_path: Path) -> None:
    """./script.sh is found next to meshkit.toml when it exists and is executable."""
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    text = '[services.a]\ncommand = ["./run.sh"]\n'
    with pytest.raises(ConfigError, match="not executable"):
        load_project(write(tmp_path, text), check_ports=False)
    script.chmod(0o755)
    assert load_project(write(tmp_path, text), check_ports=False).services["a"].command == [
        "./run.sh"
    ]


KEYED = """
[project]
name = "keyed"

[services.users]
app = "shop.users:service"

[gateway]
port = 8799

[[gateway.api_keys]]
name = "staff"
key_env = "TEST_STAFF_KEY"

[[gateway.routes]]
path = "/users"
service = "users"
"""


def test_a_key_variable_too_short_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """meshkit up reads the keys' variables with the file: a bad one names file, line and key."""
    monkeypatch.setenv("TEST_STAFF_KEY", "abc")
    with pytest.raises(ConfigError, match="must hold 8 characters or more") as caught:
        load_project(write(tmp_path, KEYED), check_ports=False)
    assert caught.value.key == "gateway.api_keys[0].key_env"
    assert f"{tmp_path / 'meshkit.toml'}:" in str(caught.value)
    monkeypatch.setenv("TEST_STAFF_KEY", "long-enough-key")
    assert load_project(write(tmp_path, KEYED), check_ports=False).gateway is not None


def test_telemetry_retention_has_defaults_and_can_be_set(tmp_path: Path) -> None:
    """Without [telemetry] a day and 512 MiB are kept; the table sets other bounds."""
    default = load_project(write(tmp_path, GOOD), check_ports=False).retention
    assert (default.max_age, default.max_size) == (86400.0, 512 * 1024**2)
    text = GOOD + '\n[telemetry]\nretention = "2h30m"\nmax_size = "1GiB"\n'
    retention = load_project(write(tmp_path, text), check_ports=False).retention
    assert (retention.max_age, retention.max_size) == (9000.0, 1024**3)
    text = GOOD + "\n[telemetry]\nmax_size = 10000000\n"
    assert load_project(write(tmp_path, text), check_ports=False).retention.max_size == 10**7


@pytest.mark.parametrize(
    ("table", "key", "problem"),
    [
        ('retention = "forever"', "telemetry.retention", "must be a duration"),
        ('max_size = "lots"', "telemetry.max_size", "must be a size"),
        ('max_size = "1KiB"', "telemetry.max_size", "at least 65536 bytes"),
        ("retention = 5", "telemetry.retention", "expected `str`"),
        ('keep = "1d"', "telemetry.keep", "is not a known key"),
    ],
)
def test_bad_telemetry_settings_name_their_key(
    tmp_path: Path, table: str, key: str, problem: str
) -> None:
    """A bad [telemetry] value is a ConfigError naming its key and line."""
    with pytest.raises(ConfigError) as raised:
        load_project(write(tmp_path, f"{GOOD}\n[telemetry]\n{table}\n"), check_ports=False)
    assert raised.value.key == key
    assert problem in str(raised.value)
    assert str(raised.value).endswith("meshkit.toml:19)")  # the line of the key


def test_a_deploy_table_chooses_the_strategy_and_defaults_to_rolling(tmp_path: Path) -> None:
    """[services.NAME.deploy] gives the strategy and its settings; without it, or without a
    strategy, a rolling update."""
    text = (
        '[services.a]\napp = "a:app"\n[services.a.deploy]\nstrategy = "canary"\n'
        "steps = [10, 50, 100]\ninterval = 30\n"
        '[services.b]\napp = "b:app"\n[services.b.deploy]\nmax_surge = 2\n'
        '[services.c]\napp = "c:app"\n'
    )
    services = load_project(write(tmp_path, text), check_ports=False).services
    canary = services["a"].deploy
    assert isinstance(canary, CanaryConfig)
    assert (canary.steps, canary.interval) == ((10, 50, 100), 30.0)
    assert services["b"].deploy == RollingConfig(max_surge=2)
    assert services["c"].deploy == RollingConfig()
