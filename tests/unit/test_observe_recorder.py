"""The proxy's span recorder: sampling, batching, drop counting, and the OTLP it sends."""

import json
import random
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
from prometheus_client import CollectorRegistry, generate_latest

from meshkit.errors import ConfigError, ConnectError
from meshkit.observe import (
    CLIENT,
    SERVER,
    Exporter,
    LogRecord,
    Recorder,
    RecorderCollector,
    RecorderLimits,
    Sampler,
    SpanRecord,
)
from meshkit.testing import FakeClock


@given(
    ratio=st.floats(min_value=0.0, max_value=1.0),
    trace_id=st.integers(min_value=1, max_value=(1 << 128) - 1),
)
# On either side of the bound, and the largest id at ratios 1 and 0.
@example(ratio=0.5, trace_id=(1 << 63) - 1)
@example(ratio=0.5, trace_id=1 << 63)
@example(ratio=1.0, trace_id=(1 << 128) - 1)
@example(ratio=0.0, trace_id=1 << 64)
def test_the_ratio_decides_as_opentelemetry_s_trace_id_ratio_sampler(
    ratio: float, trace_id: int
) -> None:
    """For any ratio and trace id, the decision is the SDK's TraceIdRatioBased decision,
    read off the number or off its hex as a new trace's id is."""
    theirs = TraceIdRatioBased(ratio).should_sample(None, trace_id, "span").decision
    sampler = Sampler(ratio)
    assert sampler.sampled(trace_id) == (theirs == Decision.RECORD_AND_SAMPLE)
    assert ((b"%032x" % trace_id)[16:] < sampler.hex_bound) == sampler.sampled(trace_id)


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_a_ratio_outside_0_to_1_is_refused(ratio: float) -> None:
    """The ratio is a share: anything else is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="ratio"):
        Sampler(ratio)


def test_new_traces_are_sampled_near_the_ratio() -> None:
    """A new trace is sampled by its id's rule: about a ratio's share; 0 none and 1 all."""
    for ratio, low, high in ((0.0, 0, 0), (0.1, 800, 1200), (1.0, 10_000, 10_000)):
        recorder = Recorder(ratio=ratio, rng=random.Random(7))
        sampled = 0
        for _ in range(10_000):
            trace_id, _, decision = recorder.new_trace()
            assert decision == Sampler(ratio).sampled(int(trace_id, 16))
            sampled += decision
        assert low <= sampled <= high


def _span(number: int) -> SpanRecord:
    return SpanRecord(
        trace_id=b"%032x" % (number + 1),
        span_id=b"%016x" % (number + 1),
        parent_id=b"",
        name="GET /x",
        kind=SERVER,
        start=1.0,
        end=1.5,
        attributes=(("http.response.status_code", 200),),
    )


def test_a_full_queue_drops_and_counts() -> None:
    """Past max_queue, records are not kept but counted as dropped."""
    recorder = Recorder(ratio=1.0, limits=RecorderLimits(max_queue=3, max_batch=2))
    for number in range(5):
        recorder.span(_span(number))
    assert len(recorder.spans) == 3
    assert recorder.statistics().dropped == {"spans": 2, "logs": 0}
    assert [span.span_id for span in recorder.take_spans()] == [b"%016x" % 1, b"%016x" % 2]
    assert len(recorder.spans) == 1


class FakeSink:
    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, object]]] = []
        self.failing = False

    async def send(self, signal: str, body: bytes) -> None:
        if self.failing:
            raise ConnectError("nobody listens")
        self.bodies.append((signal, json.loads(body)))


def test_the_exporter_sends_full_batches_at_once_and_the_rest_each_interval() -> None:
    """A full batch leaves without waiting; the remainder leaves at the interval."""
    clock = FakeClock(autojump_threshold=None)
    recorder = Recorder(ratio=1.0, limits=RecorderLimits(max_batch=4, interval=1.0))
    sink = FakeSink()

    async def main() -> None:
        exporter = Exporter(recorder, sink, resource={"service.name": "gateway"}, clock=clock)
        exporter.start()
        for number in range(6):
            recorder.span(_span(number))
        await _turns(clock)
        assert [len(_spans(body)) for _, body in sink.bodies] == [4, 2]  # drained while awake
        recorder.span(_span(7))
        await _turns(clock)
        assert len(sink.bodies) == 2  # one span waits for the interval
        clock.advance(1.0)
        await _turns(clock)
        assert len(sink.bodies) == 3
        await exporter.aclose()

    clock.run(main())
    assert recorder.statistics().exported == {"spans": 7, "logs": 0}


async def _turns(clock: FakeClock) -> None:
    """Let the exporter's task run a few loop turns without moving the clock."""
    for _ in range(10):
        await clock.sleep(0)


def _spans(body: dict[str, object]) -> list[dict[str, object]]:
    return body["resourceSpans"][0]["scopeSpans"][0]["spans"]  # type: ignore[index,no-any-return]


def test_batches_the_sink_refuses_are_counted_as_failed() -> None:
    """A destination that is down costs the batch, counted; the next batch goes when it is back."""
    clock = FakeClock()
    recorder = Recorder(ratio=1.0)
    sink = FakeSink()

    async def main() -> None:
        exporter = Exporter(recorder, sink, resource={"service.name": "gateway"}, clock=clock)
        sink.failing = True
        recorder.span(_span(1))
        await exporter.flush()
        sink.failing = False
        recorder.span(_span(2))
        await exporter.flush()

    clock.run(main())
    statistics = recorder.statistics()
    assert (statistics.failed["spans"], statistics.exported["spans"]) == (1, 1)
    registry = CollectorRegistry()
    registry.register(RecorderCollector(recorder, "meshkit_gateway"))
    text = generate_latest(registry).decode()
    assert 'meshkit_gateway_telemetry_records_total{outcome="failed",signal="spans"} 1.0' in text


def test_spans_and_logs_are_sent_in_the_otlp_json_mapping() -> None:
    """Hex ids, lowerCamelCase names, 64-bit integers as strings, Unix nanoseconds."""
    clock = FakeClock(start=100.0, wall=1_700_000_000.0)
    recorder = Recorder(ratio=1.0)
    sink = FakeSink()
    recorder.span(
        SpanRecord(
            trace_id=b"a" * 32,
            span_id=b"b" * 16,
            parent_id=b"c" * 16,
            name='GET /orders/{id} "quoted"',
            kind=CLIENT,
            start=100.25,
            end=100.5,
            attributes=(("http.response.status_code", 503), ("url.path", "/orders/1")),
            error="503",
        )
    )
    recorder.log(
        LogRecord(
            time=100.5,
            severity=9,
            body="GET /orders/1 200",
            trace_id="a" * 32,
            span_id="b" * 16,
            attributes=(("http.request.method", "GET"),),
        )
    )

    async def main() -> None:
        await Exporter(recorder, sink, resource={"service.name": "gateway"}, clock=clock).flush()

    clock.run(main())
    (_, traces), (_, logs) = sink.bodies
    resource = traces["resourceSpans"][0]["resource"]  # type: ignore[index]
    assert resource == {
        "attributes": [{"key": "service.name", "value": {"stringValue": "gateway"}}]
    }
    (span,) = _spans(traces)
    assert span == {
        "traceId": "a" * 32,
        "spanId": "b" * 16,
        "parentSpanId": "c" * 16,
        "name": 'GET /orders/{id} "quoted"',
        "kind": 3,
        "startTimeUnixNano": str(1_700_000_000_250_000_000),
        "endTimeUnixNano": str(1_700_000_000_500_000_000),
        "attributes": [
            {"key": "http.response.status_code", "value": {"intValue": "503"}},
            {"key": "url.path", "value": {"stringValue": "/orders/1"}},
            {"key": "error.type", "value": {"stringValue": "503"}},
        ],
        "status": {"code": 2},
    }
    (record,) = logs["resourceLogs"][0]["scopeLogs"][0]["logRecords"]  # type: ignore[index]
    assert record["traceId"] == "a" * 32
    assert record["severityNumber"] == 9
    assert record["body"] == {"stringValue": "GET /orders/1 200"}
    assert record["timeUnixNano"] == str(1_700_000_000_500_000_000)


def test_a_batch_refused_for_a_moment_is_sent_again() -> None:
    """A busy destination (503, a refused connection) gets the batch again after a pause."""
    clock = FakeClock()
    recorder = Recorder(ratio=1.0)
    sink = FakeSink()
    refusals = [True, True]  # the first two sends fail, the third is taken

    async def main() -> None:
        exporter = Exporter(recorder, sink, resource={"service.name": "gateway"}, clock=clock)
        original = sink.send

        async def flaky(signal: str, body: bytes) -> None:
            sink.failing = bool(refusals and refusals.pop())
            await original(signal, body)

        sink.send = flaky  # type: ignore[method-assign]
        recorder.span(_span(1))
        await exporter.flush()

    clock.run(main())
    statistics = recorder.statistics()
    assert (statistics.failed["spans"], statistics.exported["spans"]) == (0, 1)
    assert len(sink.bodies) == 1


def test_ids_are_never_handed_out_twice_across_refills() -> None:
    """Ids are cut from random hex made for many at a time: across many refills,
    trace and span ids mixed, every one is new, well formed and not all zeros."""
    recorder = Recorder(ratio=0.5, rng=random.Random(3))
    seen: set[bytes] = set()
    for number in range(3_000):
        if number % 3:
            trace_id, span_id, _ = recorder.new_trace()
            found = [trace_id, span_id]
        else:
            found = [recorder.new_span_id()]
        for one in found:
            assert re.fullmatch(rb"[0-9a-f]{16}|[0-9a-f]{32}", one)
            assert one.strip(b"0")
            assert one not in seen
            seen.add(one)
