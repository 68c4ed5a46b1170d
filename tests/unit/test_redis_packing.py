"""Redis commands packed by hiredis as redis-py packs them, and the bus's publishing runs."""

from __future__ import annotations

import enum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit._redis import hiredis_packing
from meshkit.bus import Outgoing, outgoing
from meshkit.bus.redis import _RUN, _runs

redis_asyncio = pytest.importorskip("redis.asyncio")
DataError = pytest.importorskip("redis.exceptions").DataError
pytest.importorskip("hiredis")


class Answer(enum.IntEnum):
    YES = 1


COMMANDS = [
    ("XADD", "meshkit:bus:s:order.created", "*", "id", "m1", "p", b'{"a": 1}', "t", "1.5"),
    ("XGROUP CREATE", "s", "g", "0", "MKSTREAM"),  # several words in one, as redis-py sends it
    (b"XINFO CONSUMERS", b"s", b"g"),
    ("EVALSHA", "abc", 1, "k", 2.5, 10**18, "\u00e9t\u00e9", b"\x00\xff"),
    ("PING",),
    ("SET", bytearray(b"k"), memoryview(b"v")),
    ("SELECT", Answer.YES),  # an int subclass
]


@pytest.mark.parametrize("command", COMMANDS)
def test_hiredis_packs_each_command_as_redis_py_does(command: tuple[object, ...]) -> None:
    """Byte for byte: the same RESP whichever packs it."""
    plain = redis_asyncio.Connection()
    packing = hiredis_packing(redis_asyncio.Redis()).connection_pool.connection_class()
    assert type(packing).__name__ == "HiredisConnection"
    assert b"".join(packing.pack_command(*command)) == b"".join(plain.pack_command(*command))


@pytest.mark.parametrize("value", [None, True])
def test_what_redis_py_refuses_is_refused_the_same_way(value: object) -> None:
    packing = hiredis_packing(redis_asyncio.Redis()).connection_pool.connection_class()
    with pytest.raises(DataError):
        packing.pack_command("SET", "k", value)


def test_every_new_connection_of_the_pool_packs_with_hiredis() -> None:
    client = hiredis_packing(redis_asyncio.Redis.from_url("unix:///tmp/none.sock"))
    assert client.connection_pool.connection_class.__name__ == "HiredisUnixDomainSocketConnection"
    again = hiredis_packing(client)  # wrapping twice changes nothing
    assert again.connection_pool.connection_class is client.connection_pool.connection_class


messages = st.lists(
    st.builds(
        lambda topic, given: outgoing(topic, 1, message_id="m" if given else None),
        st.sampled_from(["a", "b"]),
        st.booleans(),
    ),
    max_size=60,
)


@given(messages)
def test_publishing_runs_keep_order_and_put_a_given_id_alone(batch: list[Outgoing]) -> None:
    runs = _runs(batch)
    assert [m for run in runs for m in run] == batch
    for run in runs:
        assert run
        assert len(run) <= _RUN
        if any(m.given_id for m in run):
            assert len(run) == 1
        assert len({m.topic for m in run}) == 1


def test_a_long_run_is_cut_at_the_limit() -> None:
    batch = [outgoing("a", n) for n in range(2 * _RUN + 1)]
    assert [len(run) for run in _runs(batch)] == [_RUN, _RUN, 1]
    assert _runs([]) == []
