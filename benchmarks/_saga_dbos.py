"""DBOS running a three-step workflow, as the saga benchmark's reference; one run a process.

    python -m benchmarks._saga_dbos throughput URL --seconds S [--in-flight K] [--style S]
    python -m benchmarks._saga_dbos paced URL --rate R --seconds S [--style S]

DBOS is a process-wide singleton (``DBOS(config=...)``, then ``launch()``),
so each run has a process of its own. ``URL`` is the system database, in
SQLAlchemy's form; the caller creates it and removes it after. The workflow
is the benchmark's saga without the saga: three ``@DBOS.step()`` functions
that return at once, called in turn from a ``@DBOS.workflow()``, each
handed the previous one's result. DBOS records the workflow's start, each
step's result and the workflow's end in the system database, committed
before the workflow goes on, as a saga log is.

The last line written to stdout is the result as JSON: a ``Throughput`` or
a ``Latency`` from ``benchmarks._saga_db``. DBOS's own log goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import sqlite3
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgspec
from dbos import DBOS

from benchmarks._load import percentile
from benchmarks._saga_db import Latency, Throughput

# Not timed, before each measurement: SQLAlchemy compiles and caches each
# statement on its first use, and the pool opens its connections.
WARMUP_SECONDS = 1.0


@DBOS.step()
def reserve(value: int) -> int:
    return value + 1


@DBOS.step()
def charge(value: int) -> int:
    return value + 1


@DBOS.step()
def confirm(value: int) -> int:
    return value + 1


@DBOS.workflow()
def order(value: int) -> int:
    return confirm(charge(reserve(value)))


@DBOS.step()
async def reserve_async(value: int) -> int:
    return value + 1


@DBOS.step()
async def charge_async(value: int) -> int:
    return value + 1


@DBOS.step()
async def confirm_async(value: int) -> int:
    return value + 1


@DBOS.workflow()
async def order_async(value: int) -> int:
    return await confirm_async(await charge_async(await reserve_async(value)))


def launch(url: str) -> None:
    """DBOS on the system database at ``url``, as an application would start it."""
    if url.startswith("sqlite:///"):
        # DBOS leaves SQLite in its default rollback-journal mode; in WAL mode
        # (with SQLite's default synchronous=FULL, so each commit is still on
        # the disk before it returns) it completed about twice as many
        # workflows a second here. The mode is kept in the file, so it is set
        # once before DBOS opens it.
        connection = sqlite3.connect(url.removeprefix("sqlite:///"))
        connection.execute("PRAGMA journal_mode=WAL")
        connection.close()
    DBOS(
        config={
            "name": "meshkit-saga-bench",
            "system_database_url": url,
            "log_level": "WARNING",
            # Fixed, so launch does not hash the application's source.
            "application_version": "bench",
        }
    )
    DBOS.launch()


def cpu_seconds() -> float:
    """This process's CPU time so far, every thread's, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- many in flight ----------------------------------------------------------------------


def with_threads(in_flight: int, seconds: float) -> int:
    """``in_flight`` threads, each calling the workflow in turn until ``seconds`` have passed.

    A call to a sync workflow function runs it in the calling thread, durably;
    it is what ``DBOS.start_workflow`` does on DBOS's own pool (a thread for
    each workflow started), less the hand-over. Returns how many completed.
    """
    deadline = time.perf_counter() + seconds
    numbers = itertools.count()  # next() on it is atomic under the GIL
    done = [0] * in_flight

    def work(slot: int) -> None:
        while time.perf_counter() < deadline:
            value = next(numbers)
            if order(value) != value + 3:
                raise RuntimeError("the workflow returned a wrong result")
            done[slot] += 1

    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        working = [pool.submit(work, slot) for slot in range(in_flight)]
    for finished in working:
        finished.result()  # raises what the thread raised
    return sum(done)


def with_tasks(in_flight: int, seconds: float) -> int:
    """``with_threads`` with async workflows: ``in_flight`` tasks on one event loop."""

    async def run() -> int:
        deadline = time.perf_counter() + seconds
        numbers = itertools.count()
        done = 0

        async def work() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                value = next(numbers)
                if await order_async(value) != value + 3:
                    raise RuntimeError("the workflow returned a wrong result")
                done += 1

        await asyncio.gather(*(work() for _ in range(in_flight)))
        return done

    return asyncio.run(run())


STYLES: dict[str, Callable[[int, float], int]] = {"threads": with_threads, "asyncio": with_tasks}


def throughput(style: str, in_flight: int, seconds: float) -> Throughput:
    run = STYLES[style]
    run(in_flight, WARMUP_SECONDS)
    cpu, start = cpu_seconds(), time.perf_counter()
    count = run(in_flight, seconds)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return Throughput(count=count, seconds=elapsed, rate=count / elapsed, cpu_ms=cpu / count * 1e3)


# -- at a steady rate ---------------------------------------------------------------------


def paced_threads(in_flight: int, rate: int, seconds: float) -> list[float]:
    """One workflow every ``1/rate`` s on an absolute schedule, run by ``in_flight`` threads.

    Timed from the moment it is handed to the threads to its end, in
    seconds: a workflow that waits for a free thread waits in its time.
    """
    latencies: list[float] = []
    futures: list[Future[None]] = []

    def one(value: int, sent: float) -> None:
        order(value)
        latencies.append(time.perf_counter() - sent)

    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        start = time.perf_counter()
        for value in range(int(rate * seconds)):
            time.sleep(max(0.0, start + value / rate - time.perf_counter()))
            futures.append(pool.submit(one, value, time.perf_counter()))
    for future in futures:
        future.result()
    return latencies


def paced_tasks(in_flight: int, rate: int, seconds: float) -> list[float]:
    """``paced_threads`` with async workflows, each a task, ``in_flight`` running at once."""

    async def run() -> list[float]:
        latencies: list[float] = []
        tasks: list[asyncio.Task[None]] = []
        running = asyncio.Semaphore(in_flight)

        async def one(value: int, sent: float) -> None:
            async with running:
                await order_async(value)
            latencies.append(time.perf_counter() - sent)

        start = time.perf_counter()
        for value in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + value / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(value, time.perf_counter())))
        await asyncio.gather(*tasks)
        return latencies

    return asyncio.run(run())


PACED: dict[str, Callable[[int, int, float], list[float]]] = {
    "threads": paced_threads,
    "asyncio": paced_tasks,
}


def paced(style: str, in_flight: int, rate: int, seconds: float) -> Latency:
    run = PACED[style]
    run(in_flight, rate, WARMUP_SECONDS)
    cpu, start = cpu_seconds(), time.perf_counter()
    found = run(in_flight, rate, seconds)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return Latency(
        count=len(found),
        p50=percentile(found, 0.5) * 1e3,
        p99=percentile(found, 0.99) * 1e3,
        rate=len(found) / elapsed,
        cpu_ms=cpu / len(found) * 1e3,
    )


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", choices=("throughput", "paced"))
    parser.add_argument("url", help="the system database, as SQLAlchemy names it")
    parser.add_argument("--seconds", type=float, required=True, help="how long it is timed")
    parser.add_argument("--style", choices=sorted(STYLES), default="threads")
    parser.add_argument("--in-flight", type=int, default=1, help="workflows running at once")
    parser.add_argument("--rate", type=int, default=100, help="paced: workflows a second")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse(argv)
    launch(args.url)
    try:
        result: Any = (
            throughput(args.style, args.in_flight, args.seconds)
            if args.what == "throughput"
            else paced(args.style, args.in_flight, args.rate, args.seconds)
        )
    finally:
        DBOS.destroy()
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
