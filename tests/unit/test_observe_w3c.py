"""W3C Trace Context and Baggage: what is accepted, what restarts a trace, what is dropped."""

import pytest

from meshkit.observe import (
    format_baggage,
    format_traceparent,
    parse_baggage,
    parse_traceparent,
    parse_traceparents,
    parse_tracestate,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01".encode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (VALID, (TRACE.encode(), PARENT.encode(), True)),
        (f"00-{TRACE}-{PARENT}-00".encode(), (TRACE.encode(), PARENT.encode(), False)),
        (f"00-{TRACE}-{PARENT}-03".encode(), (TRACE.encode(), PARENT.encode(), True)),
        # A later version: its first four fields, whatever it appends after a dash.
        (f"01-{TRACE}-{PARENT}-01".encode(), (TRACE.encode(), PARENT.encode(), True)),
        (
            f"cc-{TRACE}-{PARENT}-01-what-the-future-says".encode(),
            (TRACE.encode(), PARENT.encode(), True),
        ),
        (f"cc-{TRACE}-{PARENT}-01what".encode(), None),  # appended without a dash
        (f"ff-{TRACE}-{PARENT}-01".encode(), None),  # version ff is invalid
        (f"00-{TRACE}-{PARENT}-01-extra".encode(), None),  # version 00 with trailing data
        (f"00-{TRACE.upper()}-{PARENT}-01".encode(), None),  # upper-case hex
        (f"00-{TRACE}-{PARENT.upper()}-01".encode(), None),
        (f"0A-{TRACE}-{PARENT}-01".encode(), None),
        (f"00-{'0' * 32}-{PARENT}-01".encode(), None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01".encode(), None),  # all-zero parent id
        (f"00-{TRACE[:-1]}-{PARENT}-01".encode(), None),  # wrong lengths
        (f"00-{TRACE}-{PARENT}0-01".encode(), None),
        (f"00-{TRACE}-{PARENT}-1".encode(), None),
        (f"00-{TRACE[:-1]}g-{PARENT}-01".encode(), None),  # not hex
        (f"00_{TRACE}_{PARENT}_01".encode(), None),
        (b"", None),
        (b"garbage", None),
    ],
)
def test_traceparent_is_read_as_the_recommendation_says(
    value: bytes, expected: tuple[bytes, bytes, bool] | None
) -> None:
    """Valid values give their ids and sampled flag; every invalid one gives None."""
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(
    ("values", "valid"),
    [
        ([], False),
        ([VALID], True),
        ([VALID, VALID], True),  # repeated, agreeing
        ([VALID, f"00-{TRACE}-{'1' * 16}-01".encode()], False),  # several that disagree
    ],
)
def test_several_traceparent_fields_count_only_when_they_agree(
    values: list[bytes], valid: bool
) -> None:
    """Fields that disagree make the context invalid, as one invalid field does."""
    assert (parse_traceparents(values) is not None) is valid


def test_traceparent_is_formatted_as_version_00() -> None:
    """The value names the span given as the parent, with the sampled flag."""
    assert format_traceparent(TRACE.encode(), PARENT.encode(), sampled=True) == VALID
    assert format_traceparent(TRACE.encode(), PARENT.encode(), sampled=False)[-2:] == b"00"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b"congo=t61rcWkgMzE"], b"congo=t61rcWkgMzE"),
        ([b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"], b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ([b"rojo=1", b"congo=2"], b"rojo=1,congo=2"),  # several fields make one list
        ([b"rojo=1 ,, \tcongo=2"], b"rojo=1,congo=2"),  # empty members and whitespace
        ([b"tenant@vendor=x"], b"tenant@vendor=x"),  # multi-tenant key
        ([b"rojo=1,rojo=2"], None),  # duplicate key
        ([b"rojo=1", b"rojo=2"], None),  # duplicate across fields
        ([b"Rojo=1"], None),  # upper-case key
        ([b"1rojo=1"], None),  # simple key starting with a digit
        ([b"rojo"], None),  # no value
        ([b"rojo=a=b"], None),  # '=' in the value
        ([b"rojo=a\x01"], None),  # a control character in the value
        ([b"rojo=a b"], b"rojo=a b"),  # inner spaces are allowed
        ([",".join(f"k{i}=v" for i in range(33)).encode()], None),  # 33 members
        (
            [",".join(f"k{i}=v" for i in range(32)).encode()],
            ",".join(f"k{i}=v" for i in range(32)).encode(),
        ),
        ([], None),
        ([b" , "], None),
    ],
)
def test_tracestate_is_kept_whole_or_dropped(values: list[bytes], expected: bytes | None) -> None:
    """A valid list passes on as one value; a broken one is dropped whole."""
    assert parse_tracestate(values) == expected


def test_baggage_round_trips_with_percent_encoding() -> None:
    """Entries are read with properties left out, values decoded; formatting encodes them."""
    assert parse_baggage(b"userId=alice, serverNode=DF%2028;prop=1,isProduction=false") == [
        ("userId", "alice"),
        ("serverNode", "DF 28"),
        ("isProduction", "false"),
    ]
    assert format_baggage([("a", "x y,z")]) == b"a=x%20y%2Cz"
    assert parse_baggage(format_baggage([("a", "x y,z")])) == [("a", "x y,z")]


@pytest.mark.parametrize(
    "value",
    [
        b"novalue",
        b"=x",
        b"bad key=1",
        b"k=" + b"v" * 8200,
        b",".join(b"k%d=1" % i for i in range(65)),
    ],
)
def test_malformed_baggage_is_refused(value: bytes) -> None:
    """Malformed entries, or more than the recommendation's limits, give None."""
    assert parse_baggage(value) is None
