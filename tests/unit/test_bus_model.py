"""Bus names, headers and payloads: what every backend accepts, and clear refusals for the rest."""

from typing import Any

import pytest

from meshkit.bus import (
    MAX_PAYLOAD,
    Message,
    check_group,
    check_headers,
    check_message_id,
    check_topic,
    encode_payload,
    outgoing,
)
from meshkit.bus._model import check_letter_ids, check_letter_number, checked_outgoing
from meshkit.errors import ConfigError, InvalidArgumentError, MessageRefusedError


@pytest.mark.parametrize("topic", ["order.created", "orders", "a-b_c.d1.e2", "x" * 200])
def test_topics_that_every_backend_can_hold(topic: str) -> None:
    assert check_topic(topic) == topic


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "Order.created",
        "order..created",
        ".order",
        "order.",
        "order.*",
        "order.>",
        "a b",
        "x" * 201,
        42,
    ],
)
def test_other_topics_are_refused_naming_the_topic(topic: object) -> None:
    with pytest.raises(ConfigError) as caught:
        check_topic(topic)
    assert caught.value.key == "topic"
    assert repr(topic)[:20] in str(caught.value)


@pytest.mark.parametrize("group", ["", "inventory.v2", "Inventory", "a*", "x" * 65, None])
def test_groups_cannot_hold_dots_wildcards_or_capitals(group: object) -> None:
    with pytest.raises(ConfigError, match="group"):
        check_group(group)


def test_message_ids_are_visible_ascii() -> None:
    assert check_message_id("order-17/created") == "order-17/created"
    for bad in ("", "with space", "é", "x" * 129):
        with pytest.raises(InvalidArgumentError, match="message_id"):
            check_message_id(bad)


def test_headers_are_checked_and_copied() -> None:
    given = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    assert check_headers(given) == given
    bad_ones = (
        {"bad name": "x"},
        {"x": "line\nbreak"},
        {"x": 1},
        ["x"],
        {"x": "y" * 70_000},
        {"x": "é" * 33_000},  # 33,000 characters, but 66,000 bytes
        {"Meshkit-Replay-Group": "g"},
        {"Nats-Msg-Id": "1"},
    )
    for bad in bad_ones:
        with pytest.raises(InvalidArgumentError, match="headers"):
            check_headers(bad)


def test_payloads_are_json_encoded_or_checked_to_be_json() -> None:
    assert encode_payload({"order": 1}) == b'{"order":1}'
    assert encode_payload(b'{"order": 1}') == b'{"order": 1}'
    assert Message(id="m", topic="t", payload=b'{"a":[1]}').json() == {"a": [1]}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (object(), "cannot be encoded as JSON"),
        (b'"' + b"x" * MAX_PAYLOAD + b'"', "more than"),
    ],
)
def test_bad_payloads_are_refused_with_the_reason(data: object, problem: str) -> None:
    with pytest.raises(InvalidArgumentError, match=problem) as caught:
        encode_payload(data)
    assert caught.value.key == "payload"


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("topic", {"topic": "Bad Topic", "payload": 1}),
        ("payload", {"topic": "t", "payload": b"{not json"}),
        ("payload", {"topic": "t", "payload": b"1" * (MAX_PAYLOAD + 1)}),
        ("headers", {"topic": "t", "payload": 1, "headers": {"meshkit-x": "y"}}),
        ("message_id", {"topic": "t", "payload": 1, "message_id": "has space"}),
        ("key", {"topic": "t", "payload": 1, "key": ""}),
    ],
)
def test_a_bad_field_refuses_the_message_not_the_configuration(
    field: str, message: dict[str, Any]
) -> None:
    """outgoing() and checked_outgoing() raise MessageRefusedError naming the field, never
    ConfigError, even for a topic (which check_topic alone calls configuration)."""
    with pytest.raises(MessageRefusedError) as caught:
        outgoing(**message)
    assert caught.value.key == field
    assert not isinstance(caught.value, ConfigError)
    payload = message["payload"]
    if payload == b"{not json":
        return  # checked_outgoing takes the payload as JSON already: only its size is checked
    with pytest.raises(MessageRefusedError) as caught:
        checked_outgoing(
            topic=message["topic"],
            id=message.get("message_id", "m-1"),
            payload=payload if isinstance(payload, bytes) else b"1",
            headers=message.get("headers", {}),
            key=message.get("key"),
            given_id=True,
        )
    assert caught.value.key == field


def test_dead_letter_ids_are_arguments_not_configuration() -> None:
    """A malformed dead letter id or id list is InvalidArgumentError, not ConfigError."""
    for call, key in (
        (lambda: check_letter_number("one"), "id"),
        (lambda: check_letter_ids("1"), "ids"),
    ):
        with pytest.raises(InvalidArgumentError) as caught:
            call()
        assert caught.value.key == key
        assert not isinstance(caught.value, ConfigError)
