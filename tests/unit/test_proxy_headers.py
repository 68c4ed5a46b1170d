"""What the proxy forwards: hop-by-hop headers dropped, Via and X-Forwarded-* set."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import ConfigError
from meshkit.proxy import HOP_BY_HOP, Forwarding, request_headers, response_headers

EDGE = Forwarding(pseudonym="meshkit", trust_forwarded=False)
INNER = Forwarding(pseudonym="meshkit-sidecar", trust_forwarded=True)


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name.lower() for name, _ in headers]


def value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    found = [v for n, v in headers if n.lower() == name]
    assert len(found) <= 1, found
    return found[0] if found else None


def test_hop_by_hop_headers_and_those_connection_names_are_dropped() -> None:
    sent = [
        (b"host", b"shop.test"),
        (b"connection", b"keep-alive, X-Secret , Upgrade"),
        (b"keep-alive", b"timeout=5"),
        (b"upgrade", b"websocket"),
        (b"te", b"trailers"),
        (b"proxy-connection", b"keep-alive"),
        (b"x-secret", b"for the first hop only"),
        (b"accept", b"*/*"),
        (b"content-length", b"2"),
    ]
    out = request_headers(sent, EDGE, client="203.0.113.9", scheme="http")
    assert names(out)[:3] == [b"host", b"accept", b"content-length"]
    assert not set(names(out)) & (HOP_BY_HOP | {b"x-secret"})
    assert (b"host", b"shop.test") in out


def test_connection_cannot_drop_host_framing_or_the_forwarded_headers() -> None:
    sent = [
        (b"host", b"shop.test"),
        (b"content-length", b"2"),
        (b"connection", b"host, content-length, x-forwarded-for, x-forwarded-proto"),
    ]
    out = request_headers(sent, EDGE, client="203.0.113.9", scheme="http")
    assert value(out, b"host") == b"shop.test"
    assert value(out, b"content-length") == b"2"
    assert value(out, b"x-forwarded-for") == b"203.0.113.9"
    assert value(out, b"x-forwarded-proto") == b"http"


def test_at_the_edge_what_the_client_says_about_itself_is_replaced() -> None:
    sent = [
        (b"host", b"shop.test:8000"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"bank.test"),
        (b"via", b"1.1 someone"),
    ]
    out = request_headers(sent, EDGE, client="203.0.113.9", scheme="http")
    assert value(out, b"x-forwarded-for") == b"203.0.113.9"
    assert value(out, b"x-forwarded-proto") == b"http"
    assert value(out, b"x-forwarded-host") == b"shop.test:8000"
    assert value(out, b"via") == b"1.1 someone, 1.1 meshkit"


def test_behind_our_own_proxy_the_forwarded_chain_is_extended() -> None:
    sent = [
        (b"host", b"orders"),
        (b"x-forwarded-for", b"203.0.113.9, 10.0.0.2"),
        (b"x-forwarded-for", b"10.0.0.3"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"shop.test"),
        (b"via", b"1.1 meshkit"),
    ]
    out = request_headers(sent, INNER, client="127.0.0.1", scheme="http")
    assert value(out, b"x-forwarded-for") == b"203.0.113.9, 10.0.0.2, 10.0.0.3, 127.0.0.1"
    assert value(out, b"x-forwarded-proto") == b"https"
    assert value(out, b"x-forwarded-host") == b"shop.test"
    assert value(out, b"via") == b"1.1 meshkit, 1.1 meshkit-sidecar"


def test_a_request_without_host_gets_no_forwarded_host() -> None:
    out = request_headers([], EDGE, client="::1", scheme="http")
    assert out == [
        (b"x-forwarded-for", b"::1"),
        (b"x-forwarded-proto", b"http"),
        (b"via", b"1.1 meshkit"),
    ]


def test_responses_lose_hop_by_hop_headers_and_gain_via() -> None:
    sent = [
        (b"content-type", b"application/json"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"close, X-Upstream-Only"),
        (b"x-upstream-only", b"1"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    out = response_headers(sent, EDGE)
    assert out == [
        (b"content-type", b"application/json"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"via", b"1.1 meshkit"),
    ]


header_names = st.sampled_from(
    [b"host", b"accept", b"connection", b"x-a", b"x-b", b"keep-alive", b"te", b"via"]
)
header_values = st.sampled_from([b"", b"x-a", b"X-B, te", b"close", b"1"])


@given(st.lists(st.tuples(header_names, header_values), max_size=12))
def test_no_hop_by_hop_header_and_nothing_connection_names_is_ever_forwarded(
    sent: list[tuple[bytes, bytes]],
) -> None:
    named = {
        token.strip().lower()
        for name, v in sent
        if name.lower() == b"connection"
        for token in v.split(b",")
    } - {b"host"}
    for out in (
        request_headers(sent, EDGE, client="127.0.0.1", scheme="http"),
        response_headers(sent, EDGE),
    ):
        assert not set(names(out)) & (HOP_BY_HOP | named)
        assert names(out).count(b"via") == 1


@pytest.mark.parametrize("pseudonym", ["", "has space", "é", "a,b"])
def test_a_pseudonym_must_be_a_token(pseudonym: str) -> None:
    with pytest.raises(ConfigError, match="is not an HTTP token") as caught:
        Forwarding(pseudonym=pseudonym, trust_forwarded=False)
    assert caught.value.key == "pseudonym"
