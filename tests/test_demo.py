import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_shows_each_policy_deciding() -> None:
    """The `make demo` program runs and prints what the policies decided."""
    result = subprocess.run(
        [sys.executable, ROOT / "examples" / "policies.py"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Token bucket: a burst of 5 and 2/s over 3.5 s admits 11 of 14.
    assert "11 admitted in 3.5 s" in out
    # The breaker opens, probes, backs off and finally closes again.
    assert "closed -> open  (3 consecutive failures" in out
    assert "half_open -> open  (a half-open probe failed" in out
    assert "half_open -> closed  (2 probes succeeded)" in out
    assert "state at t=12.5: closed" in out
    # The retry budget lets 3 of 12 failing requests retry.
    assert "stopped (budget_exhausted): 9" in out
    # A canary at weight 1 of 10 gets 2 of 20 picks, spread out.
    assert "  s s s s s C s s s s s s s s s C s s s s\n" in out
    # The crashed instance's lease expires 5 s after its last renewal.
    assert "t=11.0  expired orders/orders-1" in out
