"""Helpers for testing meshkit services and backends.

``FakeClock`` drives time by hand or jumps it ahead when every task waits, so
no test sleeps to wait for a timeout.
"""

from meshkit.testing._clock import FakeClock

__all__ = ["FakeClock"]
