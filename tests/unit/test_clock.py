import asyncio
import threading

import pytest

from meshkit import Clock, SystemClock
from meshkit.errors import UsageError
from meshkit.testing import FakeClock


def test_both_clocks_satisfy_the_protocol() -> None:
    """SystemClock and FakeClock are Clocks."""
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(), Clock)


def test_system_clock_reads_real_time() -> None:
    """The system clock's wall time is after 2025 and its monotonic time never goes back."""
    clock = SystemClock()
    first = clock.monotonic()
    assert clock.monotonic() >= first
    assert clock.time() > 1_735_689_600


def test_system_clock_sleep_waits() -> None:
    """SystemClock.sleep suspends for at least the time asked."""
    clock = SystemClock()

    async def main() -> float:
        start = clock.monotonic()
        await clock.sleep(0.01)
        return clock.monotonic() - start

    assert asyncio.run(main()) >= 0.01


def test_fake_clock_moves_only_when_advanced() -> None:
    """Fake time stands still until advanced, and wall time moves with it."""
    clock = FakeClock(start=100.0, wall=1_000_000.0)
    assert clock.monotonic() == 100.0
    assert clock.monotonic() == 100.0
    clock.advance(2.5)
    assert clock.monotonic() == 102.5
    assert clock.time() == 1_000_002.5


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_fake_clock_refuses_to_go_back(bad: float) -> None:
    """advance() takes only a finite, non-negative step."""
    with pytest.raises(UsageError):
        FakeClock().advance(bad)


def test_autojump_runs_long_sleeps_instantly() -> None:
    """Sleepers wake in deadline order at their exact fake times."""
    clock = FakeClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    async def main() -> None:
        await asyncio.gather(sleeper("c", 3600), sleeper("a", 30), sleeper("b", 60))

    clock.run(main())
    assert woke == [("a", 30.0), ("b", 60.0), ("c", 3600.0)]


def test_asyncio_timeouts_run_in_fake_time() -> None:
    """asyncio.timeout on the fake loop fires after fake seconds."""
    clock = FakeClock()

    async def main() -> float:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(45):
                await asyncio.Event().wait()
        return clock.monotonic()

    assert clock.run(main()) == 45.0


def test_manual_advance_wakes_sleepers() -> None:
    """Advancing by hand from a task makes due timers run."""
    clock = FakeClock()
    woke = asyncio.Event()

    async def sleeper() -> None:
        await clock.sleep(10)
        woke.set()

    async def main() -> None:
        task = asyncio.create_task(sleeper())
        await asyncio.sleep(0)  # noqa: TID251 (yields once so the task starts; no waiting)
        clock.advance(10)
        await woke.wait()
        await task

    clock.run(main())
    assert clock.monotonic() == 10.0


def test_real_io_completes_before_time_jumps() -> None:
    """With a threshold, a loopback reply arrives before a fake timeout can fire."""
    clock = FakeClock(autojump_threshold=2.0)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def main() -> bytes:
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
        return line

    assert clock.run(main()) == b"ping\n"
    assert clock.monotonic() < 10.0


def test_fake_sleep_refuses_a_real_loop() -> None:
    """FakeClock.sleep on an ordinary loop is an error, not a real sleep."""
    clock = FakeClock()
    with pytest.raises(UsageError, match="new_event_loop"):
        asyncio.run(clock.sleep(1))


def test_work_in_threads_is_waited_for_not_jumped_over() -> None:
    """A fake timeout does not fire while to_thread work is still running for real."""
    clock = FakeClock()

    def work() -> str:
        threading.Event().wait(0.05)  # 50 ms of real work in the thread
        return "done"

    async def main() -> str:
        async with asyncio.timeout(1):
            return await asyncio.to_thread(work)

    assert clock.run(main()) == "done"
    assert clock.monotonic() == 0.0


def test_run_shuts_the_executor_down_without_a_jump() -> None:
    """Closing a loop that used threads neither warns nor jumps the clock (3.12+ waits 300 s)."""
    clock = FakeClock()

    async def main() -> int:
        return await asyncio.get_running_loop().run_in_executor(None, sum, [1, 2, 3])

    assert clock.run(main()) == 6
    assert clock.monotonic() == 0.0


def test_autojump_can_be_turned_off() -> None:
    """With autojump_threshold=None, time moves only when a test advances it."""
    clock = FakeClock(autojump_threshold=None)
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(5)
        woke.append(clock.monotonic())

    async def main() -> None:
        task = asyncio.create_task(sleeper())
        for _ in range(3):
            await asyncio.sleep(0)  # noqa: TID251 (yields to the sleeper; no waiting)
        assert woke == []
        clock.advance(5)
        await task

    clock.run(main())
    assert woke == [5.0]
