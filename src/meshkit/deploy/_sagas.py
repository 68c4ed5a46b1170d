"""The saga runs of a project's services, asked of every instance the registry lists.

Each instance answers its own ``/-/sagas`` (``meshkit.service._saga_api``)
with the project's token. One that runs no sagas says so (a 404 with
``runs_sagas: false``) and is passed over. Replicas of a service sharing
one database list the same runs: a run is kept once per service, as last
changed. An instance that does not answer (it is stopping, it hangs) is
named in ``unanswered`` rather than failing the whole: the others' runs
are still worth seeing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

import msgspec

from meshkit.errors import (
    ConfigError,
    ConflictError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    PeerError,
)
from meshkit.http import HTTPClient, Problem, Response, Timeouts
from meshkit.registry import Instance, RemoteRegistry
from meshkit.saga import Status
from meshkit.service._saga_api import NO_SAGAS, PREFIX, RunDetail, RunSummary

__all__ = ["Found", "Listing", "SagaClient"]

# The saga API answers in milliseconds on loopback: an instance silent this
# long is stopped or hung, and the listing goes on without it.
_TIMEOUTS = Timeouts(connect=2.0, read=3.0)


class Found(msgspec.Struct, frozen=True, kw_only=True):
    """A run, the service whose log holds it, and the instances that answered with it."""

    service: str
    run: RunDetail
    instances: tuple[Instance, ...]


class Listing(msgspec.Struct, frozen=True, kw_only=True):
    """Runs of the services asked, most recently changed first, with the service of each.

    ``with_sagas`` names the services that run sagas; ``unanswered`` says,
    per instance that did not answer, why.
    """

    runs: list[tuple[str, RunSummary]]
    with_sagas: list[str]
    unanswered: list[str]


class _Answer(msgspec.Struct, frozen=True):
    """What one instance said: its runs (or run), ``None`` for none, or why it did not say."""

    instance: Instance
    found: Any = None
    runs_sagas: bool = True
    failed: str | None = None


class SagaClient:
    """Asks the instances a control plane at ``url`` lists, with the project's ``token``.

    Raises ``EnvironmentFaultError`` when the control plane cannot be
    reached, ``ConfigError`` on ``token`` when an instance refuses it.
    """

    def __init__(self, url: str, *, token: str, timeouts: Timeouts = _TIMEOUTS) -> None:
        self._registry = RemoteRegistry(url, token=token)
        self._auth = [(b"authorization", f"Bearer {token}".encode())]
        self._http = HTTPClient(timeouts=timeouts)

    async def __aenter__(self) -> SagaClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._registry.aclose()

    async def runs(
        self,
        *,
        service: str | None = None,
        status: Status | None = None,
        saga: str | None = None,
        limit: int = 100,
    ) -> Listing:
        """At most ``limit`` runs of ``service`` (of every service if ``None``)."""
        query = {"status": status or "", "saga": saga or "", "limit": str(limit)}
        target = f"{PREFIX}?{urlencode(query)}"
        answers = await self._ask_all(service, "GET", target, list[RunSummary])
        kept: dict[tuple[str, str], RunSummary] = {}
        for answer in answers:
            for run in answer.found or ():
                key = (answer.instance.service, run.id)
                if key not in kept or run.updated > kept[key].updated:
                    kept[key] = run
        ordered = sorted(kept.items(), key=lambda item: item[1].updated, reverse=True)
        return Listing(
            runs=[(service_name, run) for (service_name, _), run in ordered][:limit],
            with_sagas=_with_sagas(answers),
            unanswered=[a.failed for a in answers if a.failed is not None],
        )

    async def find(self, run_id: str, *, service: str | None = None) -> Found:
        """The run ``run_id``, asked of every instance (of ``service``, if given).

        Raises ``NotFoundError`` when no instance has it (saying whether any
        runs sagas at all), ``InvalidArgumentError`` on ``service`` when two
        services have a run of that id.
        """
        target = f"{PREFIX}/{quote(run_id, safe='')}"
        answers = await self._ask_all(service, "GET", target, RunDetail)
        holders: dict[str, list[_Answer]] = {}
        for answer in answers:
            if answer.found is not None:
                holders.setdefault(answer.instance.service, []).append(answer)
        if len(holders) > 1:
            names = ", ".join(sorted(holders))
            raise InvalidArgumentError(
                "service", f"saga run {run_id!r} is in several services ({names}): choose one"
            )
        if not holders:
            raise NotFoundError(_not_found(run_id, service, answers))
        [(name, held)] = holders.items()
        latest = max(held, key=lambda answer: answer.found.updated)
        return Found(service=name, run=latest.found, instances=tuple(a.instance for a in held))

    async def retry(self, run_id: str, *, service: str | None = None) -> Found:
        """Retry the stuck run ``run_id`` on an instance that holds it: the run as it now stands.

        Raises what ``find`` raises, and ``ConflictError`` if the run is not stuck.
        """
        found = await self.find(run_id, service=service)
        target = f"{PREFIX}/{quote(run_id, safe='')}/retry"
        failures = []
        for instance in found.instances:
            answer = await self._ask(instance, "POST", target, RunDetail)
            if answer.found is not None:
                return Found(service=found.service, run=answer.found, instances=(instance,))
            failures.append(answer.failed or f"{instance.id}: no saga run {run_id!r} any more")
        raise ConflictError("; ".join(failures))

    async def _ask_all(
        self, service: str | None, method: str, target: str, kind: type[Any]
    ) -> list[_Answer]:
        instances = await self._instances(service)
        return list(await asyncio.gather(*(self._ask(i, method, target, kind) for i in instances)))

    async def _instances(self, service: str | None) -> Sequence[Instance]:
        if service is not None:
            instances = (await self._registry.lookup(service)).instances
            if not instances:
                raise NotFoundError(f"no instance of service {service!r} is registered")
            return instances
        names = sorted(entry.name for entry in (await self._registry.services()).services)
        listed = [(await self._registry.lookup(name)).instances for name in names]
        found = [instance for instances in listed for instance in instances]
        if not found:
            raise NotFoundError("no service instance is registered")
        return found

    async def _ask(self, instance: Instance, method: str, target: str, kind: type[Any]) -> _Answer:
        where = f"{instance.id} at {instance.host}:{instance.port}"
        try:
            response = await self._http.request(
                method, instance.host, instance.port, target, headers=self._auth
            )
        except (PeerError, DeadlineExceededError) as error:
            return _Answer(instance, failed=f"{where} did not answer: {error}")
        if response.status == 200:
            try:
                return _Answer(instance, msgspec.json.decode(response.body, type=kind))
            except (msgspec.ValidationError, msgspec.DecodeError) as error:
                return _Answer(instance, failed=f"{where} answered what is not a saga run: {error}")
        return _refused(instance, where, response)


def _refused(instance: Instance, where: str, response: Response) -> _Answer:
    problem = Problem.read(response.status, response.body)
    if response.status == 401:
        raise ConfigError("token", f"{where} refused the project's token: {problem.detail}")
    if response.status == 404:
        # Only meshkit's saga API says it runs sagas; another 404 (an app
        # behind a sidecar) is a service without them.
        return _Answer(instance, runs_sagas=problem.extensions.get(NO_SAGAS) is True)
    if response.status == 409:
        raise ConflictError(problem.detail)
    if response.status == 400:
        raise InvalidArgumentError(
            problem.errors[0].field if problem.errors else "query", problem.summary()
        )
    return _Answer(instance, failed=f"{where} answered {response.status}: {problem.summary()}")


def _with_sagas(answers: list[_Answer]) -> list[str]:
    return sorted({a.instance.service for a in answers if a.failed is None and a.runs_sagas})


def _not_found(run_id: str, service: str | None, answers: list[_Answer]) -> str:
    with_sagas = _with_sagas(answers)
    unanswered = [a.failed for a in answers if a.failed is not None]
    if not with_sagas and not unanswered:
        return f"service {service!r} runs no sagas" if service else "no service runs sagas"
    text = f"no saga run {run_id!r} in {', '.join(with_sagas) or 'any service that answered'}"
    if unanswered:
        text += f" (not answering: {'; '.join(unanswered)})"
    return text
