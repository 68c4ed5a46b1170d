"""Durable three-step sagas beside DBOS's workflows, on SQLite and PostgreSQL; the shop's order.

    python -m benchmarks.saga [--json FILE] [--quick] [--seconds S] [--only WHAT]

The work is a saga of three steps that are local functions returning at
once, so the figures are the machinery's own cost: the log written before
each action, on a database of the run's own (a SQLite file in a temporary
directory; a new database on the machine's PostgreSQL, 127.0.0.1:5432,
user ``postgres``, dropped after). The reference is DBOS, measured in the
same run on a database made the same way: a ``@DBOS.workflow()`` calling
three ``@DBOS.step()`` functions in turn (``benchmarks._saga_dbos``, a
process for each run, since DBOS is a process-wide singleton), in the way
that gave it its best throughput here: ``DBOS_IN_FLIGHT`` threads each
calling the workflow in turn (more threads, ``DBOS.start_workflow`` for
each workflow, or async workflows on one event loop all completed fewer),
with its SQLite file in WAL mode (see ``_saga_dbos.launch``).

1. Throughput: many in flight for ``--seconds`` (after a second not
   timed), completed a second, and the process's CPU time for each.
2. Latency of one at a steady 100 a second, on SQLite, for ``--seconds``
   (after a second not timed), with as many running at once as in 1: start
   to end, p50 and p99. A side that
   completes fewer than 100 a second falls behind, and its times grow with
   the backlog: the row "completed at 100/s" says so.
3. The shop's order end to end through the gateway, under ``meshkit up``
   on free ports (``benchmarks._saga_shop``): orders a second with 16 in
   flight, then p50 and p99 at ``SHOP_RATE`` orders a second.

meshkit's side is ``benchmarks._saga_meshkit``: each measurement in a
process of its own on core 0, as DBOS's. Its rows are ``saga sqlite`` and
``saga postgres`` (sagas/s) with DBOS's figure on the same database as the
reference, and ``saga sqlite p99 at 100/s`` (ms). On SQLite it runs with
``synchronous=FULL``, each commit flushed to the disk as DBOS's are, and
again with ``NORMAL`` (a commit survives a crash of the process, not a
power cut): rows ``saga sqlite synchronous=NORMAL ...``.

Needs DBOS (the ``dev`` extra) and, unless run with ``--only sqlite`` or
``--only shop``, asyncpg (the ``postgres`` extra) and the PostgreSQL server
above.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from typing import TypeVar

from benchmarks import _saga_meshkit as side
from benchmarks import _saga_shop
from benchmarks._report import Row, arguments, report
from benchmarks._saga_db import (
    KINDS,
    Database,
    Kind,
    Latency,
    Throughput,
    database,
    postgres_answers,
    run_child,
)

RATE = 100  # sagas a second in the latency run
SHOP_RATE = 20  # orders a second in the shop's latency run: well within what it completes
# DBOS's workflows running at once, in both runs: its best here. In the
# throughput run 1 did as well on SQLite and 16 completed fewer on both
# databases; at 100/s, 64 threads completed half as many as 4.
DBOS_IN_FLIGHT = 4
LABELS: dict[Kind, str] = {"sqlite": "SQLite (WAL)", "postgres": "PostgreSQL"}
ONLY = ("sqlite", "postgres", "shop")

Result = TypeVar("Result", Throughput, Latency)


def run_dbos(argv: list[str], into: type[Result], *, within: float) -> Result:
    """One run of ``benchmarks._saga_dbos`` on core 0; its result."""
    return run_child("benchmarks._saga_dbos", argv, into, within=within)


def dbos_throughput(place: Database, seconds: float) -> Throughput:
    return run_dbos(
        ["throughput", place.url, "--seconds", str(seconds), "--in-flight", str(DBOS_IN_FLIGHT)],
        Throughput,
        within=120 + 2 * seconds,
    )


def dbos_paced(place: Database, seconds: float) -> Latency:
    # Bounded by count: a side that falls behind takes longer than ``seconds``.
    return run_dbos(
        [
            *("paced", place.url, "--rate", str(RATE), "--seconds", str(seconds)),
            *("--in-flight", str(DBOS_IN_FLIGHT)),
        ],
        Latency,
        within=120 + 20 * seconds,
    )


def on_new(kind: Kind, measure: Callable[[Database], Result]) -> Result:
    """``measure`` on a new database of ``kind``, removed after."""
    with database(kind) as place:
        return measure(place)


def saga_rows(seconds: float, kinds: list[Kind]) -> list[Row]:
    """meshkit's rows beside DBOS's, and DBOS's own."""
    if not kinds:
        return []
    reference = f"DBOS {version('dbos')}"
    rows: list[Row] = []
    for kind in kinds:
        # Each side on a database of its own, one after the other.
        theirs = on_new(kind, lambda place: dbos_throughput(place, seconds))
        label = f"{reference} on {LABELS[kind]}"
        ours = on_new(kind, lambda place: side.throughput(place, seconds=seconds))
        rows += [
            Row(f"saga {kind}", ours.rate, "sagas/s", theirs.rate, label),
            Row(f"saga {kind} CPU per saga", ours.cpu_ms, "ms", theirs.cpu_ms, label),
        ]
        if kind == "sqlite":
            # Durable across a crash of the process, not a power cut: less than DBOS's.
            normal = on_new(
                kind,
                lambda place: side.throughput(place, seconds=seconds, synchronous="NORMAL"),
            )
            rows.append(Row("saga sqlite synchronous=NORMAL", normal.rate, "sagas/s"))
        rows += [
            Row(f"dbos {kind}", theirs.rate, "workflows/s"),
            Row(f"dbos {kind} CPU per workflow", theirs.cpu_ms, "ms"),
        ]
    if "sqlite" in kinds:
        theirs_paced = on_new("sqlite", lambda place: dbos_paced(place, seconds))
        label = f"{reference} on {LABELS['sqlite']}"
        ours_paced = on_new("sqlite", lambda place: side.paced(place, rate=RATE, seconds=seconds))
        rows += [
            Row(f"saga sqlite {m} at {RATE}/s", getattr(ours_paced, m), "ms", r, label)
            for m, r in (("p50", theirs_paced.p50), ("p99", theirs_paced.p99))
        ]
        rows.append(Row(f"saga sqlite completed at {RATE}/s", ours_paced.rate, "sagas/s"))
        normal_paced = on_new(
            "sqlite",
            lambda place: side.paced(place, rate=RATE, seconds=seconds, synchronous="NORMAL"),
        )
        rows += [
            Row(
                f"saga sqlite synchronous=NORMAL {m} at {RATE}/s",
                getattr(normal_paced, m),
                "ms",
            )
            for m in ("p50", "p99")
        ]
        rows += [
            Row(f"dbos sqlite p50 at {RATE}/s", theirs_paced.p50, "ms"),
            Row(f"dbos sqlite p99 at {RATE}/s", theirs_paced.p99, "ms"),
            Row(f"dbos sqlite completed at {RATE}/s", theirs_paced.rate, "workflows/s"),
            Row(f"dbos sqlite CPU per workflow at {RATE}/s", theirs_paced.cpu_ms, "ms"),
        ]
    return rows


def shop_rows(seconds: float) -> list[Row]:
    with _saga_shop.shop() as running:
        placed = _saga_shop.orders(running, seconds)
        paced = _saga_shop.paced_orders(running, rate=SHOP_RATE, seconds=seconds)
    return [
        Row(
            f"shop order through the gateway, {_saga_shop.IN_FLIGHT} in flight",
            placed["rate"],
            "orders/s",
        ),
        Row(f"shop order p50 at {SHOP_RATE}/s", paced["p50"], "ms"),
        Row(f"shop order p99 at {SHOP_RATE}/s", paced["p99"], "ms"),
    ]


def main() -> None:
    parser = arguments(__doc__.splitlines()[0] if __doc__ else "saga benchmark")
    parser.add_argument("--quick", action="store_true", help="one second each, to check it runs")
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="how long each run is timed (default 4)"
    )
    parser.add_argument(
        "--only", choices=ONLY, action="append", help="run only this part (may be repeated)"
    )
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    only = set(args.only or ONLY)
    kinds = [kind for kind in KINDS if kind in only]
    if "postgres" in kinds and not postgres_answers():
        raise SystemExit(
            "benchmarks.saga needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust"
            " authentication); or run it with --only sqlite --only shop"
        )
    rows = saga_rows(seconds, kinds)
    if "shop" in only:
        rows += shop_rows(seconds)
    title = "Durable three-step sagas"
    report(title, rows, args.json)


if __name__ == "__main__":
    main()
