"""The Cork: a turn's first write goes at once, the rest together at its end, none after a close."""

import asyncio
import gc
import weakref
from typing import Any

from meshkit.http._cork import HOLD_LIMIT, Cork, cork_for


class Transport:
    """What a Cork needs of a transport, recording its writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


async def next_turn() -> None:
    """Until the callbacks already scheduled have run (the Cork's release among them)."""
    loop = asyncio.get_running_loop()
    turned = loop.create_future()
    loop.call_soon(loop.call_soon, turned.set_result, None)
    await turned


async def test_a_turns_first_write_goes_at_once_and_the_rest_together_at_its_end() -> None:
    cork = Cork(asyncio.get_running_loop())
    a, b = Transport(), Transport()
    cork.write(a, b"first")
    assert a.writes == [b"first"]
    cork.write(a, b"head ")
    cork.write(b, b"other")
    cork.write(a, b"body")
    assert a.writes == [b"first"]
    assert b.writes == []
    await next_turn()
    assert a.writes == [b"first", b"head body"]
    assert b.writes == [b"other"]


async def test_the_next_turns_first_write_goes_at_once_again() -> None:
    cork = Cork(asyncio.get_running_loop())
    a = Transport()
    cork.write(a, b"one")
    cork.write(a, b"two")
    await next_turn()
    cork.write(a, b"three")
    assert a.writes == [b"one", b"two", b"three"]


async def test_flush_writes_at_once_so_a_close_after_it_loses_nothing() -> None:
    cork = Cork(asyncio.get_running_loop())
    a = Transport()
    cork.write(a, b"first")
    cork.write(a, b"last words")
    cork.flush(a)
    a.closing = True
    await next_turn()
    assert a.writes == [b"first", b"last words"]


async def test_discarded_and_closing_transports_get_nothing() -> None:
    cork = Cork(asyncio.get_running_loop())
    aborted, closed = Transport(), Transport()
    cork.write(Transport(), b"first")
    cork.write(aborted, b"x")
    cork.discard(aborted)
    cork.write(closed, b"y")
    closed.closing = True
    await next_turn()
    assert aborted.writes == []
    assert closed.writes == []


async def test_every_connection_on_a_loop_shares_its_cork() -> None:
    loop = asyncio.get_running_loop()
    assert cork_for(loop) is cork_for(loop)


async def test_no_more_than_the_hold_limit_waits_for_a_transport() -> None:
    """Held bytes escape flow control, so past the limit they are written at once, in order."""
    cork = Cork(asyncio.get_running_loop())
    a = Transport()
    cork.write(a, b"first")
    chunk = b"x" * (HOLD_LIMIT // 2)
    cork.write(a, chunk)
    assert a.writes == [b"first"]
    cork.write(a, chunk)
    assert a.writes == [b"first", chunk + chunk]
    cork.write(a, b"tail")
    await next_turn()
    assert a.writes == [b"first", chunk + chunk, b"tail"]


class Failing(Transport):
    def write(self, data: bytes) -> None:
        raise OSError("broken")


async def test_a_failing_write_costs_no_other_transport_its_bytes() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        cork = Cork(loop)
        broken, fine = Failing(), Transport()
        cork.write(Transport(), b"first")
        cork.write(broken, b"lost")
        cork.write(fine, b"kept")
        await next_turn()
    finally:
        loop.set_exception_handler(None)
    assert fine.writes == [b"kept"]
    assert [type(context["exception"]) for context in reported] == [OSError]


class WritesBack(Transport):
    """A transport whose write calls back into the cork, as a pause_writing handler might."""

    def __init__(self, cork: Cork, other: Transport) -> None:
        super().__init__()
        self.cork, self.other = cork, other

    def write(self, data: bytes) -> None:
        super().write(data)
        self.cork.write(self.other, b"from the callback")


async def test_writes_made_while_releasing_follow_the_bytes_already_held() -> None:
    cork = Cork(asyncio.get_running_loop())
    other = Transport()
    echo = WritesBack(cork, other)
    cork.write(Transport(), b"first")
    cork.write(echo, b"held")
    cork.write(other, b"held before")
    await next_turn()
    assert other.writes == [b"held before", b"from the callback"]


def test_a_loops_cork_does_not_keep_the_loop_alive() -> None:
    loop = asyncio.new_event_loop()
    cork_for(loop)
    gone = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert gone() is None
