"""Every error meshkit answers over HTTP is an RFC 9457 problem, whoever answers it."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from meshkit import Service
from meshkit._plane_client import PlaneClient
from meshkit.control import ControlPlane
from meshkit.control._answers import body_error
from meshkit.errors import ConfigError, InvalidArgumentError, NotFoundError
from meshkit.gateway import AdminConfig, ApiKey, Gateway, GatewayConfig, RouteConfig
from meshkit.http import (
    PROBLEM_JSON,
    FieldError,
    HTTPServer,
    Problem,
    Request,
    Response,
    encode_problem,
)
from meshkit.http import json_response as json_answer
from meshkit.registry import EmbeddedRegistry
from meshkit.service import install_problem_handlers, problem_handlers
from meshkit.sidecar import Sidecar, SidecarConfig
from meshkit.testing.servers import free_port

fastapi = pytest.importorskip("fastapi", reason="the shop's extra: pip install 'meshkit[shop]'")
pydantic = pytest.importorskip("pydantic")

KEY = "problem-key"
SLOW_KEY = "problem-slow-key"  # one request, then 429 for a long while
TOKEN = "problem-token-0123456789abcdef"
MiB = 1024 * 1024
# Reason phrases RFC 9110 renamed, which HTTPStatus has only from Python 3.13.
RFC_9110 = {413: "Content Too Large", 422: "Unprocessable Content"}


@dataclass(frozen=True)
class Ask:
    """A request; ``length`` claims a Content-Length other than the body's."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    length: int | None = None
    repeat: int = 1  # sent this many times; the last answer is checked


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


Send = Callable[[Ask], Awaitable[Answer]]


async def over_http(port: int, ask: Ask) -> Answer:
    """One request on a connection of its own, raw: a server may refuse its head alone."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    length = len(ask.body) if ask.length is None else ask.length
    lines = [f"{ask.method} {ask.path} HTTP/1.1", "host: test", "connection: close"]
    lines += [f"content-length: {length}", *(f"{k}: {v}" for k, v in ask.headers)]
    writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + ask.body)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in fields:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, msgspec.json.decode(body))


# -- the servers -----------------------------------------------------------------------


@asynccontextmanager
async def gateway_ports() -> AsyncIterator[tuple[int, int]]:
    """A gateway with no instance behind its routes, and its admin API: (port, admin port)."""
    registry = EmbeddedRegistry()
    registry.start()
    config = GatewayConfig(
        port=free_port(),
        admin=AdminConfig(port=free_port()),
        api_keys=[
            ApiKey(name="tests", key=KEY),
            ApiKey(name="slow", key=SLOW_KEY, rate=0.001, burst=1),
        ],
        routes=[
            RouteConfig(path="/api/orders", service="orders", strip="/api"),
            RouteConfig(path="/api/items/{id}", service="items", strip="/api", methods=["GET"]),
        ],
    )
    gateway = Gateway(config, registry, admin_token=TOKEN)
    _, port = await gateway.start()
    try:
        assert config.admin is not None
        yield port, config.admin.port
    finally:
        await gateway.aclose(grace=1)
        await registry.aclose()


@asynccontextmanager
async def gateway() -> AsyncIterator[Send]:
    async with gateway_ports() as (port, _):
        yield lambda ask: over_http(port, ask)


@asynccontextmanager
async def gateway_admin() -> AsyncIterator[Send]:
    async with gateway_ports() as (_, admin):
        yield lambda ask: over_http(admin, ask)


@asynccontextmanager
async def sidecar() -> AsyncIterator[Send]:
    """A sidecar beside an app that is always healthy; requests go to its outbound port."""

    async def app(request: Request) -> Response:
        return json_answer(200, {})

    server = HTTPServer(app)
    _, app_port = await server.start()
    registry = EmbeddedRegistry()
    registry.start()
    config = SidecarConfig(service="app", app_host="127.0.0.1", app_port=app_port, health="/")
    car = Sidecar(config, registry)
    await car.start()
    try:
        yield lambda ask: over_http(car.ports[1], ask)
    finally:
        await car.aclose(grace=1)
        await server.aclose(grace=0)
        await registry.aclose()


@asynccontextmanager
async def control_plane() -> AsyncIterator[Send]:
    with tempfile.TemporaryDirectory() as data_dir:
        plane = ControlPlane(data_dir=Path(data_dir), token=TOKEN, port=0)
        _, port = await plane.start()
        try:
            yield lambda ask: over_http(port, ask)
        finally:
            await plane.aclose()


class Line(pydantic.BaseModel):  # type: ignore[misc]
    product_id: int
    quantity: int = pydantic.Field(gt=0)


class Order(pydantic.BaseModel):  # type: ignore[misc]
    items: list[Line]


def shop_app() -> Any:
    """A FastAPI app as the shop writes them: plain HTTPExceptions, a model, a bug."""
    app = fastapi.FastAPI()

    @app.get("/users/{user_id}")
    def user(user_id: int) -> dict[str, int]:
        raise fastapi.HTTPException(404, f"no user {user_id}")

    @app.get("/busy")
    def busy() -> None:
        raise fastapi.HTTPException(503, "payments is busy", headers={"Retry-After": "2"})

    @app.post("/orders")
    def order(order: Order) -> Order:
        return order

    @app.get("/bug")
    def bug() -> None:
        raise RuntimeError("secret: the database password is hunter2")

    return app


async def over_asgi(app: Any, ask: Ask) -> Answer:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.request(
            ask.method, ask.path, headers=list(ask.headers), content=ask.body
        )
    return Answer(answer.status_code, dict(answer.headers), answer.json())


@asynccontextmanager
async def service() -> AsyncIterator[Send]:
    """A FastAPI app given to Service, which installs the handlers in it."""
    app = shop_app()
    Service(app, name="problems", registry="http://127.0.0.1:1", token=TOKEN)
    yield lambda ask: over_asgi(app, ask)


SERVERS: dict[str, Callable[[], Any]] = {
    "gateway": gateway,
    "sidecar": sidecar,
    "admin": gateway_admin,
    "plane": control_plane,
    "service": service,
}

# -- the table -------------------------------------------------------------------------

REGISTRATION = b'{"service":"a","id":"a-1","host":"127.0.0.1","port":"x","ttl":5}'
BEARER = (("authorization", f"Bearer {TOKEN}"),)
WITH_KEY = (("x-api-key", KEY),)
REQUEST_ID = (("x-request-id", "req-42"),)


@dataclass(frozen=True)
class Case:
    server: str
    ask: Ask
    status: int
    members: dict[str, Any] = field(default_factory=dict)  # expected members beyond the five
    fields: tuple[str, ...] = ()  # the paths its `errors` name, in order


CASES = {
    "gateway: no route": Case("gateway", Ask("GET", "/nowhere", WITH_KEY), 404),
    "gateway: no API key": Case("gateway", Ask("GET", "/api/orders"), 401),
    "gateway: unknown API key": Case(
        "gateway", Ask("GET", "/api/orders", (("x-api-key", "nope"),)), 401
    ),
    "gateway: method not allowed": Case("gateway", Ask("POST", "/api/items/1", WITH_KEY), 405),
    "gateway: rate limit": Case(
        "gateway",
        Ask("GET", "/api/orders", (("x-api-key", SLOW_KEY),), repeat=2),
        429,
        {"retry_after": 1000},
    ),
    "gateway: no instance": Case("gateway", Ask("GET", "/api/orders", WITH_KEY), 503),
    "gateway: body too large": Case(
        "gateway", Ask("POST", "/api/orders", WITH_KEY, length=20 * MiB), 413
    ),
    "gateway: malformed request": Case(
        "gateway", Ask("GET", "/api/orders", (("content-length", "1"),)), 400
    ),
    "sidecar: unknown service": Case("sidecar", Ask("GET", "/nothing/1"), 503),
    "sidecar: bad service name": Case("sidecar", Ask("GET", "/Bad_Name/1"), 400),
    "admin: no token": Case("admin", Ask("GET", "/admin/routes"), 401),
    "admin: unknown endpoint": Case("admin", Ask("GET", "/admin/nothing", BEARER), 404),
    "admin: wrong method": Case("admin", Ask("GET", "/admin/reload", BEARER), 405),
    "plane: bad token": Case("plane", Ask("GET", "/v1/registry/services"), 401),
    "plane: bad lease body": Case(
        "plane", Ask("POST", "/v1/registry/instances", BEARER, REGISTRATION), 400, fields=("port",)
    ),
    "plane: body not JSON": Case(
        "plane", Ask("POST", "/v1/registry/instances", BEARER, b"{"), 400, fields=("body",)
    ),
    "plane: bad lease id": Case(
        "plane", Ask("PUT", "/v1/registry/leases/x", BEARER), 400, fields=("lease_id",)
    ),
    "plane: unknown lease": Case("plane", Ask("PUT", "/v1/registry/leases/12345", BEARER), 404),
    "plane: bad long poll": Case(
        "plane", Ask("GET", "/v1/registry/services?index=1&wait=x", BEARER), 400, fields=("wait",)
    ),
    "plane: bad fetch": Case(
        "plane",
        Ask("POST", "/v1/bus/groups/t/g/fetch", BEARER, b'{"limit":"ten"}'),
        400,
        fields=("limit",),
    ),
    "plane: unknown dead letter": Case(
        "plane", Ask("GET", "/v1/bus/dead-letters/12345", BEARER), 404
    ),
    "plane: bad dead letter id": Case(
        "plane", Ask("GET", "/v1/bus/dead-letters/nope", BEARER), 400, fields=("id",)
    ),
    "plane: malformed request": Case(
        "plane", Ask("GET", "/healthz", (("content-length", "x"),)), 400
    ),
    "service: HTTPException": Case("service", Ask("GET", "/users/7", REQUEST_ID), 404),
    "service: HTTPException with Retry-After": Case(
        "service", Ask("GET", "/busy", REQUEST_ID), 503, {"retry_after": 2}
    ),
    "service: validation error": Case(
        "service",
        Ask(
            "POST",
            "/orders",
            (*REQUEST_ID, ("content-type", "application/json")),
            b'{"items": [{"product_id": 1, "quantity": 0}, {"quantity": 1}]}',
        ),
        422,
        fields=("body.items.0.quantity", "body.items.1.product_id"),
    ),
    "service: a body that is not JSON": Case(
        "service",
        Ask(
            "POST",
            "/orders",
            (*REQUEST_ID, ("content-type", "application/json")),
            b'{"items": [oops]}',
        ),
        422,
        {"detail": "the request is not valid: body: is not valid JSON at byte 11"},
        fields=("body",),
    ),
    "service: unknown route": Case("service", Ask("GET", "/nowhere", REQUEST_ID), 404),
    "service: unhandled error": Case(
        "service", Ask("GET", "/bug", REQUEST_ID), 500, {"detail": "internal error"}
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_every_error_answer_is_a_problem(case: Case) -> None:
    """Status, content type, the five members, request id as instance, extensions where due."""
    async with SERVERS[case.server]() as send:
        for _ in range(case.ask.repeat):
            answer = await send(case.ask)
    assert answer.status == case.status, answer
    assert answer.headers["content-type"] == PROBLEM_JSON
    body = answer.body
    assert body["type"] == "about:blank"
    assert body["title"] == RFC_9110.get(case.status, HTTPStatus(case.status).phrase)
    assert body["status"] == case.status
    assert isinstance(body["detail"], str)
    assert body["detail"]
    request_id = answer.headers.get("x-request-id") or dict(case.ask.headers).get("x-request-id")
    assert body.get("instance") == request_id
    for name, value in case.members.items():
        assert body[name] == value, body
    assert [e["field"] for e in body.get("errors", [])] == list(case.fields), body
    assert all(isinstance(e["detail"], str) and e["detail"] for e in body.get("errors", []))
    if case.status == 401:  # RFC 9110, 11.6.1
        assert answer.headers["www-authenticate"]
    assert "Traceback" not in str(body)
    assert "hunter2" not in str(body)


# -- the value and its reading -----------------------------------------------------------


def test_a_problem_round_trips_through_its_json() -> None:
    """What Problem.encode writes, Problem.read gives back, extensions included."""
    problem = Problem(
        400,
        "ttl: must be positive",
        instance="req-1",
        retry_after=3,
        errors=(FieldError("ttl", "must be positive"),),
        extensions={"service": "orders"},
    )
    assert Problem.read(400, problem.encode()) == problem
    assert problem.title == "Bad Request"
    assert problem.summary() == "ttl: must be positive"  # says it once
    listing = Problem(422, "the request is not valid", errors=problem.errors)
    assert listing.summary() == "the request is not valid (ttl: must be positive)"


def test_a_body_that_is_not_a_problem_still_reads_as_one() -> None:
    """HTML from some proxy, an empty body, a JSON list: a problem whose detail says what came."""
    html = Problem.read(502, b"<html>Bad Gateway</html>")
    assert (html.status, html.detail) == (502, "<html>Bad Gateway</html>")
    assert Problem.read(503, b"").detail == "Service Unavailable"
    assert Problem.read(400, b"[1, 2]").detail == "[1, 2]"
    odd = Problem.read(200, b'{"detail": 7, "errors": [{"field": 1}], "retry_after": true}')
    assert (odd.status, odd.detail, odd.errors, odd.retry_after) == (
        500,
        "Internal Server Error",
        (),
        None,
    )


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"status": 200}, "status"),
        ({"status": True}, "status"),
        ({"status": 404, "extensions": {"errors": []}}, "extensions"),
        ({"status": 404, "extensions": {"title": "x"}}, "extensions"),
    ],
)
def test_a_problem_that_could_not_be_answered_is_refused(options: dict[str, Any], key: str) -> None:
    """A status that is no error, or an extension taking a member's name, is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        Problem(**options)
    assert caught.value.key == key


def test_retry_after_repeats_the_header_when_it_gives_seconds() -> None:
    """Seconds in Retry-After become retry_after; an HTTP-date stays in the header alone."""
    seconds, body = encode_problem(Problem(429), [(b"retry-after", b"5")])
    assert seconds[0] == (b"content-type", PROBLEM_JSON.encode())
    assert msgspec.json.decode(body)["retry_after"] == 5
    _, body = encode_problem(Problem(503), [(b"retry-after", b"Wed, 21 Oct 2026 07:28:00 GMT")])
    assert "retry_after" not in msgspec.json.decode(body)
    _, body = encode_problem(Problem(503, retry_after=9), [(b"retry-after", b"5")])
    assert msgspec.json.decode(body)["retry_after"] == 9


# -- the control plane's client ------------------------------------------------------------


async def test_the_plane_client_turns_problems_into_errors_of_one_line() -> None:
    """A 400 is an InvalidArgumentError on the field the problem names; a 404 a NotFoundError."""
    with tempfile.TemporaryDirectory() as data_dir:
        plane = ControlPlane(data_dir=Path(data_dir), token=TOKEN, port=0)
        host, port = await plane.start()
        client = PlaneClient(f"http://{host}:{port}", token=TOKEN)
        try:
            with pytest.raises(InvalidArgumentError) as bad:
                await client.call("POST", "/v1/registry/instances", body=REGISTRATION, expect=201)
            with pytest.raises(NotFoundError) as missing:
                await client.call("PUT", "/v1/registry/leases/12345")
            fetch = b'{"limit": "ten", "wait": 0}'
            with pytest.raises(InvalidArgumentError) as limit:
                await client.call("POST", "/v1/bus/groups/t/g/fetch", body=fetch)
        finally:
            await client.aclose()
            await plane.aclose()
    assert (bad.value.key, str(bad.value)) == ("port", "port: Expected `int`, got `str`")
    assert str(missing.value) == "lease 12345: no such lease (never granted, removed or replaced)"
    assert limit.value.key == "limit"
    for error in (bad.value, missing.value, limit.value):
        assert "\n" not in str(error)


# -- the SDK's handlers ------------------------------------------------------------------


async def test_an_unhandled_error_is_logged_with_the_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The 500's traceback goes to the meshkit.service log, not to the client."""
    app = shop_app()
    install_problem_handlers(app)
    with caplog.at_level(logging.ERROR, logger="meshkit.service"):
        answer = await over_asgi(app, Ask("GET", "/bug", REQUEST_ID))
    assert answer.body["detail"] == "internal error"
    [record] = caplog.records
    assert record.getMessage() == "GET /bug failed (request req-42)"
    assert record.exc_info is not None
    assert "hunter2" in str(record.exc_info[1])


async def test_a_service_can_keep_fastapis_own_answers() -> None:
    """With problem_details=False the app answers as FastAPI does by default."""
    app = shop_app()
    Service(app, name="problems", problem_details=False)
    answer = await over_asgi(app, Ask("GET", "/users/7"))
    assert answer.headers["content-type"] == "application/json"
    assert answer.body == {"detail": "no user 7"}


async def test_handlers_the_app_set_itself_are_kept() -> None:
    """An app's own HTTPException and 500 handlers win; FastAPI's defaults do not."""
    from starlette.exceptions import HTTPException

    async def own(request: Any, exc: Exception) -> Any:
        return fastapi.responses.JSONResponse({"own": True}, status_code=418)

    app = shop_app()
    app.add_exception_handler(HTTPException, own)
    app.add_exception_handler(500, own)
    install_problem_handlers(app)
    assert (await over_asgi(app, Ask("GET", "/users/7"))).body == {"own": True}
    assert (await over_asgi(app, Ask("GET", "/bug"))).body == {"own": True}
    validation = await over_asgi(app, Ask("POST", "/orders", body=b"{}"))
    assert validation.headers["content-type"] == PROBLEM_JSON  # not set by the app: ours


async def test_the_handlers_can_be_given_to_fastapi_and_starlette_directly() -> None:
    """FastAPI(exception_handlers=problem_handlers()) and a Starlette app answer problems."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    async def gone(request: Any) -> Any:
        raise HTTPException(410, "this order was archived")

    starlette = Starlette(routes=[Route("/orders/1", gone)])
    install_problem_handlers(starlette)
    answer = await over_asgi(starlette, Ask("GET", "/orders/1"))
    assert (answer.status, answer.body["detail"]) == (410, "this order was archived")
    assert answer.headers["content-type"] == PROBLEM_JSON
    app = fastapi.FastAPI(exception_handlers=problem_handlers())
    answer = await over_asgi(app, Ask("GET", "/nothing"))
    assert (answer.status, answer.headers["content-type"]) == (404, PROBLEM_JSON)


async def test_a_mapping_as_detail_gives_extension_members() -> None:
    """HTTPException(409, {"detail": ..., "order_id": 7}) answers detail and order_id."""
    app = fastapi.FastAPI()

    @app.get("/conflict")
    def conflict() -> None:
        detail = {"detail": "order 7 is paid already", "order_id": 7, "status": 200}
        raise fastapi.HTTPException(409, detail)

    install_problem_handlers(app)
    answer = await over_asgi(app, Ask("GET", "/conflict"))
    assert answer.status == 409
    assert answer.body["detail"] == "order 7 is paid already"
    assert answer.body["order_id"] == 7
    assert answer.body["status"] == 409  # the problem's own members are not overridden


def test_only_starlette_applications_take_the_handlers() -> None:
    """A plain ASGI app is served as it is by Service, and refused by install_problem_handlers."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    Service(app, name="plain")  # nothing to install in: no error
    with pytest.raises(ConfigError) as caught:
        install_problem_handlers(app)  # type: ignore[arg-type]
    assert caught.value.key == "app"


class Item(msgspec.Struct, forbid_unknown_fields=True):
    q: int


class Body(msgspec.Struct, forbid_unknown_fields=True):
    items: list[Item]
    meta: dict[str, str] = {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"items": [{"q": "x"}]}', "items.0.q"),
        (b'{"items": [{}]}', "items.0.q"),
        (b'{"items": [], "meta": {"k": 1}}', "meta"),
        (b'{"items": [], "colour": 1}', "colour"),
        (b"{}", "items"),
        (b"[]", "body"),
    ],
)
def test_a_refused_body_names_the_dotted_path_of_its_field(body: bytes, field: str) -> None:
    """msgspec's `$.items[0].q` is the field items.0.q; a message without a path is the body."""
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(body, type=Body)
    error = body_error(caught.value)
    assert error.key == field
    assert " - at " not in error.problem
