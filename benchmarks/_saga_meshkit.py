"""meshkit's side of the saga benchmark: one run a process, on core 0, as DBOS's runs.

    python -m benchmarks._saga_meshkit throughput URL --seconds S [--in-flight K]
    python -m benchmarks._saga_meshkit paced URL --rate R --seconds S

The saga is DBOS's workflow as a saga: three steps that return at once,
each handed the previous one's result, run by a ``SagaRunner`` whose log is
on the database at ``URL`` (SQLAlchemy's form, as ``benchmarks._saga_db``
makes it): ``SqliteSagaStore`` with ``--synchronous FULL`` (its default:
each commit is on the disk before a step goes on, as DBOS's are) or
``NORMAL`` (each commit survives a crash of the process, not a power cut),
or ``PostgresSagaStore``. The
event loop is uvloop's, as a meshkit service runs. The last line written
to stdout is a ``Throughput`` or a ``Latency`` as JSON.

``throughput`` and ``paced`` are what ``benchmarks.saga`` calls: each runs
this module as a child process pinned to core 0 and reads its answer.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec
import uvloop

from benchmarks._load import percentile
from benchmarks._saga_db import Database, Latency, Throughput, run_child
from meshkit.saga import Saga, SagaRunner, SagaStore, SqliteSagaStore, StepContext

WARMUP_SECONDS = 1.0  # not timed: the first statements, the writer's start
# Sagas in flight in the throughput run: enough that every commit of the
# log carries many runs' transitions (group commit), few enough that the
# latency of each stays in milliseconds.
IN_FLIGHT = 256
Synchronous = Literal["FULL", "NORMAL"]

order = Saga("order")


@order.step
async def reserve(ctx: StepContext) -> int:
    return int(ctx.input) + 1


@order.step
async def charge(ctx: StepContext) -> int:
    return int(ctx.results["reserve"]) + 1


@order.step
async def confirm(ctx: StepContext) -> int:
    return int(ctx.results["charge"]) + 1


def store_for(url: str, synchronous: Synchronous) -> SagaStore:
    if url.startswith("sqlite:///"):
        return SqliteSagaStore(url.removeprefix("sqlite:///"), synchronous=synchronous)
    from meshkit.saga.postgres import PostgresSagaStore

    return PostgresSagaStore(url.replace("postgresql+psycopg://", "postgresql://"))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one(runner: SagaRunner, value: int) -> None:
    run = await runner.begin(order, value)
    ended = await runner.wait(run.id, 60.0)
    if ended.status != "completed" or ended.steps[2].result != value + 3:
        raise RuntimeError(f"saga {run.id} ended {ended.status}: {ended.steps}")


async def many(runner: SagaRunner, in_flight: int, seconds: float) -> int:
    """``in_flight`` loops, each running one saga after another until ``seconds`` pass."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop(start: int) -> None:
        nonlocal done
        value = start
        while time.perf_counter() < deadline:
            await one(runner, value)
            value += in_flight
            done += 1

    await asyncio.gather(*(loop(start) for start in range(in_flight)))
    return done


async def measure_throughput(
    url: str, synchronous: Synchronous, in_flight: int, seconds: float
) -> Throughput:
    async with SagaRunner(store_for(url, synchronous), [order]) as runner:
        await many(runner, in_flight, WARMUP_SECONDS)
        cpu, start = cpu_seconds(), time.perf_counter()
        count = await many(runner, in_flight, seconds)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return Throughput(count=count, seconds=elapsed, rate=count / elapsed, cpu_ms=cpu / count * 1e3)


async def measure_paced(url: str, synchronous: Synchronous, rate: int, seconds: float) -> Latency:
    """One saga every ``1/rate`` s on an absolute schedule; each timed from begin to end."""
    async with SagaRunner(store_for(url, synchronous), [order]) as runner:
        await many(runner, 4, WARMUP_SECONDS)
        latencies: list[float] = []

        async def timed(value: int) -> None:
            sent = time.perf_counter()
            await one(runner, value)
            latencies.append(time.perf_counter() - sent)

        cpu, start = cpu_seconds(), time.perf_counter()
        count = int(rate * seconds)
        tasks = []
        for value in range(count):
            await asyncio.sleep(max(0.0, start + value / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(timed(value)))
        await asyncio.gather(*tasks)
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    latencies.sort()
    return Latency(
        count=count,
        p50=percentile(latencies, 0.50) * 1e3,
        p99=percentile(latencies, 0.99) * 1e3,
        rate=count / elapsed,
        cpu_ms=cpu / count * 1e3,
    )


# -- what benchmarks.saga calls ------------------------------------------------------------


def throughput(
    database: Database, *, seconds: float, synchronous: Synchronous = "FULL"
) -> Throughput:
    argv = ["throughput", database.url, "--seconds", str(seconds), "--synchronous", synchronous]
    return run_child(__name__, argv, Throughput, within=120 + 2 * seconds)


def paced(
    database: Database, *, rate: int, seconds: float, synchronous: Synchronous = "FULL"
) -> Latency:
    argv = [
        *("paced", database.url, "--rate", str(rate), "--seconds", str(seconds)),
        *("--synchronous", synchronous),
    ]
    return run_child(__name__, argv, Latency, within=120 + 20 * seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", choices=["throughput", "paced"])
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    args = parser.parse_args()
    measure: Callable[[], Awaitable[Throughput | Latency]]
    if args.what == "throughput":
        measure = lambda: measure_throughput(  # noqa: E731
            args.url, args.synchronous, args.in_flight, args.seconds
        )
    else:
        measure = lambda: measure_paced(  # noqa: E731
            args.url, args.synchronous, args.rate, args.seconds
        )
    result = uvloop.run(measure())
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")


if __name__ == "__main__":
    main()
