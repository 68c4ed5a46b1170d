"""The gateway in one process: an embedded registry, instances on loopback, real HTTP."""

import asyncio
import io
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import jwt as pyjwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from meshkit.errors import ConfigError
from meshkit.gateway import (
    AccessLog,
    AdminConfig,
    ApiKey,
    CorsConfig,
    Gateway,
    GatewayConfig,
    GlobalLimit,
    JwtConfig,
    RedisConfig,
    RouteConfig,
)
from meshkit.http import HTTPClient, HTTPServer, Request, Response, json_response
from meshkit.policy import BreakerConfig
from meshkit.registry import EmbeddedRegistry, Instance
from meshkit.testing import FakeClock
from meshkit.testing.servers import free_port

KEY = "key-for-tests"
Handler = Callable[[Request], Awaitable[Response]]


class Fleet:
    """Instances of services, each an HTTPServer registered in the embedded registry."""

    def __init__(self, registry: EmbeddedRegistry) -> None:
        self.registry = registry
        self.hits: Counter[int] = Counter()
        self.paths: list[str] = []
        self.servers: list[HTTPServer] = []

    async def add(self, service: str, handler: Handler | None = None, *, version: str = "") -> int:
        ports: list[int] = []

        async def counted(request: Request) -> Response:
            self.hits[ports[0]] += 1
            self.paths.append(request.path)
            if handler is not None:
                return await handler(request)
            return json_response(200, {"service": service, "path": request.path})

        server = HTTPServer(counted)
        _, port = await server.start()
        ports.append(port)
        self.servers.append(server)
        instance = Instance(
            service=service, id=f"{service}-{port}", host="127.0.0.1", port=port, version=version
        )
        await self.registry.register(instance, ttl=30)
        return port

    async def aclose(self) -> None:
        for server in self.servers:
            await server.aclose(grace=0)


def config(**changes: object) -> GatewayConfig:
    values: dict[str, object] = {
        "port": 1,  # replaced by a free port below
        "api_keys": [ApiKey(name="tests", key=KEY, rate=1000, burst=1000)],
        "routes": [
            RouteConfig(path="/api/orders", service="orders", strip="/api"),
            RouteConfig(path="/api/items/{id}", service="items", strip="/api", methods=["GET"]),
            RouteConfig(path="/public", service="items", auth="none"),
        ],
    }
    values.update(changes)
    return GatewayConfig(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def running(
    gateway_config: GatewayConfig | None = None,
) -> AsyncIterator[tuple[Fleet, Callable[..., Awaitable[Response]]]]:
    async with running_gateway(gateway_config) as (fleet, call, _):
        yield fleet, call


@asynccontextmanager
async def running_gateway(
    gateway_config: GatewayConfig | None = None,
    *,
    clock: FakeClock | None = None,
    **options: object,
) -> AsyncIterator[tuple[Fleet, Callable[..., Awaitable[Response]], Gateway]]:
    registry = EmbeddedRegistry()
    registry.start()
    fleet = Fleet(registry)
    chosen = msgspec.structs.replace(gateway_config or config(), port=free_port())
    gateway = Gateway(chosen, registry, clock=clock, **options)  # type: ignore[arg-type]
    _, port = await gateway.start()
    client = HTTPClient()

    async def call(
        method: str,
        path: str,
        *,
        key: str | None = KEY,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Response:
        sent = list(headers or [])
        if key is not None:
            sent.append((b"x-api-key", key.encode()))
        return await client.request(method, "127.0.0.1", port, path, headers=sent)

    try:
        yield fleet, call, gateway
    finally:
        await client.aclose()
        await gateway.aclose(grace=1)
        await fleet.aclose()
        await registry.aclose()


async def test_routes_strip_the_prefix_and_reach_the_service() -> None:
    """/api/orders/7 reaches orders as /orders/7; a pattern route passes its path on."""
    async with running() as (fleet, call):
        await fleet.add("orders")
        await fleet.add("items")
        answer = await call("GET", "/api/orders/7?x=1")
        assert answer.status == 200
        assert answer.json() == {"service": "orders", "path": "/orders/7"}
        answer = await call("GET", "/api/items/3")
        assert answer.json() == {"service": "items", "path": "/items/3"}


async def test_no_route_is_404_a_wrong_method_405_and_an_ambiguous_path_400() -> None:
    async with running() as (fleet, call):
        await fleet.add("items")
        assert (await call("GET", "/nowhere")).status == 404
        refused = await call("POST", "/api/items/3")
        assert refused.status == 405
        assert refused.header("allow") == "GET"
        assert (await call("GET", "/api/orders/%2e%2e/admin")).status == 400
        assert not fleet.hits


async def test_without_a_valid_key_the_answer_is_401_and_nothing_is_forwarded() -> None:
    async with running() as (fleet, call):
        await fleet.add("orders")
        missing = await call("GET", "/api/orders", key=None)
        assert missing.status == 401
        assert missing.header("www-authenticate") == 'ApiKey header="X-API-Key"'
        wrong = await call("GET", "/api/orders", key="not-a-key-at-all")
        assert wrong.status == 401
        assert "unknown API key" in wrong.json()["detail"]
        assert not fleet.hits


async def test_a_key_limited_to_some_services_gets_403_elsewhere() -> None:
    keys = [ApiKey(name="items-only", key=KEY, services=["items"])]
    async with running(config(api_keys=keys)) as (fleet, call):
        await fleet.add("orders")
        await fleet.add("items")
        assert (await call("GET", "/api/items/1")).status == 200
        refused = await call("GET", "/api/orders")
        assert refused.status == 403
        assert refused.json()["detail"] == "the key 'items-only' may not call orders"


ADMIN_KEY = "admin-key-for-tests"


def keyed_config() -> GatewayConfig:
    """Reading /api/stock takes any key; changing it, the admin's alone (from $TEST_ADMIN_KEY)."""
    return config(
        api_keys=[
            ApiKey(name="tests", key=KEY),
            ApiKey(name="admin", key_env="TEST_ADMIN_KEY"),
        ],
        routes=[
            RouteConfig(path="/api/stock", service="stock", strip="/api", methods=["GET"]),
            RouteConfig(
                path="/api/stock", service="stock", strip="/api", methods=["PUT"], keys=["admin"]
            ),
        ],
    )


async def test_a_route_naming_its_keys_refuses_the_others_with_403(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key missing from a route's keys gets 403 there, and nothing is forwarded."""
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN_KEY)
    async with running(keyed_config()) as (fleet, call):
        await fleet.add("stock")
        assert (await call("GET", "/api/stock/1")).status == 200
        refused = await call("PUT", "/api/stock/1")
        assert refused.status == 403
        assert "the key 'tests' may not call PUT /api/stock" in refused.text
        assert fleet.paths == ["/stock/1"]
        assert (await call("PUT", "/api/stock/1", key=ADMIN_KEY)).status == 200
        assert (await call("GET", "/api/stock/1", key=ADMIN_KEY)).status == 200
        assert fleet.paths == ["/stock/1"] * 3


async def test_a_key_from_an_unset_variable_is_disabled(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without its variable the admin key is unknown (401), and the gateway says why."""
    monkeypatch.delenv("TEST_ADMIN_KEY", raising=False)
    async with running(keyed_config()) as (fleet, call):
        await fleet.add("stock")
        assert (await call("PUT", "/api/stock/1", key=ADMIN_KEY)).status == 401
        assert (await call("PUT", "/api/stock/1", key="")).status == 401
        assert not fleet.hits
    assert "the API key 'admin' is disabled: $TEST_ADMIN_KEY is not set" in caplog.text


@pytest.mark.parametrize(
    ("value", "problem"),
    [("short", "must hold 8 characters or more"), (KEY, "is also the key of 'tests'")],
)
def test_a_key_variable_holding_a_bad_key_stops_the_gateway(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    """A short key, or one that would stand in for another key, is a ConfigError naming key_env."""
    monkeypatch.setenv("TEST_ADMIN_KEY", value)
    with pytest.raises(ConfigError, match=problem) as caught:
        Gateway(keyed_config(), EmbeddedRegistry())
    assert caught.value.key == "gateway.api_keys[1].key_env"


def test_a_literal_key_equal_to_an_earlier_variable_s_key_stops_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whichever comes first, a variable's key may not be another key's: ConfigError."""
    monkeypatch.setenv("TEST_ADMIN_KEY", ADMIN_KEY)
    keys = [ApiKey(name="admin", key_env="TEST_ADMIN_KEY"), ApiKey(name="tests", key=ADMIN_KEY)]
    with pytest.raises(ConfigError, match="is also the key of 'admin'") as caught:
        Gateway(config(api_keys=keys), EmbeddedRegistry())
    assert caught.value.key == "gateway.api_keys[1].key"


async def test_a_public_route_needs_no_key() -> None:
    async with running() as (fleet, call):
        await fleet.add("items")
        assert (await call("GET", "/public", key=None)).status == 200


async def test_the_rate_limit_admits_the_burst_exactly_under_concurrency() -> None:
    """200 requests at once against a burst of 50 (refilling 1/s): 50 or 51 pass, the rest 429."""
    keys = [ApiKey(name="tests", key=KEY, rate=1, burst=50)]
    async with running(config(api_keys=keys)) as (fleet, call):
        await fleet.add("orders")
        answers = await asyncio.gather(*(call("GET", "/api/orders") for _ in range(200)))
        statuses = Counter(answer.status for answer in answers)
        assert statuses[200] in (50, 51), statuses
        assert statuses[200] + statuses[429] == 200
        refused = next(answer for answer in answers if answer.status == 429)
        assert refused.header("retry-after") == "1"
        assert refused.header("ratelimit-policy") == '"client";q=50;w=50'
        assert refused.header("ratelimit").startswith('"client";r=0;t=')  # type: ignore[union-attr]
        admitted = next(answer for answer in answers if answer.status == 200)
        assert admitted.header("ratelimit") is not None


async def test_no_instance_is_a_503_naming_the_service() -> None:
    async with running() as (_, call):
        answer = await call("GET", "/api/orders")
        assert answer.status == 503
        detail = answer.json()["detail"]
        assert detail == "service 'orders' is unavailable: no instances are registered"


async def test_a_failing_instance_is_ejected_and_a_new_one_takes_the_traffic() -> None:
    """The only instance is kept however it fails; beside a new one, it is ejected."""

    async def broken(request: Request) -> Response:
        return json_response(502, {"error": "broken"})

    async with running_gateway() as (fleet, call, gateway):
        changed = asyncio.Event()
        gateway.directory.listen(lambda snapshot: changed.set())
        sick = await fleet.add("orders", broken)
        assert [(await call("POST", "/api/orders")).status for _ in range(4)] == [502] * 4
        assert fleet.hits[sick] == 4  # ejection never takes out the last instance
        changed.clear()
        healthy = await fleet.add("orders")
        async with asyncio.timeout(5):
            await changed.wait()  # the registry's watch brought the new instance
        for _ in range(10):  # a GET's 502 is retried on the healthy instance
            assert (await call("GET", "/api/orders")).status == 200
        assert fleet.hits[sick] <= 4 + 3  # then ejected: one of two may be
        assert fleet.hits[healthy] == 10
        assert gateway.upstreams.health()["orders"][0]["state"] in ("open", "closed")


async def test_the_request_running_out_of_time_does_not_eject_instances() -> None:
    """A 504 from the gateway's own deadline charges no instance: both stay in rotation."""

    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.5)  # noqa: TID251 (real time: longer than the gateway's timeout)
        return json_response(200, {})

    never_open = BreakerConfig(consecutive_failures=100, failure_rate=None)
    async with running_gateway(config(timeout=0.1, breaker=never_open)) as (fleet, call, gateway):
        await fleet.add("orders", slow)
        await fleet.add("orders", slow)
        for _ in range(8):  # three in a row on one of them would eject it if counted
            assert (await call("POST", "/api/orders")).status == 504
        states = [entry["state"] for entry in gateway.upstreams.health()["orders"]]
        assert states == ["closed", "closed"]


async def test_a_failing_write_route_leaves_the_read_route_open() -> None:
    """POST's breaker opens on its failures; GET on the same instance keeps answering 200."""

    async def writes_fail(request: Request) -> Response:
        return json_response(503 if request.method == "POST" else 200, {})

    clock = FakeClock(autojump_threshold=None)
    async with running_gateway(clock=clock) as (fleet, call, gateway):
        port = await fleet.add("orders", writes_fail)
        for _ in range(5):  # the default breaker's consecutive failures
            assert (await call("POST", "/api/orders")).status == 503
        refused = await call("POST", "/api/orders")
        assert refused.status == 503
        assert "circuit breaker of POST /api/orders is open" in refused.body.decode()
        assert fleet.hits[port] == 5
        for _ in range(10):
            assert (await call("GET", "/api/orders")).status == 200
        assert gateway.upstreams.breakers() == {
            "POST /api/orders": "open",
            "GET /api/orders": "closed",
        }
        clock.advance(1.0)  # a route's breaker opens 1 s at a time
        assert (await call("POST", "/api/orders")).status == 503  # the probe, which fails


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"port": 0}, "gateway.port"),
        ({"routes": []}, "gateway.routes"),
        ({"routes": [RouteConfig(path="api", service="orders")]}, "gateway.routes[0].path"),
        ({"api_keys": [ApiKey(name="a", key="short")]}, "gateway.api_keys[0].key"),
        ({"api_keys": [ApiKey(name="a", key=KEY, rate=0)]}, "gateway.api_keys[0].rate"),
        (
            {"api_keys": [ApiKey(name="a", key=KEY), ApiKey(name="a", key=KEY + "x")]},
            "gateway.api_keys[1].name",
        ),
        (
            {"global_limits": [GlobalLimit(name="a b", rate=1, burst=1)]},
            "gateway.global_limits[0].name",
        ),
        (
            {"global_limits": [GlobalLimit(name="g", rate=1, burst=0)]},
            "gateway.global_limits[0].burst",
        ),
        (
            {"global_limits": [GlobalLimit(name="g", rate=1, burst=1)] * 2},
            "gateway.global_limits[1].name",
        ),
        (
            {"global_limits": [GlobalLimit(name="g", rate=1e-6, burst=1000)]},
            "gateway.global_limits[0].burst",
        ),
        ({"redis": RedisConfig(url="http://x", on_unreachable="open")}, "gateway.redis.url"),
        (
            {"redis": RedisConfig(url="redis://127.0.0.1:abc/0", on_unreachable="open")},
            "gateway.redis.url",
        ),
        (
            {"routes": [RouteConfig(path="/a", service="a", split={"1": 0})]},
            "gateway.routes[0].split",
        ),
        (
            {"routes": [RouteConfig(path="/a", service="a", split={"1": 1}, sticky="user")]},
            "gateway.routes[0].sticky",
        ),
        (
            {"routes": [RouteConfig(path="/a", service="a", sticky="header:x-user")]},
            "gateway.routes[0].sticky",
        ),
        (
            {"redis": RedisConfig(url="redis://x", on_unreachable="open", timeout=0)},
            "gateway.redis.timeout",
        ),
        ({"host": "not a host"}, "gateway.host"),
        ({"admin": AdminConfig(port=9001, host="a host")}, "gateway.admin.host"),
        (
            {"routes": [RouteConfig(path="/a", service="a", methods=[])]},
            "gateway.routes[0].methods",
        ),
        ({"api_keys": [ApiKey(name="jwt:bob", key=KEY)]}, "gateway.api_keys[0].name"),
        ({"api_keys": [ApiKey(name="", key=KEY)]}, "gateway.api_keys[0].name"),
        (
            {"api_keys": [ApiKey(name="a", key=KEY), ApiKey(name="b", key=KEY)]},
            "gateway.api_keys[1].key",
        ),
        ({"api_keys": [ApiKey(name="a")]}, "gateway.api_keys[0].key"),
        ({"api_keys": [ApiKey(name="a", key=KEY, key_env="K")]}, "gateway.api_keys[0].key"),
        ({"api_keys": [ApiKey(name="a", key_env="NOT A NAME")]}, "gateway.api_keys[0].key_env"),
        (
            {"routes": [RouteConfig(path="/a", service="a", keys=["nobody"])]},
            "gateway.routes[0].keys",
        ),
        ({"routes": [RouteConfig(path="/a", service="a", keys=[])]}, "gateway.routes[0].keys"),
        (
            {
                "routes": [
                    RouteConfig(path="/a", service="a", keys=["tests"]),
                    RouteConfig(path="/a", service="a"),
                ]
            },
            "gateway.routes[1]",
        ),
        (
            {"routes": [RouteConfig(path="/a", service="a", auth="none", keys=["tests"])]},
            "gateway.routes[0].keys",
        ),
        ({"jwt": JwtConfig(secret_env="S", rate=0)}, "gateway.jwt.rate"),
        ({"jwt": JwtConfig(secret_env="S", burst=0)}, "gateway.jwt.burst"),
    ],
)
def test_a_bad_gateway_configuration_names_its_key(changes: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(**changes)
    assert caught.value.key == key


async def test_a_failed_get_is_retried_on_the_healthy_instance() -> None:
    """Whenever the broken instance answers 502, the client still gets the healthy one's 200."""

    async def broken(request: Request) -> Response:
        return json_response(502, {"error": "broken"})

    async with running_gateway() as (fleet, call, gateway):
        sick = await fleet.add("orders", broken)
        healthy = await fleet.add("orders")
        statuses = []
        for _ in range(50):
            statuses.append((await call("GET", "/api/orders")).status)
            if fleet.hits[sick]:
                break
        assert fleet.hits[sick] == 1
        assert set(statuses) == {200}
        assert fleet.hits[healthy] == len(statuses)
        budget = gateway.upstreams._sets["orders"].budget
        assert (budget.active_requests, budget.active_retries) == (0, 0)  # all given back


async def test_a_post_is_not_retried_after_the_instance_answered() -> None:
    """A 502 to a POST stands: the instance may have acted on it."""

    async def broken(request: Request) -> Response:
        return json_response(502, {"error": "broken"})

    async with running() as (fleet, call):
        sick = await fleet.add("orders", broken)
        assert (await call("POST", "/api/orders")).status == 502
        assert fleet.hits[sick] == 1


async def test_a_refused_connection_is_retried_even_for_a_post() -> None:
    """Nothing was sent to an instance that refused the connection, so any method goes elsewhere."""
    async with running_gateway() as (fleet, call, gateway):
        dead = free_port()  # registered, but nothing listens there
        await fleet.registry.register(
            Instance(service="orders", id="orders-dead", host="127.0.0.1", port=dead), ttl=30
        )
        healthy = await fleet.add("orders")
        for _ in range(20):
            assert (await call("POST", "/api/orders")).status == 200
        assert fleet.hits[healthy] == 20
        instances = gateway.upstreams._sets["orders"]
        (dead_key,) = (key for key in instances.breakers if "orders-dead" in key)
        tried = instances.breakers[dead_key].statistics(0.0)
        assert tried.total_failures >= 1  # it was picked, refused, and the POST went on


async def test_a_slow_upstream_is_a_504_once_the_tries_are_spent() -> None:
    """Each try is cut at try_timeout; with no other instance the answer is 504."""

    async def slow(request: Request) -> Response:
        await asyncio.Event().wait()  # never answers: the gateway must time out
        return json_response(200, {})

    async with running(config(try_timeout=0.3, timeout=2.0)) as (fleet, call):
        await fleet.add("orders", slow)
        answer = await call("GET", "/api/orders")
        assert answer.status == 504
        assert "sent nothing for 0.3s" in answer.json()["detail"]


async def test_a_post_answered_502_counts_once_against_its_instance() -> None:
    """A 502 that is not retried is recorded once: three of them, not two, eject the instance."""

    async def broken(request: Request) -> Response:
        return json_response(502, {"error": "broken"})

    async with running() as (fleet, call):
        sick = await fleet.add("orders", broken)
        statuses = [(await call("POST", "/api/orders")).status for _ in range(3)]
        assert statuses == [502, 502, 502]
        assert fleet.hits[sick] == 3


async def test_a_client_that_leaves_gives_back_its_pick() -> None:
    """A request abandoned mid-answer leaves no outstanding count or breaker ticket behind."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def waits(request: Request) -> Response:
        arrived.set()
        await release.wait()
        return json_response(200, {})

    async with running_gateway() as (fleet, call, gateway):
        finished = asyncio.Event()
        gateway.server.on_exchange.append(lambda record: finished.set())
        await fleet.add("orders", waits)
        pending = asyncio.create_task(call("GET", "/api/orders"))
        await arrived.wait()
        pending.cancel()  # the client gives up and closes its connection
        with pytest.raises(asyncio.CancelledError):
            await pending
        async with asyncio.timeout(5):
            await finished.wait()  # the proxy noticed the close and ended the exchange
        instances = gateway.upstreams._sets["orders"]
        (key,) = instances.breakers
        assert instances.balancer.load(key)[1] == 0
        assert instances.budget.active_requests == 0
        release.set()


SECRET = "a-shared-secret-of-thirty-two-chars-or-more"


def jwt_config(**jwt_options: object) -> GatewayConfig:
    return config(
        routes=[RouteConfig(path="/api/orders", service="orders", strip="/api", auth="jwt")],
        jwt=JwtConfig(**jwt_options),  # type: ignore[arg-type]
    )


def token(claims: dict[str, object], key: object = SECRET, **header: object) -> str:
    defaults = {"sub": "ada", "exp": int(time.time()) + 60}  # noqa: TID251 (a real expiry)
    algorithm = str(header.pop("algorithm", "HS256"))
    return str(
        pyjwt.encode({**defaults, **claims}, key, algorithm=algorithm, headers=header or None)
    )


def bearer(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + value.encode())]


async def test_a_valid_hs256_token_passes_and_bad_ones_get_401(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_JWT_SECRET", SECRET)
    async with running(jwt_config(secret_env="TEST_JWT_SECRET")) as (fleet, call):
        await fleet.add("orders")
        assert (await call("GET", "/api/orders", key=None, headers=bearer(token({})))).status == 200
        missing = await call("GET", "/api/orders", key=None)
        assert missing.status == 401
        assert missing.header("www-authenticate") == 'Bearer realm="meshkit"'
        expired = await call("GET", "/api/orders", key=None, headers=bearer(token({"exp": 1})))
        assert expired.status == 401
        assert expired.json()["detail"] == "the token has expired"
        forged = token({}, key="another-secret-of-thirty-two-characters")
        refused = await call("GET", "/api/orders", key=None, headers=bearer(forged))
        assert refused.status == 401
        assert 'error="invalid_token"' in refused.header("www-authenticate")  # type: ignore[operator]
        unsigned = pyjwt.encode({"sub": "ada", "exp": 2**31}, None, algorithm="none")
        assert (await call("GET", "/api/orders", key=None, headers=bearer(unsigned))).status == 401
        assert fleet.hits.total() == 1


async def test_rs256_tokens_are_checked_against_the_jwks_file(tmp_path: Path) -> None:
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(signing.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    gateway_config = jwt_config(algorithms=["RS256"], jwks_file=str(tmp_path / "jwks.json"))
    async with running(gateway_config) as (fleet, call):
        await fleet.add("orders")
        good = token({}, signing, algorithm="RS256", kid="k1")
        assert (await call("GET", "/api/orders", key=None, headers=bearer(good))).status == 200
        bad = token({}, stranger, algorithm="RS256", kid="k1")
        assert (await call("GET", "/api/orders", key=None, headers=bearer(bad))).status == 401
        hs = token({})  # HS256 is not accepted on an RS256-only gateway
        assert (await call("GET", "/api/orders", key=None, headers=bearer(hs))).status == 401


async def test_each_jwt_subject_has_its_own_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_JWT_SECRET", SECRET)
    gateway_config = jwt_config(secret_env="TEST_JWT_SECRET", rate=0.001, burst=2)
    async with running(gateway_config) as (fleet, call):
        await fleet.add("orders")
        ada, bob = bearer(token({"sub": "ada"})), bearer(token({"sub": "bob"}))
        statuses = [
            (await call("GET", "/api/orders", key=None, headers=ada)).status for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        assert (await call("GET", "/api/orders", key=None, headers=bob)).status == 200


def test_a_negative_jwt_leeway_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        JwtConfig(secret_env="S", leeway=-100)
    assert caught.value.key == "gateway.jwt.leeway"


def test_a_jwt_route_needs_a_jwt_section() -> None:
    with pytest.raises(ConfigError) as caught:
        config(routes=[RouteConfig(path="/a", service="a", auth="jwt")])
    assert caught.value.key == "gateway.routes[0].auth"


async def test_the_route_breaker_opens_then_recovers_through_half_open() -> None:
    """Two failed requests open it (503, the instance spared); after open_for a probe closes it."""
    healthy = {"now": False}

    async def flaky(request: Request) -> Response:
        return json_response(200 if healthy["now"] else 502, {})

    breaker = BreakerConfig(
        consecutive_failures=2, failure_rate=None, open_for=0.3, half_open_successes=1
    )
    clock = FakeClock(autojump_threshold=None)  # the policies' clock; the network's is real
    async with running_gateway(config(breaker=breaker), clock=clock) as (fleet, call, gateway):
        port = await fleet.add("orders", flaky)
        assert [(await call("GET", "/api/orders")).status for _ in range(2)] == [502, 502]
        refused = await call("GET", "/api/orders")
        assert refused.status == 503
        assert "circuit breaker of GET /api/orders is open" in refused.json()["detail"]
        assert gateway.upstreams.breakers() == {"GET /api/orders": "open"}
        hits = fleet.hits[port]
        healthy["now"] = True
        clock.advance(0.3)  # the breaker's open period passes
        assert (await call("GET", "/api/orders")).status == 200  # the half-open probe
        assert gateway.upstreams.breakers() == {"GET /api/orders": "closed"}
        assert (await call("GET", "/api/orders")).status == 200
        assert fleet.hits[port] == hits + 2


async def test_a_global_limit_applies_to_its_services_and_names_itself() -> None:
    """Three orders pass, the fourth gets 429 naming the limit; items are not limited by it."""
    limited = config(
        global_limits=[
            GlobalLimit(name="orders-all", rate=0.01, burst=3, services=["orders"], per="total")
        ]
    )
    async with running(limited) as (fleet, call):
        await fleet.add("orders")
        await fleet.add("items")
        statuses = [(await call("GET", "/api/orders")).status for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = await call("GET", "/api/orders")
        assert "global rate limit 'orders-all'" in refused.json()["detail"]
        assert refused.header("retry-after") is not None
        assert refused.header("ratelimit-policy") == '"orders-all";q=3;w=300'
        assert (await call("GET", "/api/items/1")).status == 200


async def test_a_global_limit_per_client_gives_each_key_its_own_burst() -> None:
    """With per = "client", two keys each get the whole burst."""
    keys = [ApiKey(name="one", key=KEY, rate=100, burst=100)]
    keys.append(ApiKey(name="two", key=KEY + "-2", rate=100, burst=100))
    limited = config(api_keys=keys, global_limits=[GlobalLimit(name="g", rate=0.01, burst=2)])
    async with running(limited) as (fleet, call):
        await fleet.add("orders")
        for key in (KEY, KEY + "-2"):
            statuses = [(await call("GET", "/api/orders", key=key)).status for _ in range(3)]
            assert statuses == [200, 200, 429]


def split_config(sticky: str | None = None) -> GatewayConfig:
    route = RouteConfig(
        path="/api/orders", service="orders", strip="/api", split={"2": 20, "1": 80}, sticky=sticky
    )
    return config(routes=[route])


async def test_a_split_sends_each_version_its_share() -> None:
    """20/80 between versions 2 and 1: about a fifth of 500 requests reach version 2."""
    async with running(split_config()) as (fleet, call):
        new = await fleet.add("orders", version="2")
        await fleet.add("orders", version="1")
        for _ in range(500):
            assert (await call("GET", "/api/orders")).status == 200
        assert 70 <= fleet.hits[new] <= 130


async def test_a_sticky_split_keeps_each_user_on_one_version() -> None:
    """Every request of a user (by header or cookie) reaches the same version; both get users."""
    for sticky, send in (
        ("header:x-user-id", lambda user: [(b"x-user-id", user)]),
        ("cookie:session", lambda user: [(b"cookie", b"theme=dark; session=" + user)]),
    ):
        async with running(split_config(sticky)) as (fleet, call):
            new = await fleet.add("orders", version="2")
            old = await fleet.add("orders", version="1")
            users_on_new = 0
            for user in range(40):
                before = fleet.hits[new]
                for _ in range(4):
                    headers = send(f"user-{user}".encode())
                    assert (await call("GET", "/api/orders", headers=headers)).status == 200
                landed = fleet.hits[new] - before
                assert landed in (0, 4)  # all four on one version
                users_on_new += landed == 4
            assert 0 < users_on_new < 40
            assert fleet.hits[new] + fleet.hits[old] == 160


async def test_the_registry_s_weights_split_the_service_and_a_change_applies_at_once() -> None:
    """Weights set in the registry (a rollout's table) reach the gateway through its watch:
    all traffic to version 2, then, once changed, all to version 1."""
    async with running() as (fleet, call):
        new = await fleet.add("orders", version="2")
        old = await fleet.add("orders", version="1")
        await fleet.registry.set_weights("orders", {"2": 100, "1": 0})
        for _ in range(40):
            assert (await call("GET", "/api/orders")).status == 200
        # The first request may have come before the watch saw the weights.
        assert fleet.hits[new] >= 39
        await fleet.registry.set_weights("orders", {"2": 0, "1": 100})
        async with asyncio.timeout(5):
            while True:  # until the watch has brought the change
                before = fleet.hits[old]
                assert (await call("GET", "/api/orders")).status == 200
                if fleet.hits[old] > before:
                    break
        for _ in range(40):
            assert (await call("GET", "/api/orders")).status == 200
        assert fleet.hits[old] == 41


async def test_a_split_version_without_instances_gives_way() -> None:
    """Nothing runs version 2: every request goes to version 1; nothing at all is a 503."""
    async with running(split_config()) as (fleet, call):
        await fleet.add("orders", version="1")
        statuses = {(await call("GET", "/api/orders")).status for _ in range(50)}
        assert statuses == {200}
    async with running(split_config()) as (fleet, call):
        await fleet.add("orders", version="3")
        answer = await call("GET", "/api/orders")
        assert answer.status == 503
        assert "no instance runs a version of the route's split" in answer.json()["detail"]


CORS = CorsConfig(allow_origins=["https://shop.example"], expose_headers=["x-request-id"])


async def test_a_cors_preflight_is_answered_without_a_key() -> None:
    """OPTIONS from an allowed origin gets 204 with the allowed methods; no service is called."""
    async with running(config(cors=CORS)) as (fleet, call):
        await fleet.add("orders")
        preflight = [
            (b"origin", b"https://shop.example"),
            (b"access-control-request-method", b"POST"),
            (b"access-control-request-headers", b"Content-Type, X-API-Key"),
        ]
        answer = await call("OPTIONS", "/api/orders", key=None, headers=preflight)
        assert answer.status == 204
        assert answer.header("access-control-allow-origin") == "https://shop.example"
        assert "POST" in (answer.header("access-control-allow-methods") or "")
        assert answer.header("vary") == "origin"
        assert sum(fleet.hits.values()) == 0


@pytest.mark.parametrize(
    ("origin", "method", "headers", "reason"),
    [
        (b"https://evil.example", b"GET", b"", "origin https://evil.example"),
        (b"https://shop.example", b"TRACE", b"", "method TRACE"),
        (b"https://shop.example", b"GET", b"x-secret", "header(s) x-secret"),
    ],
)
async def test_a_cors_preflight_outside_the_rules_is_403(
    origin: bytes, method: bytes, headers: bytes, reason: str
) -> None:
    """An unknown origin, method or header: 403 naming it, and no CORS fields."""
    async with running(config(cors=CORS)) as (_, call):
        preflight = [(b"origin", origin), (b"access-control-request-method", method)]
        if headers:
            preflight.append((b"access-control-request-headers", headers))
        answer = await call("OPTIONS", "/api/orders", key=None, headers=preflight)
        assert answer.status == 403
        assert reason in answer.json()["detail"]
        assert answer.header("access-control-allow-origin") is None


async def test_answers_to_an_allowed_origin_carry_cors_fields_errors_included() -> None:
    """A 200 and a 401 both say the origin may read them; no Origin, no fields."""
    async with running(config(cors=CORS)) as (fleet, call):
        await fleet.add("orders", lambda _: _answer_with_own_cors())
        origin = [(b"origin", b"https://shop.example")]
        ok = await call("GET", "/api/orders", headers=origin)
        assert ok.status == 200
        assert ok.header("access-control-allow-origin") == "https://shop.example"
        assert ok.header("access-control-expose-headers") == "x-request-id"
        refused = await call("GET", "/api/orders", key=None, headers=origin)
        assert refused.status == 401
        assert refused.header("access-control-allow-origin") == "https://shop.example"
        plain = await call("GET", "/api/orders")  # no Origin: the upstream's answer untouched
        assert plain.header("access-control-allow-origin") == "*"
        assert plain.header("access-control-expose-headers") is None


async def _answer_with_own_cors() -> Response:
    # An upstream's own CORS field must not survive beside the gateway's.
    return Response(200, [(b"access-control-allow-origin", b"*")], b"{}")


def test_cors_with_any_origin_and_credentials_is_refused() -> None:
    with pytest.raises(ConfigError, match="allow_credentials"):
        CorsConfig(allow_origins=["*"], allow_credentials=True)


def test_cors_names_must_be_tokens() -> None:
    """A header name with a space or a non-ASCII letter is refused, naming its place."""
    with pytest.raises(ConfigError) as caught:
        CorsConfig(allow_origins=["https://a.example"], allow_headers=["x-träce"])
    assert caught.value.key == "gateway.cors.allow_headers[0]"


async def test_an_upstream_cannot_open_cors_to_an_origin_the_gateway_refuses() -> None:
    """An upstream reflecting any Origin: its fields are dropped for a refused origin."""

    async def reflecting(request: Request) -> Response:
        origin = (request.header("origin") or "").encode()
        fields = [(b"access-control-allow-origin", origin)]
        fields.append((b"access-control-allow-credentials", b"true"))
        return Response(200, fields, b"{}")

    async with running(config(cors=CORS)) as (fleet, call):
        await fleet.add("orders", reflecting)
        evil = await call("GET", "/api/orders", headers=[(b"origin", b"https://evil.example")])
        assert evil.status == 200
        assert evil.header("access-control-allow-origin") is None
        assert evil.header("access-control-allow-credentials") is None
        assert evil.header("vary") == "origin"
        upper = await call("GET", "/api/orders", headers=[(b"origin", b"https://Shop.Example")])
        assert upper.header("access-control-allow-origin") == "https://Shop.Example"


ADMIN_TOKEN = "admin-token-for-tests-0123456789"


def admin_config(**changes: object) -> GatewayConfig:
    return config(admin=AdminConfig(port=free_port()), **changes)


@asynccontextmanager
async def admin_client(gateway: Gateway) -> AsyncIterator[Callable[..., Awaitable[Response]]]:
    client = HTTPClient()
    assert gateway.config.admin is not None
    port = gateway.config.admin.port

    async def admin(method: str, path: str, *, token: str | None = ADMIN_TOKEN) -> Response:
        headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
        return await client.request(method, "127.0.0.1", port, path, headers=headers)

    try:
        yield admin
    finally:
        await client.aclose()


async def test_the_admin_api_needs_the_token_and_shows_the_state() -> None:
    """Without the token 401; with it routes, breakers, limits and upstreams as JSON."""
    slow_key = [ApiKey(name="tests", key=KEY, rate=0.01, burst=1000)]
    async with (
        running_gateway(admin_config(api_keys=slow_key), admin_token=ADMIN_TOKEN) as (
            fleet,
            call,
            gateway,
        ),
        admin_client(gateway) as admin,
    ):
        port = await fleet.add("orders", version="1.0")
        assert (await call("GET", "/api/orders")).status == 200
        assert (await admin("GET", "/admin/routes", token=None)).status == 401
        assert (await admin("GET", "/admin/routes", token="wrong-token")).status == 401
        routes = (await admin("GET", "/admin/routes")).json()
        assert [route["path"] for route in routes] == ["/api/orders", "/api/items/{id}", "/public"]
        assert (await admin("GET", "/admin/breakers")).json() == {"GET /api/orders": "closed"}
        upstreams = (await admin("GET", "/admin/upstreams")).json()
        assert upstreams["orders"] == [
            {
                "id": f"orders-{port}",
                "address": f"127.0.0.1:{port}",
                "version": "1.0",
                "state": "closed",
            }
        ]
        limits = (await admin("GET", "/admin/limits")).json()
        assert 998.99 < limits["api_keys"]["tests"] < 999.01
        assert limits["store"] == "none"
        assert (await admin("GET", "/admin/reload")).status == 405
        assert (await admin("GET", "/admin/nothing")).status == 404
        assert (await admin("GET", "/admin/nothing", token=None)).status == 401


async def test_metrics_count_requests_by_route_and_status() -> None:
    """Two 200s and a 401 on /api/orders show in the Prometheus text, with the breaker state."""
    async with (
        running_gateway(admin_config(), admin_token=ADMIN_TOKEN) as (fleet, call, gateway),
        admin_client(gateway) as admin,
    ):
        await fleet.add("orders")
        for key in (KEY, KEY, None):
            await call("GET", "/api/orders", key=key)
        answer = await admin("GET", "/metrics", token=None)
        assert answer.status == 200
        text = answer.body.decode()
        assert (
            'meshkit_gateway_requests_total{code="200",route="/api/orders",service="orders"} 2.0'
            in text
        )
        assert (
            'meshkit_gateway_requests_total{code="401",route="/api/orders",service="orders"} 1.0'
            in text
        )
        assert 'meshkit_gateway_request_duration_seconds_count{route="/api/orders"} 3.0' in text
        assert 'meshkit_gateway_breaker_state{route="GET /api/orders",state="closed"} 1.0' in text


async def test_a_reload_changes_routes_and_lets_requests_in_flight_finish() -> None:
    """A request held across the reload completes; the new route works on the same client."""
    release, arrived = asyncio.Event(), asyncio.Event()

    async def held(_: Request) -> Response:
        arrived.set()
        await release.wait()
        return json_response(200, {"held": True})

    wanted: list[GatewayConfig] = []  # what the file says when the reload reads it
    async with (
        running_gateway(
            admin_config(), admin_token=ADMIN_TOKEN, reloader=lambda: wanted.pop(0)
        ) as (fleet, call, gateway),
        admin_client(gateway) as admin,
    ):
        await fleet.add("orders", held)
        assert (await call("GET", "/v2/orders")).status == 404
        in_flight = asyncio.ensure_future(call("GET", "/api/orders"))
        await asyncio.wait_for(arrived.wait(), 5)  # the held request reached the instance
        running = gateway.config
        added = RouteConfig(path="/v2/orders", service="orders", strip="/v2")
        wanted.append(msgspec.structs.replace(running, routes=[*running.routes, added]))
        reloaded = await admin("POST", "/admin/reload")
        assert reloaded.json() == {"reloaded": True, "routes": 4}
        release.set()
        assert (await in_flight).status == 200
        assert (await call("GET", "/v2/orders")).status == 200
        wanted.append(msgspec.structs.replace(gateway.config, port=free_port()))
        refused = await admin("POST", "/admin/reload")  # a new port needs a restart
        assert refused.status == 400
        assert "gateway.port" in refused.json()["detail"]
        assert (await call("GET", "/v2/orders")).status == 200  # the running one stays


async def test_a_reload_keeps_each_key_s_bucket() -> None:
    """A key's spent burst stays spent across a reload: no fresh burst from reloading."""
    limited = config(api_keys=[ApiKey(name="tests", key=KEY, rate=0.01, burst=2)])
    async with running_gateway(limited) as (fleet, call, gateway):
        await fleet.add("orders")
        assert [(await call("GET", "/api/orders")).status for _ in range(2)] == [200, 200]
        gateway.reload(gateway.config)
        assert (await call("GET", "/api/orders")).status == 429


async def test_the_access_log_has_a_json_line_per_request() -> None:
    """Each request, answered or refused, is one line naming its route, service and status."""
    stream = io.BytesIO()
    async with running_gateway(access_log=AccessLog(stream)) as (fleet, call, _):
        await fleet.add("orders")
        assert (await call("GET", "/api/orders/1")).status == 200
        assert (await call("GET", "/api/orders/1", key=None)).status == 401
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["route"], line["service"], line["status"]) for line in lines] == [
        ("/api/orders", "orders", 200),
        ("/api/orders", "orders", 401),
    ]
    assert lines[0]["path"] == "/api/orders/1"  # as the client sent it
    assert lines[0]["request_id"] != lines[1]["request_id"]
