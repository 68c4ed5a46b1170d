"""The Cork: a turn's first write goes at once, the rest together at its end, none after a close."""

import asyncio

from meshkit.http._cork import Cork, cork_for


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
