"""A repeated request gets its first answer: the ``Idempotency-Key`` header, server side.

A caller that lost an answer (a timeout, a dropped connection, a crash of
its own) sends the request again with the same key, as the orders saga does
for each step. The first request with a key runs; its answer (status and
body) is stored under the key in the SAME transaction as its effect, so
either both are committed or neither is. A later request with the key
changes nothing and gets that answer again, marked ``Idempotent-Replayed:
true``. This follows draft-ietf-httpapi-idempotency-key-header:

- a key is scoped to its operation (method and route, ``POST
  /reservations``): a saga may use one key for a step and its compensation;
- the key reused with a different request (another body or another path,
  such as another order id) is refused: 422, and nothing is done;
- final refusals are answers too: a 409 (out of stock) or a 402 (declined)
  is stored and repeated, so retrying a step cannot turn a refusal into a
  success. Errors that are not answers (a 5xx, a crash) roll the
  transaction back and store nothing, so a retry runs again;
- a repeat that arrives while the first request is running waits for it and
  gets its answer: every request with a key takes SQLite's write lock
  (``BEGIN IMMEDIATE``) before it looks the key up, so there is no "still
  running" state to answer 409 for;
- keys are kept for good: the shop's volumes are small, and a key's answer
  is then valid for as long as any caller may retry.

A request without the header runs as before, once per request.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from meshkit.errors import InvalidArgumentError
from meshkit.http import PROBLEM_JSON, Problem, read_idempotency_key
from shop.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    operation TEXT NOT NULL,       -- 'POST /reservations': a key is scoped to its route
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,     -- of the method, path and body: the same key, another request
    status INTEGER NOT NULL,
    body TEXT NOT NULL,            -- JSON; 'null' for an answer without a body
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (operation, key)
);
"""

REPLAYED = "Idempotent-Replayed"  # on a repeat's answer, as Stripe marks it

# What a route honouring the header adds to its documented answers (OpenAPI).
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "The Idempotency-Key is not a valid key (application/problem+json)"},
    422: {
        "description": "The request is not valid, or its Idempotency-Key was used for"
        " another request (application/problem+json)"
    },
}


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request is answered: a status and a JSON body (None for no body).

    An error's body is a problem (RFC 9457) without its ``instance``: that is
    the id of the request being answered, added when it is sent.
    """

    status: int
    body: Any = None

    @classmethod
    def problem(cls, status: int, detail: str, **members: Any) -> Answer:
        return cls(status, Problem(status, detail, extensions=members).to_dict())


def _key(
    raw: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Repeats of a request with this key get its first answer"
            " (draft-ietf-httpapi-idempotency-key-header).",
        ),
    ] = None,
) -> str | None:
    if raw is None:
        return None
    try:
        return read_idempotency_key(raw)
    except InvalidArgumentError as error:
        raise HTTPException(400, str(error)) from error


# The client's key, if it sent one: a handler's parameter (``key: IdempotencyKey``).
IdempotencyKey = Annotated[str | None, Depends(_key)]


def once(
    db: Database,
    request: Request,
    key: str | None,
    payload: object,
    effect: Callable[[sqlite3.Connection], Answer],
) -> Response:
    """Run ``effect`` in a transaction of ``db``, unless ``key`` was seen; answer what it returned.

    ``payload`` is the request's validated body (None without one): with the
    method and the path, it is what a repeat must match. A repeat gets the
    stored answer and ``effect`` does not run; a repeat that does not match
    raises ``HTTPException(422)``. ``effect`` returns refusals it means as
    final (``Answer.problem(409, ...)``) and raises for anything a retry
    should run again: then nothing is stored.
    """
    operation = f"{request.method} {_route(request)}"
    fingerprint = _fingerprint(request, payload)
    with db.transaction() as tx:
        if key is not None:
            stored = _stored(tx, operation, key, fingerprint)
            if stored is not None:
                return _response(stored, request, replayed=True)
        answer = effect(tx)
        if key is not None:
            tx.execute(
                "INSERT INTO idempotency (operation, key, fingerprint, status, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (operation, key, fingerprint, answer.status, json.dumps(answer.body)),
            )
    return _response(answer, request, replayed=False)


def _stored(tx: sqlite3.Connection, operation: str, key: str, fingerprint: str) -> Answer | None:
    row = tx.execute(
        "SELECT fingerprint, status, body FROM idempotency WHERE operation = ? AND key = ?",
        (operation, key),
    ).fetchone()
    if row is None:
        return None
    if row["fingerprint"] != fingerprint:
        raise HTTPException(422, "Idempotency-Key reused with a different request")
    return Answer(row["status"], json.loads(row["body"]))


def _route(request: Request) -> str:
    """The route's path template (``/reservations/{order_id}``), else the request's path."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else request.url.path


def _fingerprint(request: Request, payload: object) -> str:
    """A digest of what makes two requests the same: method, path and body, keys sorted."""
    canonical = json.dumps(
        [request.method, request.url.path, payload], sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _response(answer: Answer, request: Request, *, replayed: bool) -> Response:
    headers = {REPLAYED: "true"} if replayed else {}
    if answer.body is None:
        return Response(status_code=answer.status, headers=headers)
    if answer.status < 400:
        return JSONResponse(answer.body, answer.status, headers)
    body = dict(answer.body)
    request_id = request.headers.get("x-request-id")
    if request_id is not None:
        body["instance"] = request_id
    return JSONResponse(body, answer.status, headers, media_type=PROBLEM_JSON)
