"""The bus conformance suite, and what is particular to it, against NATS JetStream."""

import asyncio
import contextlib
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshkit._clock import SystemClock
from meshkit.bus import Delivery, outgoing
from meshkit.bus.nats import JetStreamBus
from meshkit.errors import ConfigError, EnvironmentFaultError, UsageError
from meshkit.policy import Backoff, Redelivery
from meshkit.testing import FakeClock
from meshkit.testing.conformance import BusConformance
from meshkit.testing.servers import backend_missing, free_port

nats = pytest.importorskip("nats", reason="the JetStream bus needs: pip install 'meshkit[nats]'")

NATS_URL = "nats://127.0.0.1:4222"
WITHIN = 20.0  # seconds any one expectation may take on a loaded machine
CLOCK = SystemClock()


async def _remove_streams(prefix: str) -> None:
    """Delete the two streams of a test's prefix, if the server is there to ask."""
    try:
        async with asyncio.timeout(2):  # nats-py retries a refused connection by itself
            client = await nats.connect(
                NATS_URL, connect_timeout=1, max_reconnect_attempts=1, reconnect_time_wait=0.1
            )
    except (OSError, TimeoutError, nats.errors.Error):
        return
    try:
        js = client.jetstream()
        for name in (prefix.upper(), f"{prefix.upper()}_DLQ"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await client.close()


@pytest.fixture
async def bus() -> AsyncIterator[JetStreamBus]:
    prefix = f"meshkit-test-{secrets.token_hex(5)}"
    try:
        try:
            bus = await JetStreamBus.open(NATS_URL, prefix=prefix)
        except EnvironmentFaultError:
            backend_missing(
                "NATS with JetStream at 127.0.0.1:4222",
                "install it with: apt-get install nats-server, and start it with -js",
            )
        try:
            yield bus
        finally:
            await bus.aclose()
    finally:
        await _remove_streams(prefix)


@pytest.fixture
def topic() -> str:
    return f"js.t{secrets.token_hex(5)}"


class TestJetStreamBus(BusConformance):
    """Every test of the suite, each on streams of its own (the ``bus`` fixture above)."""


# -- connecting ------------------------------------------------------------------------


async def test_an_unreachable_server_is_an_environment_fault_naming_it() -> None:
    """Nothing listening: open() raises EnvironmentFaultError with the URL within a second or so."""
    url = f"nats://127.0.0.1:{free_port()}"
    started = CLOCK.monotonic()
    with pytest.raises(EnvironmentFaultError, match=url):
        await JetStreamBus.open(url, connect_timeout=1.0)
    assert CLOCK.monotonic() - started < 3.0


async def _listening(port: int) -> None:
    async with asyncio.timeout(WITHIN):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await CLOCK.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            return


async def test_calls_fail_while_the_server_is_down_and_work_again_after(tmp_path: Path) -> None:
    """A server of the test's own killed and started again: EnvironmentFaultError, then recovery."""
    binary = shutil.which("nats-server")
    if binary is None:
        backend_missing("nats-server", "install it with: apt-get install nats-server")
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    command = [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path)]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    server = start()
    try:
        await _listening(port)
        bus = await JetStreamBus.open(url, timeout=1.0)
        try:
            await bus.publish("outage.t", "before")
            server.kill()
            server.wait()
            with pytest.raises(EnvironmentFaultError, match=url):
                await bus.publish("outage.t", "during")
            server = start()
            await _listening(port)
            async with asyncio.timeout(WITHIN):  # the client reconnects by itself
                while True:
                    try:
                        await bus.publish("outage.t", "after")
                        break
                    except EnvironmentFaultError:
                        await CLOCK.sleep(0.1)
            consumer = await bus.consumer("outage.t", "g", redelivery=Redelivery())
            try:
                deliveries = await consumer.fetch(10, wait=WITHIN)
                await consumer.ack(deliveries)
            finally:
                await consumer.aclose()
            payloads = [delivery.message.json() for delivery in deliveries]
            assert payloads[0] == "before"
            assert payloads[-1] == "after"
        finally:
            await bus.aclose()
    finally:
        server.kill()
        server.wait()


def test_without_nats_py_the_bus_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nats-py is imported when a bus is made: its absence is a UsageError naming the extra."""
    monkeypatch.setitem(sys.modules, "nats.aio.client", None)
    with pytest.raises(UsageError, match=r"pip install 'meshkit\[nats\]'"):
        JetStreamBus()


def test_bad_options_are_refused_before_connecting() -> None:
    """A URL that is not NATS's, a prefix that cannot name a stream: ConfigError."""
    with pytest.raises(ConfigError, match="nats://"):
        JetStreamBus("http://127.0.0.1:4222")
    for prefix in ("Upper", "has_underscore", "dot.ted", "", "x" * 33):
        with pytest.raises(ConfigError, match="prefix"):
            JetStreamBus(prefix=prefix)


# -- delivery ------------------------------------------------------------------------------


async def test_an_empty_fetch_is_an_empty_list_after_the_wait(
    bus: JetStreamBus, topic: str
) -> None:
    """No message: fetch returns [] at once with wait=0, and after the wait otherwise."""
    consumer = await bus.consumer(topic, "idle", redelivery=Redelivery())
    try:
        assert await consumer.fetch(5, wait=0) == []
        started = CLOCK.monotonic()
        assert await consumer.fetch(5, wait=0.5) == []
        assert 0.4 <= CLOCK.monotonic() - started < 5.0
        with pytest.raises(ConfigError, match="limit"):
            await consumer.fetch(0, wait=0)
    finally:
        await consumer.aclose()


async def test_a_group_at_its_limit_of_unanswered_deliveries_waits_without_error(
    bus: JetStreamBus, topic: str
) -> None:
    """1,000 deliveries out (MaxAckPending): fetch waits and returns [], then resumes."""
    await bus.publish_batch([outgoing(topic, n) for n in range(1001)])
    consumer = await bus.consumer(topic, "busy", redelivery=Redelivery())
    try:
        held: list[Delivery] = []
        async with asyncio.timeout(WITHIN):
            while len(held) < 1000:
                held += await consumer.fetch(1000 - len(held), wait=WITHIN)
        started = CLOCK.monotonic()
        assert await consumer.fetch(10, wait=0.3) == []
        assert CLOCK.monotonic() - started < 3.0
        await consumer.ack(held)
        [last] = await consumer.fetch(10, wait=WITHIN)
        assert last.message.json() == 1000
        await consumer.ack([last])
    finally:
        await consumer.aclose()


async def test_headers_keys_and_errors_arrive_exactly_as_sent(
    bus: JetStreamBus, topic: str
) -> None:
    """Values NATS would trim or cannot carry raw come back unchanged, also in a dead letter."""
    headers = {
        "x-padded": "  two spaces  ",
        "x-quoted": '"quoted"',
        "x-empty": "",
        "x-text": "naïve ✓ 東京",
    }
    key = " a key\nover two lines "
    await bus.publish(topic, {"n": 1}, headers=headers, key=key, message_id='"odd-id"')
    consumer = await bus.consumer(topic, "exact", redelivery=Redelivery(max_deliveries=1))
    try:
        [delivery] = await consumer.fetch(1, wait=WITHIN)
        message = delivery.message
        assert {name: message.headers[name] for name in headers} == headers
        assert (message.key, message.id) == (key, '"odd-id"')
        error = "ValueError: line one\r\nline two\t ✗ "
        await consumer.fail(delivery, error)
    finally:
        await consumer.aclose()
    [letter] = await bus.dead_letters()
    assert letter.error == error
    assert letter.message.key == key
    assert {name: letter.message.headers[name] for name in headers} == headers


async def test_a_message_id_is_a_duplicate_only_on_its_own_topic(
    bus: JetStreamBus, topic: str
) -> None:
    """JetStream remembers ids per stream; the bus scopes them to the topic, as promised."""
    other = f"{topic}.other"
    assert not (await bus.publish(topic, 1, message_id="shared")).duplicate
    assert not (await bus.publish(other, 2, message_id="shared")).duplicate
    assert (await bus.publish(topic, 3, message_id="shared")).duplicate


async def test_headers_named_for_nats_are_refused(bus: JetStreamBus, topic: str) -> None:
    """A Nats-* header would steer JetStream (ids, expectations): ConfigError, nothing sent."""
    for name in ("Nats-Msg-Id", "nats-expected-stream"):
        with pytest.raises(ConfigError, match="nats-"):
            await bus.publish(topic, {}, headers={name: "x"})
    consumer = await bus.consumer(topic, "nothing", redelivery=Redelivery())
    try:
        assert await consumer.fetch(10, wait=0) == []
    finally:
        await consumer.aclose()


async def test_groups_on_topics_alike_but_for_their_dots_are_apart(bus: JetStreamBus) -> None:
    """a-b.c and a.b-c map to durable consumers of their own: each gets its own topic's message."""
    base = f"js.t{secrets.token_hex(5)}"
    first, second = f"{base}.a-b.c", f"{base}.a.b-c"
    await bus.publish(first, "first")
    await bus.publish(second, "second")
    for topic, expected in ((first, "first"), (second, "second")):
        consumer = await bus.consumer(topic, "same-group", redelivery=Redelivery())
        try:
            [delivery] = await consumer.fetch(10, wait=WITHIN)
            assert delivery.message.json() == expected
            await consumer.ack([delivery])
        finally:
            await consumer.aclose()


async def test_joining_again_sets_the_groups_policy_without_backoff(
    bus: JetStreamBus, topic: str
) -> None:
    """The last member to join sets max_deliver and ack_wait; no JetStream BackOff is set."""
    first = await bus.consumer(topic, "policy", redelivery=Redelivery(ack_wait=30))
    second = await bus.consumer(
        topic, "policy", redelivery=Redelivery(max_deliveries=2, ack_wait=1.5)
    )
    await first.aclose()
    await second.aclose()
    client = await nats.connect(NATS_URL)
    try:
        [info] = await client.jetstream().consumers_info(bus.stream)
    finally:
        await client.close()
    assert (info.config.max_deliver, info.config.ack_wait) == (2, 1.5)
    assert not info.config.backoff
    assert info.config.filter_subject == f"{bus.prefix}.msg.{topic}"


# -- dead letters ---------------------------------------------------------------------------


async def test_a_member_that_stops_on_the_last_delivery_leaves_a_dead_letter(
    bus: JetStreamBus, topic: str
) -> None:
    """Never answered twice: the server's max-deliveries advisory makes it a dead letter."""
    policy = Redelivery(max_deliveries=2, backoff=Backoff(initial=0.25), ack_wait=1.0)
    await bus.publish(topic, {"held": True}, message_id="held-1", key="k1")
    consumer = await bus.consumer(topic, "crashy", redelivery=policy)
    try:
        [first] = await consumer.fetch(1, wait=WITHIN)
        [second] = await consumer.fetch(1, wait=WITHIN)  # after the first ack deadline
        assert (first.message.deliveries, second.message.deliveries) == (1, 2)
        # The server gives up once the second deadline passes, and says so
        # when a member next asks for messages.
        async with asyncio.timeout(WITHIN):
            while not (letters := await bus.dead_letters()):
                assert await consumer.fetch(1, wait=0.2) == []
        assert await consumer.fetch(1, wait=0.5) == []  # not delivered again
    finally:
        await consumer.aclose()
    [letter] = letters
    assert (letter.group, letter.topic, letter.deliveries) == ("crashy", topic, 2)
    assert "not acked within ack_wait (1 s)" in letter.error
    assert (letter.message.id, letter.message.key) == ("held-1", "k1")
    assert letter.message.json() == {"held": True}


async def test_a_failure_reported_after_the_ack_deadline_changes_nothing(
    bus: JetStreamBus, topic: str
) -> None:
    """Too late to count: the server took the delivery back, and its own path buries it."""
    clock = FakeClock(autojump_threshold=None)  # receipts' deadlines only; I/O keeps real time
    late = await JetStreamBus.open(NATS_URL, prefix=bus.prefix, clock=clock)
    policy = Redelivery(max_deliveries=1, ack_wait=1.0)
    try:
        await late.publish(topic, "slow")
        consumer = await late.consumer(topic, "slow", redelivery=policy)
        try:
            [delivery] = await consumer.fetch(1, wait=WITHIN)
            clock.advance(1.5)
            await consumer.fail(delivery, "RuntimeError: too late to matter")
            assert await late.dead_letters() == []
        finally:
            await consumer.aclose()
    finally:
        await late.aclose()
    watcher = await bus.consumer(topic, "slow", redelivery=policy)
    try:
        async with asyncio.timeout(WITHIN):
            while not (letters := await bus.dead_letters()):
                assert await watcher.fetch(1, wait=0.2) == []
    finally:
        await watcher.aclose()
    [letter] = letters
    assert "not acked within ack_wait" in letter.error


async def test_bad_dead_letter_ids_are_config_errors(bus: JetStreamBus) -> None:
    """Ids are stream sequences: anything but digits is refused before asking the server."""
    for attempt in (bus.dead_letter("x1"), bus.replay("-1"), bus.purge(["1", "one"])):
        with pytest.raises(ConfigError, match="id"):
            await attempt
    with pytest.raises(ConfigError, match="limit"):
        await bus.dead_letters(limit=0)
