"""A rollout as a trace in the control plane's own store: ``meshkit traces show`` draws it.

Each rollout has a trace of its own, its ids derived from the rollout's
number and start (so nothing more is stored): a root span from the start
to the end, written when the rollout ends, and a span per transition,
from the one before it to it, written as it happens, so a rollout under
way shows already. A transition to a rollback is an error span.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

from meshkit.control._rollouts import HistoryLine, RolloutRecord
from meshkit.control._targets import PLANE_SERVICE
from meshkit.observe import SpanRow

__all__ = ["rollout_trace_id", "spans"]

_INTERNAL = 1  # OTLP's SpanKind
_UNSET, _ERROR = 0, 2  # OTLP's status codes
_RESOURCE = msgspec.json.encode({"service.name": PLANE_SERVICE}).decode()


def _hex(record: RolloutRecord, what: str, size: int) -> str:
    seed = f"meshkit-rollout:{record.id}:{record.rollout.started_at}:{what}".encode()
    return hashlib.blake2b(seed, digest_size=size).hexdigest()


def rollout_trace_id(record: RolloutRecord) -> str:
    return _hex(record, "trace", 16)


def spans(record: RolloutRecord, new: Sequence[HistoryLine]) -> list[SpanRow]:
    """The spans of the ``new`` lines of ``record``'s history, and the root once it ended."""
    rollout, history = record.rollout, record.history
    trace_id, root = rollout_trace_id(record), _hex(record, "root", 8)
    attributes = msgspec.json.encode(
        {"meshkit.rollout.id": record.id, "meshkit.service": rollout.service}
    ).decode()
    rows: list[SpanRow] = []
    first = len(history) - len(new)
    for index in range(first, len(history)):
        line = history[index]
        since = history[index - 1].at if index else rollout.started_at
        failing = line.text.startswith(("rolling-back", "rolled-back", "analysis failed"))
        rows.append(
            (
                trace_id,
                _hex(record, f"line:{index}", 8),
                root,
                PLANE_SERVICE,
                PLANE_SERVICE,
                line.text[:200],
                _INTERNAL,
                int(since * 1e9),
                int(line.at * 1e9),
                _ERROR if failing else _UNSET,
                "",
                attributes,
                "[]",
                "[]",
                _RESOURCE,
            )
        )
    if rollout.phase.finished and new:
        rows.append(
            (
                trace_id,
                root,
                "",
                PLANE_SERVICE,
                PLANE_SERVICE,
                f"{rollout.strategy} rollout of {rollout.service}",
                _INTERNAL,
                int(rollout.started_at * 1e9),
                int(max(rollout.finished_at, history[-1].at) * 1e9),
                _ERROR if rollout.reason else _UNSET,
                rollout.reason,
                attributes,
                "[]",
                "[]",
                _RESOURCE,
            )
        )
    return rows
