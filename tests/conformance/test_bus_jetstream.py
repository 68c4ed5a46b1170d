"""The bus conformance suite, and what is particular to it, against NATS JetStream."""

import asyncio
import contextlib
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from meshkit._clock import SystemClock
from meshkit.bus import MAX_HEADERS, MAX_PAYLOAD, Delivery, Message, outgoing, subscribe
from meshkit.bus.nats import JetStreamBus
from meshkit.bus.nats._wire import read_pub_ack
from meshkit.errors import (
    ConfigError,
    EnvironmentFaultError,
    GroupLostError,
    InvalidArgumentError,
    MessageRefusedError,
    UsageError,
)
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
async def prefix() -> AsyncIterator[str]:
    """A prefix of the test's own; its streams are removed afterwards."""
    prefix = f"meshkit-test-{secrets.token_hex(5)}"
    try:
        yield prefix
    finally:
        await _remove_streams(prefix)


@pytest.fixture
async def bus(prefix: str) -> AsyncIterator[JetStreamBus]:
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


@pytest.fixture
def topic() -> str:
    return f"js.t{secrets.token_hex(5)}"


class TestJetStreamBus(BusConformance):
    """Every test of the suite, each on streams of its own (the ``bus`` fixture above)."""


class _OwnServer:
    """A nats-server of the test's own, on a free port: killed, paused, started again."""

    def __init__(self, data: Path) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            backend_missing("nats-server", "install it with: apt-get install nats-server")
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._command = [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(data)]
        self._process: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> None:
        self._process = subprocess.Popen(
            self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    async def start(self) -> None:
        """Start it, and return once it accepts connections."""
        self._spawn()
        async with asyncio.timeout(WITHIN):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await CLOCK.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                return

    def pause(self) -> None:
        """SIGSTOP the server, and return once it has stopped.

        kill() returns before a process on another core has stopped: a
        request sent at once could still be answered.
        """
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        stat = Path(f"/proc/{self._process.pid}/stat")
        for _ in range(1000):  # at most a second
            # The state follows the command's name, which is in parentheses.
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
                return
            time.sleep(0.001)  # noqa: TID251 (polling the kernel, bounded)
        raise AssertionError("nats-server did not stop within a second of SIGSTOP")

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()  # also when paused
            self._process.wait()
            self._process = None


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[_OwnServer]:
    server = _OwnServer(tmp_path)
    try:
        yield server
    finally:
        server.kill()


# -- connecting ------------------------------------------------------------------------


async def test_an_unreachable_server_is_an_environment_fault_naming_it() -> None:
    """Nothing listening: open() raises EnvironmentFaultError with the URL."""
    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(EnvironmentFaultError, match=url):
        await JetStreamBus.open(url, connect_timeout=1.0)


async def test_a_password_in_the_url_is_never_in_a_message() -> None:
    """The URL's password is shown as *** where an error names the server, or the URL is refused."""
    port = free_port()
    with pytest.raises(EnvironmentFaultError) as caught:
        await JetStreamBus.open(f"nats://alice:s3cret@127.0.0.1:{port}", connect_timeout=1.0)
    assert f"nats://alice:***@127.0.0.1:{port}" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ConfigError) as refused:
        JetStreamBus("http://alice:s3cret@127.0.0.1:4222")
    assert "s3cret" not in str(refused.value)


async def test_calls_fail_while_the_server_is_down_and_work_again_after(
    own_server: _OwnServer,
) -> None:
    """A server of the test's own killed and started again: EnvironmentFaultError, then recovery."""
    await own_server.start()
    bus = await JetStreamBus.open(own_server.url, timeout=1.0)
    try:
        await bus.publish("outage.t", "before")
        own_server.kill()
        with pytest.raises(EnvironmentFaultError, match=own_server.url):
            await bus.publish("outage.t", "during")
        await own_server.start()
        async with asyncio.timeout(WITHIN):  # the client reconnects by itself
            while True:
                try:
                    await bus.publish("outage.t", "after")
                    break
                except EnvironmentFaultError:
                    await CLOCK.sleep(0.1)
        consumer = await bus.consumer("outage.t", "g", redelivery=Redelivery())
        payloads: list[object] = []
        try:
            # A pull may answer with what the restarted server has at hand:
            # fetch until the last message has come.
            async with asyncio.timeout(WITHIN):
                while "after" not in payloads:
                    deliveries = await consumer.fetch(10, wait=WITHIN)
                    await consumer.ack(deliveries)
                    payloads += [delivery.message.json() for delivery in deliveries]
        finally:
            await consumer.aclose()
        assert payloads[0] == "before"
        assert payloads[-1] == "after"
    finally:
        await bus.aclose()


async def test_closing_the_bus_ends_a_publish_waiting_for_the_server(
    own_server: _OwnServer,
) -> None:
    """A publish the server does not answer raises UsageError when the bus closes, not later."""
    await own_server.start()
    bus = await JetStreamBus.open(own_server.url, timeout=WITHIN)
    try:
        own_server.pause()
        publishing = asyncio.create_task(bus.publish("paused.t", "in flight"))
        done, _ = await asyncio.wait({publishing}, timeout=0.3)
        assert not done  # sent, and waiting for its PubAck
    finally:
        await bus.aclose()
    with pytest.raises(UsageError, match="closed"):
        async with asyncio.timeout(WITHIN / 2):
            await publishing


async def test_connecting_twice_at_once_makes_one_connection(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two connect() calls racing: one client is made, and aclose() closes it."""
    made: list[Any] = []

    class Counted(nats.aio.client.Client):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(nats.aio.client, "Client", Counted)
    bus = JetStreamBus(NATS_URL, prefix=prefix)
    try:
        await asyncio.gather(bus.connect(), bus.connect())
        await bus.publish("race.t", "once")
    finally:
        await bus.aclose()
    assert len(made) == 1
    assert made[0].is_closed


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


async def test_a_max_age_shorter_than_the_duplicate_window_shortens_the_window(
    prefix: str, topic: str
) -> None:
    """JetStream's window may not outlast max_age: a bus keeping messages 30 s knows ids 30 s."""
    async with JetStreamBus(NATS_URL, prefix=prefix, max_age=30) as bus:
        assert not (await bus.publish(topic, 1, message_id="short")).duplicate
        assert (await bus.publish(topic, 2, message_id="short")).duplicate


# -- delivery ------------------------------------------------------------------------------


async def test_an_empty_fetch_is_an_empty_list_after_the_wait(
    bus: JetStreamBus, topic: str
) -> None:
    """No message: fetch returns [] at once with wait=0, and not before the wait otherwise."""
    consumer = await bus.consumer(topic, "idle", redelivery=Redelivery())
    try:
        assert await consumer.fetch(5, wait=0) == []
        started = CLOCK.monotonic()
        assert await consumer.fetch(5, wait=0.5) == []
        assert CLOCK.monotonic() - started >= 0.4  # the pull's expiry, less the clocks' skew
        with pytest.raises(ConfigError, match="limit"):
            await consumer.fetch(0, wait=0)
    finally:
        await consumer.aclose()


async def _hold(consumer: Any, count: int) -> list[Delivery]:
    """Fetch until ``count`` deliveries are held, unanswered."""
    held: list[Delivery] = []
    async with asyncio.timeout(WITHIN):
        while len(held) < count:
            held += await consumer.fetch(count - len(held), wait=WITHIN)
    return held


async def test_a_group_at_its_limit_of_unanswered_deliveries_waits_without_error(
    bus: JetStreamBus, topic: str
) -> None:
    """1,000 deliveries out (MaxAckPending): fetch waits and returns [], then resumes."""
    await bus.publish_batch([outgoing(topic, n) for n in range(1001)])
    consumer = await bus.consumer(topic, "busy", redelivery=Redelivery())
    try:
        held = await _hold(consumer, 1000)
        assert await consumer.fetch(10, wait=0.3) == []
        await consumer.ack(held)
        [last] = await consumer.fetch(10, wait=WITHIN)
        assert last.message.json() == 1000
        await consumer.ack([last])
    finally:
        await consumer.aclose()


async def test_a_fetch_near_the_limit_returns_what_there_is_room_for_at_once(
    bus: JetStreamBus, topic: str
) -> None:
    """Room for 5 more under MaxAckPending: fetch(10) returns those 5, not after its wait."""
    await bus.publish_batch([outgoing(topic, n) for n in range(1010)])
    consumer = await bus.consumer(topic, "nearly", redelivery=Redelivery())
    try:
        held = await _hold(consumer, 995)
        last: list[Delivery] = []
        async with asyncio.timeout(WITHIN):  # the server holds each pull open for 60 s
            while len(last) < 5:
                last += await consumer.fetch(10, wait=60)
        assert [d.message.json() for d in last] == list(range(995, 1000))
        await consumer.ack(held + last)
    finally:
        await consumer.aclose()


async def test_a_delivery_past_its_ack_deadline_is_not_handed_out(prefix: str, topic: str) -> None:
    """A pull left open by a cancelled fetch brings a message; once its deadline passed, it is not
    handed out, while the server delivers it again."""
    clock = FakeClock(autojump_threshold=None)  # receipts' deadlines only; I/O keeps real time
    policy = Redelivery(ack_wait=1.0, max_deliveries=5)
    async with JetStreamBus(NATS_URL, prefix=prefix, clock=clock) as bus:
        first = await bus.consumer(topic, "open-pull", redelivery=policy)
        second = await bus.consumer(topic, "open-pull", redelivery=policy)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await first.fetch(1, wait=WITHIN)  # its pull stays open on the server
            await bus.publish(topic, "m1", message_id="m1")
            [again] = await second.fetch(1, wait=WITHIN)  # after first's ack deadline
            assert (again.message.id, again.message.deliveries) == ("m1", 2)
            clock.advance(policy.ack_wait)
            assert await first.fetch(10, wait=0) == []
            await second.ack([again])
        finally:
            await first.aclose()
            await second.aclose()


async def test_a_fetch_under_way_returns_empty_when_its_member_leaves(
    bus: JetStreamBus, topic: str
) -> None:
    """aclose() during a long fetch: the fetch returns [] at once, and pulls no more."""
    consumer = await bus.consumer(topic, "leaving", redelivery=Redelivery())
    fetching = asyncio.create_task(consumer.fetch(10, wait=60))
    done, _ = await asyncio.wait({fetching}, timeout=0.2)
    assert not done
    await consumer.aclose()
    async with asyncio.timeout(WITHIN):
        assert await fetching == []
    with pytest.raises(UsageError, match="left"):
        await consumer.fetch(1, wait=0)


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


async def test_a_delivery_whose_ack_subject_is_unreadable_is_an_environment_fault(
    bus: JetStreamBus, topic: str
) -> None:
    """A delivery meshkit could never answer is not dropped in silence: the error names it."""
    consumer = await bus.consumer(topic, "odd", redelivery=Redelivery())
    try:
        # Only the server may send a reply subject starting $JS.ACK, so this is handed over
        # where the consumer's inbox hands over what it receives.
        bogus = "$JS.ACK.not.an.ack.subject"
        consumer._delivered(SimpleNamespace(subject="x", reply=bogus, data=b"{}", headers=None))
        with pytest.raises(EnvironmentFaultError, match=r"\$JS\.ACK\.not\.an\.ack\.subject"):
            await consumer.fetch(1, wait=WITHIN)
    finally:
        await consumer.aclose()


async def test_a_member_that_cannot_subscribe_leaves_nothing_subscribed(
    bus: JetStreamBus, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The advisory subscription fails: consumer() raises, and its inbox is unsubscribed."""
    subscribed: list[Any] = []
    unsubscribed: list[Any] = []
    original_subscribe = nats.aio.client.Client.subscribe
    original_unsubscribe = nats.aio.subscription.Subscription.unsubscribe

    async def subscribe(self: Any, subject: str, *args: Any, **kwargs: Any) -> Any:
        if subject.startswith("$JS.EVENT.ADVISORY."):
            raise nats.errors.ConnectionClosedError
        subscription = await original_subscribe(self, subject, *args, **kwargs)
        subscribed.append(subscription)
        return subscription

    async def unsubscribe(self: Any, limit: int = 0) -> None:
        unsubscribed.append(self)
        await original_unsubscribe(self, limit)

    monkeypatch.setattr(nats.aio.client.Client, "subscribe", subscribe)
    monkeypatch.setattr(nats.aio.subscription.Subscription, "unsubscribe", unsubscribe)
    with pytest.raises(EnvironmentFaultError, match="subscribing"):
        await bus.consumer(topic, "unlucky", redelivery=Redelivery())
    assert subscribed
    assert unsubscribed == subscribed


# -- a group deleted on the server ---------------------------------------------------------


async def _delete_group(bus: JetStreamBus) -> None:
    """Delete the stream's one consumer on the server, as an operator would.

    nats-server can fail a deletion with a 500 (err_code 10051, "directory
    not empty") when the consumer's files are being written as it removes
    them; asked again, it finishes the job (or finds nothing left).
    """
    client = await nats.connect(NATS_URL)
    try:
        js = client.jetstream()
        [info] = await js.consumers_info(bus.stream)
        for attempt in range(5):
            try:
                await js.delete_consumer(bus.stream, info.name)
                return
            except nats.js.errors.NotFoundError:
                return  # the failed attempt had removed it after all
            except nats.js.errors.ServerError as error:
                if error.err_code != 10051 or attempt == 4:
                    raise
                await asyncio.sleep(0.1)  # noqa: TID251 (the server's own file race, bounded)
    finally:
        await client.close()


async def test_a_group_deleted_under_a_waiting_fetch_is_not_found(
    bus: JetStreamBus, topic: str
) -> None:
    """The server ends the open pull with 409 Consumer Deleted: fetch raises GroupLostError."""
    consumer = await bus.consumer(topic, "deleted", redelivery=Redelivery())
    try:
        fetching = asyncio.create_task(consumer.fetch(1, wait=60))
        done, _ = await asyncio.wait({fetching}, timeout=0.2)
        assert not done
        await _delete_group(bus)
        with pytest.raises(GroupLostError, match="no longer has group"):
            async with asyncio.timeout(WITHIN):
                await fetching
    finally:
        await consumer.aclose()


async def test_a_group_deleted_between_fetches_is_not_found(prefix: str, topic: str) -> None:
    """A pull to a deleted group goes unanswered; the server then says the group is not there."""
    async with JetStreamBus(NATS_URL, prefix=prefix, timeout=1.0) as bus:
        consumer = await bus.consumer(topic, "deleted", redelivery=Redelivery())
        try:
            await _delete_group(bus)
            with pytest.raises(GroupLostError):
                await consumer.fetch(1, wait=0.2)
        finally:
            await consumer.aclose()


async def test_a_subscription_whose_group_was_deleted_joins_again(
    bus: JetStreamBus, topic: str
) -> None:
    """The subscription recreates the deleted group and handles what is published after."""
    seen: list[Message] = []
    arrived = asyncio.Event()

    async def handle(message: Message) -> None:
        seen.append(message)
        arrived.set()

    async with subscribe(bus, topic, "phoenix", handle, redelivery=Redelivery()):
        await bus.publish(topic, "before")
        async with asyncio.timeout(WITHIN):
            await arrived.wait()
        arrived.clear()
        await _delete_group(bus)
        await bus.publish(topic, "after")
        async with asyncio.timeout(WITHIN):
            while "after" not in [m.json() for m in seen]:
                arrived.clear()
                await arrived.wait()


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


async def test_a_message_at_both_size_limits_becomes_a_dead_letter(
    bus: JetStreamBus, topic: str
) -> None:
    """Payload at MAX_PAYLOAD, headers near MAX_HEADERS, a long error: the letter fits, clipped."""
    payload = b'"' + b"x" * (MAX_PAYLOAD - 2) + b'"'
    headers = {f"x-h{n}": f"{n}" * (MAX_HEADERS // 4 - 8) for n in range(4)}
    await bus.publish(topic, payload, headers=headers, key="k" * 256, message_id="big")
    consumer = await bus.consumer(topic, "big", redelivery=Redelivery(max_deliveries=1))
    try:
        [delivery] = await consumer.fetch(1, wait=WITHIN)
        await consumer.fail(delivery, "🔥" * 5000)  # 4 bytes each: more than the room left
    finally:
        await consumer.aclose()
    [letter] = await bus.dead_letters()
    assert letter.message.payload == payload
    assert letter.message.headers == headers
    assert letter.error.startswith("🔥" * 100)
    assert letter.error.endswith("…")


async def test_a_bad_dead_letter_id_is_an_invalid_argument(bus: JetStreamBus) -> None:
    """Ids are stream sequences, checked before the server is asked."""
    with pytest.raises(InvalidArgumentError, match="id"):
        await bus.purge(["1", "one"])


def test_a_message_the_stream_finds_too_large_is_the_messages_fault() -> None:
    """JetStream's 10054 (over the stream's max_msg_size) refuses the message (payload), which
    an outbox parks; other refusals stay environment faults (answers as NATS 2.9 sends them)."""
    too_large = b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"},"stream":"S","seq":0}'  # noqa: E501
    other = b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}'  # noqa: E501
    with pytest.raises(MessageRefusedError, match="payload"):
        read_pub_ack(
            SimpleNamespace(headers=None, data=too_large), "x.msg.t", where="nats://h", stream="S"
        )
    with pytest.raises(EnvironmentFaultError, match="maximum messages"):
        read_pub_ack(
            SimpleNamespace(headers=None, data=other), "x.msg.t", where="nats://h", stream="S"
        )
