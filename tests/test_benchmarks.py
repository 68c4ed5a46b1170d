import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_policy_benchmark_writes_its_rows_as_json(tmp_path: Path) -> None:
    """`python -m benchmarks.policies --quick --json F` runs and writes well-formed rows."""
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.policies", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert len(rows) >= 10
    for row in rows:
        assert isinstance(row["name"], str)
        assert row["value"] > 0
        assert row["unit"] == "ns"
        if "reference" in row:
            assert row["reference"] > 0
            assert abs(row["ratio"] - row["value"] / row["reference"]) < 1e-9
    peers = {row.get("reference_name") for row in rows}
    assert {"limits moving window", "pybreaker", "tenacity"} <= peers
