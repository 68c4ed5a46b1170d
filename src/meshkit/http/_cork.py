"""Writes made in one turn of the event loop, after its first, leave together at its end.

Why: uvloop 0.23 made ``Transport.write`` send at once (uvloop #619, for
latency); 0.22 and earlier queued small writes and sent them at the end of
the loop's turn. For a proxy, sending at once means that every write to a
peer on the same core (the upstream beside it, or the client) wakes that
peer in the middle of the turn, and the scheduler often switches to it
there and then. Measured with ``benchmarks.gateway``'s setup (proxy and
upstream sharing a core, wrk's 50 connections on the other), the proxy
engine on uvloop 0.23 used 64-66 µs of CPU per request with 0.90-0.93
involuntary context switches, against 46-47 µs and 0.57 on uvloop 0.22.

Holding every write until the turn's end (what 0.22 did) gave the CPU back,
but at 1,000 requests a second, one request per turn, it cost each hop
15-20 µs of latency that 0.23 had saved. So the turn's first write goes at
once, and only the writes after it wait: a quiet loop writes as 0.23 does,
a busy one batches as 0.22 did. Measured on 0.23: 47 µs per request and 0.56
switches under load (the gateway 96 µs, from 130-136), and at 1,000
requests a second a p50 within 10 µs of writing at once.

No more than ``HOLD_LIMIT`` bytes are held for a transport: held bytes are
not in its buffer, where flow control would see them (a fast upstream and a
slow client would otherwise pile up megabytes here in one turn). A
connection that closes must ``flush`` first, and one that aborts must
``discard``, or its last bytes would be sent after it closed, or never.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol

__all__ = ["HOLD_LIMIT", "Cork", "Writable", "cork_for"]

# asyncio's default high-water mark for a transport's write buffer: beyond it
# the peer's reading would be paused, so no more than this is held back.
HOLD_LIMIT = 64 * 1024


class Writable(Protocol):
    """What a ``Cork`` needs of a transport."""

    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...


class Cork:
    """A turn's first ``write`` goes at once; the rest wait, then one ``transport.write`` each."""

    __slots__ = ("__weakref__", "_held", "_loop", "_scheduled", "_sizes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: the loop's entry in ``cork_for``'s table must not keep it alive.
        self._loop = weakref.proxy(loop)
        self._held: dict[Writable, list[bytes]] = {}
        self._sizes: dict[Writable, int] = {}
        self._scheduled = False

    def write(self, transport: Writable, data: bytes) -> None:
        if not self._scheduled:
            # The turn's first write goes at once; from here to the turn's end, writes wait.
            self._scheduled = True
            self._loop.call_soon(self._release)
            transport.write(data)
            return
        held = self._held.get(transport)
        if held is None:
            self._held[transport] = [data]
            self._sizes[transport] = len(data)
        else:
            held.append(data)
            self._sizes[transport] += len(data)
        if self._sizes[transport] >= HOLD_LIMIT:
            # Held bytes are not in the transport's buffer, so its flow control
            # (pause_writing) cannot see them: past the limit they go now.
            self.flush(transport)

    def flush(self, transport: Writable) -> None:
        """Write what is held for ``transport`` now (before closing it)."""
        held = self._held.pop(transport, None)
        self._sizes.pop(transport, None)
        if held is not None and not transport.is_closing():
            transport.write(b"".join(held))

    def discard(self, transport: Writable) -> None:
        """Forget what is held for ``transport`` (it is being aborted)."""
        self._held.pop(transport, None)
        self._sizes.pop(transport, None)

    def _release(self) -> None:
        try:
            # Until nothing is held: a write's own callbacks (pause_writing) may
            # write again, and those bytes must follow the ones being written.
            while self._held:
                held, self._held, self._sizes = self._held, {}, {}
                for transport, chunks in held.items():
                    if not transport.is_closing():
                        self._write(transport, b"".join(chunks) if len(chunks) > 1 else chunks[0])
        finally:
            self._scheduled = False

    def _write(self, transport: Writable, data: bytes) -> None:
        try:
            transport.write(data)
        except Exception as error:  # noqa: BLE001 (one transport's failure must not cost the others)
            self._loop.call_exception_handler(
                {"message": "a held write failed", "exception": error, "transport": transport}
            )


_corks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Cork] = weakref.WeakKeyDictionary()


def cork_for(loop: asyncio.AbstractEventLoop) -> Cork:
    """The loop's one ``Cork``: every connection on a loop shares it, so a turn ends in one call."""
    found = _corks.get(loop)
    if found is None:
        found = _corks[loop] = Cork(loop)
    return found
