"""Route matching: the most specific route wins, and ambiguous paths are refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import ConfigError
from meshkit.policy import BadPath, NoRoute, Route, RouteMatch, RouteTable

SHOP = RouteTable(
    [
        Route(service="catch-all"),
        Route(service="orders", path="/api/orders", strip="/api"),
        Route(service="order-item", path="/api/orders/{id}", methods=frozenset({"GET"})),
        Route(service="history", path="/api/orders/history", strip="/api/orders"),
        Route(service="admin", path="/api", host="admin.example.com"),
        Route(service="tenant", path="/api/users", host="*.shop.test", strip="/api"),
    ]
)


def taken(method: str, path: str, host: str = "shop.test") -> tuple[str, str]:
    result = SHOP.match(method, host, path)
    assert isinstance(result, RouteMatch), result
    return result.route.service, result.path


@pytest.mark.parametrize(
    ("method", "path", "host", "service", "upstream"),
    [
        ("POST", "/api/orders", "shop.test", "orders", "/orders"),
        ("GET", "/api/orders/", "shop.test", "orders", "/orders/"),
        ("GET", "/api/orders/7", "shop.test", "order-item", "/api/orders/7"),
        ("DELETE", "/api/orders/7", "shop.test", "orders", "/orders/7"),  # falls to the prefix
        ("GET", "/api/orders/history", "shop.test", "history", "/history"),
        ("GET", "/api/orders/history/2026", "shop.test", "history", "/history/2026"),
        ("GET", "/api/ordersx", "shop.test", "catch-all", "/api/ordersx"),  # whole segments
        ("GET", "/api/orders", "admin.example.com:8000", "admin", "/api/orders"),  # host first
        ("GET", "/api/other", "ADMIN.example.com", "admin", "/api/other"),
        ("GET", "/api/users/1", "eu.shop.test", "tenant", "/users/1"),
        ("GET", "/api/users/1", "shop.test", "catch-all", "/api/users/1"),  # not *.shop.test
        ("GET", "/", "", "catch-all", "/"),
    ],
)
def test_the_most_specific_route_takes_the_request(
    method: str, path: str, host: str, service: str, upstream: str
) -> None:
    assert taken(method, path, host) == (service, upstream)


def test_declaration_order_breaks_ties_only() -> None:
    first = Route(service="first", path="/a")
    second = Route(service="second", path="/a")
    for routes in ([first, second], [second, first]):
        result = RouteTable(routes).match("GET", "", "/a/b")
        assert isinstance(result, RouteMatch)
        assert result.route is routes[0]


def test_a_pattern_gives_its_parameters_as_sent() -> None:
    table = RouteTable([Route(service="s", path="/u/{user}/o/{order}")])
    result = table.match("GET", "", "/u/ada%20l/o/7")
    assert isinstance(result, RouteMatch)
    assert result.params == {"user": "ada%20l", "order": "7"}
    assert table.match("GET", "", "/u/ada/o/7/x") == NoRoute(frozenset())  # whole path only


def test_a_method_mismatch_names_the_methods_that_would_match() -> None:
    table = RouteTable(
        [
            Route(service="read", path="/items", methods=frozenset({"GET", "HEAD"})),
            Route(service="write", path="/items/{id}", methods=frozenset({"PUT"})),
        ]
    )
    assert table.match("POST", "", "/items/1") == NoRoute(frozenset({"GET", "HEAD", "PUT"}))
    assert table.match("GET", "", "/elsewhere") == NoRoute(frozenset())


@pytest.mark.parametrize(
    "path",
    [
        "/api/../admin",
        "/api/./orders",
        "/api//orders",
        "/api/%2e%2e/admin",
        "/api/%2E%2E/admin",
        "/api/.%2e/admin",
        "/api%2forders",
        "/api%5corders",
        "/api\\orders",
        "api/orders",
        "*",
    ],
)
def test_an_ambiguous_path_is_refused_with_its_reason(path: str) -> None:
    result = SHOP.match("GET", "shop.test", path)
    assert isinstance(result, BadPath)
    assert result.reason


@given(st.lists(st.from_regex(r"[a-z0-9~-]{1,8}", fullmatch=True), max_size=6))
def test_a_clean_path_is_never_refused_and_the_catch_all_takes_what_nothing_else_does(
    segments: list[str],
) -> None:
    path = "/" + "/".join(segments)
    result = SHOP.match("GET", "shop.test", path)
    assert isinstance(result, RouteMatch)
    if segments[:1] != ["api"]:
        assert (result.route.service, result.path) == ("catch-all", path)


@pytest.mark.parametrize(
    ("route", "key", "message"),
    [
        (Route(service=""), "routes[0].service", "must name a service"),
        (Route(service="s", path="api"), "routes[0].path", "is not a path"),
        (Route(service="s", path="/a/{x}/{x}"), "routes[0].path", "names a parameter twice"),
        (Route(service="s", path="/a/{x y}"), "routes[0].path", "is not a path"),
        (Route(service="s", path="/a/b", strip="/b"), "routes[0].strip", "not a leading part"),
        (Route(service="s", path="/a/{x}", strip="/a/{x}"), "routes[0].strip", "a parameter"),
        (Route(service="s", methods=frozenset({"get"})), "routes[0].methods", "upper-case"),
        (Route(service="s", methods=frozenset()), "routes[0].methods", "upper-case"),
        (Route(service="s", host="Shop.test"), "routes[0].host", "lower-case host"),
        (Route(service="s", host="a..b"), "routes[0].host", "lower-case host"),
    ],
)
def test_a_bad_route_is_refused_naming_the_key(route: Route, key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        RouteTable([route])
    assert caught.value.key == key
