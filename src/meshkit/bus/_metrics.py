"""The bus's Prometheus metrics, read at a scrape from the parts' cheap ``statistics``.

Two sides, two prefixes, so that one name never means two things:

- ``meshkit_bus_*``, in each process that consumes or publishes: what its
  subscriptions fetched, acked, failed and dead-lettered, per topic and
  group, and what its outbox relays published (``SubscriptionCollector``);
- ``meshkit_broker_*``, in the control plane, whose embedded broker holds
  the groups: messages appended per topic, and each group's lag and
  pending messages, which only the broker can tell cheaply
  (``BrokerCollector``).

Nothing is counted on the message path beyond the integers the parts keep
anyway: a collector turns them into metric families when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshkit.bus._broker import EmbeddedBroker
from meshkit.bus._outbox import OutboxRelay
from meshkit.bus._subscription import Subscription

__all__ = ["BrokerCollector", "SubscriptionCollector"]

_SUBSCRIPTION_COUNTS = (
    ("delivered", "meshkit_bus_delivered_messages", "Messages fetched for a handler"),
    ("acked", "meshkit_bus_acknowledged_messages", "Messages handled and acknowledged"),
    ("failed", "meshkit_bus_failed_messages", "Handler failures (each to be delivered again)"),
    (
        "dead_lettered",
        "meshkit_bus_dead_lettered_messages",
        "Handler failures on a message's last delivery: it went to the dead-letter queue",
    ),
)


class SubscriptionCollector(Collector):
    """The bus metrics of one process: its subscriptions' and outbox relays' counts."""

    def __init__(
        self,
        subscriptions: Callable[[], Sequence[Subscription]],
        relays: Callable[[], Sequence[OutboxRelay]] = tuple,
    ) -> None:
        self._subscriptions = subscriptions
        self._relays = relays

    def collect(self) -> Iterator[Metric]:
        members = self._subscriptions()
        for field, name, documentation in _SUBSCRIPTION_COUNTS:
            family = CounterMetricFamily(
                name, f"{documentation}, by topic and group.", labels=["topic", "group"]
            )
            for member in members:
                family.add_metric([member.topic, member.group], getattr(member.statistics, field))
            yield family
        running = GaugeMetricFamily(
            "meshkit_bus_handlers_running",
            "Handlers running now, by topic and group.",
            labels=["topic", "group"],
        )
        for member in members:
            running.add_metric([member.topic, member.group], member.statistics.running)
        yield running
        yield from self._relay_families(self._relays())

    @staticmethod
    def _relay_families(relays: Sequence[OutboxRelay]) -> Iterator[Metric]:
        published = sum(relay.statistics.published for relay in relays)
        parked = sum(relay.statistics.parked for relay in relays)
        failures = sum(relay.statistics.failures for relay in relays)
        yield CounterMetricFamily(
            "meshkit_bus_published_messages",
            "Messages the outbox relays published (the bus took them).",
            value=published,
        )
        yield CounterMetricFamily(
            "meshkit_outbox_parked_messages",
            "Outbox events the bus refused for good, parked in the outbox.",
            value=parked,
        )
        yield CounterMetricFamily(
            "meshkit_outbox_failed_passes",
            "Relay passes that failed (the bus or the database unreachable).",
            value=failures,
        )


class BrokerCollector(Collector):
    """The embedded broker's metrics: appends per topic, each group's lag and pending."""

    def __init__(self, broker: Callable[[], EmbeddedBroker | None]) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        broker = self._broker()
        published = CounterMetricFamily(
            "meshkit_broker_published_messages",
            "Messages appended to the broker's log, by topic (repeats of an id not counted).",
            labels=["topic"],
        )
        lag = GaugeMetricFamily(
            "meshkit_broker_consumer_lag_messages",
            "Messages of the topic the group has not been handed yet, by topic and group.",
            labels=["topic", "group"],
        )
        pending = GaugeMetricFamily(
            "meshkit_broker_pending_messages",
            "Messages handed to a group and neither acked nor dead yet, by topic and group.",
            labels=["topic", "group"],
        )
        dead = CounterMetricFamily(
            "meshkit_broker_dead_lettered_messages",
            "Messages that became dead letters, by topic and group.",
            labels=["topic", "group"],
        )
        if broker is not None:
            for topic, count in sorted(broker.counts.published.items()):
                published.add_metric([topic], count)
            for (topic, group), count in sorted(broker.counts.dead_lettered.items()):
                dead.add_metric([topic, group], count)
            for info in broker.groups():
                if info.lag is not None:
                    lag.add_metric([info.topic, info.group], info.lag)
                pending.add_metric([info.topic, info.group], info.pending)
        yield from (published, lag, pending, dead)
