"""The control plane's rollouts over HTTP/JSON (routed here by ``_api``; the token is checked).

    GET  /v1/rollouts?service=S&active=true&limit=N  -> {rollouts: [record...]} newest first
    POST /v1/rollouts                    {rollout, stable, candidate} -> 201 record
    GET  /v1/rollouts/{id}               -> record
    PUT  /v1/rollouts/{id}               {version, rollout} -> record (the driver's step)
    POST /v1/rollouts/{service}/{command}  pause|resume|promote|abort|undo -> record

A second rollout of a service while one is under way, a write from a
stale version and a command the rollout's state does not allow are 409s;
an unknown id or service a 404; a bad body a 400 naming the field. Every
answer is a problem detail (RFC 9457) when it is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import msgspec

from meshkit._clock import Clock
from meshkit.control._answers import decode_body, invalid
from meshkit.control._answers import error as error_answer
from meshkit.control._rollout_trace import spans
from meshkit.control._rollouts import HistoryLine, RolloutRecord, RolloutStore
from meshkit.errors import ConflictError, InvalidArgumentError, NotFoundError
from meshkit.http import Request, Response, json_response
from meshkit.observe import SpanRow
from meshkit.policy import COMMANDS, Rollout
from meshkit.registry import check_name

__all__ = ["PREFIX", "RolloutAPI"]

PREFIX = "/v1/rollouts"
log = logging.getLogger("meshkit.rollout")


class _Create(msgspec.Struct, forbid_unknown_fields=True):
    rollout: Rollout
    stable: dict[str, Any]
    candidate: dict[str, Any]


class _Step(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    rollout: Rollout


class RolloutAPI:
    """``handle`` answers ``/v1/rollouts...``; every transition is also a log record."""

    def __init__(
        self,
        store: RolloutStore,
        *,
        clock: Clock,
        spans: Callable[[list[SpanRow]], bool] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._spans = spans  # where each rollout's trace goes: the plane's telemetry store

    def handle(self, request: Request) -> Response:
        method, rest = request.method, request.path[len(PREFIX) :].strip("/")
        try:
            if not rest:
                if method == "GET":
                    return self._list(request.query)
                if method == "POST":
                    return self._create(request.body)
                return error_answer(405, f"{method} is not allowed here; use GET or POST")
            first, _, command = rest.partition("/")
            if command:
                if method != "POST":
                    return error_answer(405, f"{method} is not allowed here; use POST")
                return self._command(first, command)
            if not first.isdigit():
                raise InvalidArgumentError("id", f"must be a rollout's number, got {first!r}")
            if method == "GET":
                return _answer(200, self._store.get(int(first)))
            if method == "PUT":
                return self._step(int(first), request.body)
            return error_answer(405, f"{method} is not allowed here; use GET or PUT")
        except InvalidArgumentError as problem:
            return invalid(problem)
        except NotFoundError as problem:
            return error_answer(404, str(problem))
        except ConflictError as problem:
            return error_answer(409, str(problem))

    def _list(self, query: str) -> Response:
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        unknown = set(params) - {"service", "active", "limit"}
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidArgumentError(name, "is not a parameter here (service, active, limit)")
        service = params.get("service")
        if service is not None:
            check_name("service", service)
        active = params.get("active", "false")
        if active not in ("true", "false"):
            raise InvalidArgumentError("active", f"must be true or false, got {active!r}")
        limit = params.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise InvalidArgumentError("limit", f"must be from 1 to 1000, got {limit!r}")
        found = self._store.find(service=service, active=active == "true", limit=int(limit))
        return json_response(200, {"rollouts": [msgspec.to_builtins(r) for r in found]})

    def _create(self, body: bytes) -> Response:
        asked = decode_body(_Create, body)
        record = self._store.create(
            asked.rollout, stable=asked.stable, candidate=asked.candidate, now=self._clock.time()
        )
        self._traced(record, len(record.history))
        return _answer(201, record)

    def _step(self, rollout_id: int, body: bytes) -> Response:
        asked = decode_body(_Step, body)
        before = self._store.get(rollout_id)
        if asked.rollout.service != before.rollout.service:
            raise InvalidArgumentError("rollout.service", "a rollout keeps its service")
        record = self._store.save(rollout_id, asked.version, asked.rollout, self._clock.time())
        self._traced(record, len(record.history) - len(before.history))
        return _answer(200, record)

    def _command(self, service: str, command: str) -> Response:
        check_name("service", service)
        kind = COMMANDS.get(command)
        if kind is None:
            raise InvalidArgumentError(
                "command", f"must be one of {', '.join(COMMANDS)}, got {command!r}"
            )
        before = len(self._store.latest(service).history)
        record = self._store.command(service, kind(), self._clock.time())
        self._traced(record, len(record.history) - before)
        return _answer(200, record)

    def _traced(self, record: RolloutRecord, new: int) -> None:
        """The newest ``new`` lines as log records, and as spans of the rollout's trace."""
        _logged(record, new)
        if self._spans is not None and new > 0:
            self._spans(spans(record, _newest(record, new)))


def _newest(record: RolloutRecord, new: int) -> tuple[HistoryLine, ...]:
    return record.history[len(record.history) - new :] if new > 0 else ()


def _answer(status: int, record: RolloutRecord) -> Response:
    return json_response(status, msgspec.to_builtins(record))


def _logged(record: RolloutRecord, new: int) -> None:
    """The record's newest ``new`` history lines, as log records of the control plane."""
    for line in _newest(record, new):
        log.info(
            "rollout %d of %s: %s",
            record.id,
            record.rollout.service,
            line.text,
            extra={"rollout_id": record.id, "service_name": record.rollout.service},
        )
