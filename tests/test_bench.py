"""The benchmark harness itself runs, checks its invariants and writes its report (the
scenarios of the quick suite that need neither wrk nor a served holdsvc; the full run's
numbers live in bench/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg_server import PgServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_quick_harness_runs_checks_invariants_and_reports(
    tmp_path: Path, pg_server: PgServer
) -> None:
    out = tmp_path / "latest.json"
    only = ["store_holds", "peers", "contention", "memory"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", *only, "--out", str(out),
         "--pg-dsn", pg_server.url],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["command"] == "python -m bench --quick"
    assert report["invariant_violations"] == 0 and report["failed"] == []
    runs = report["scenarios"]
    assert list(runs) == only
    store = runs["store_holds"]
    assert store["holds_per_s"] > 0 and store["raw_per_s"] > 0
    assert store["ratio_vs_raw"] == round(store["holds_per_s"] / store["raw_per_s"], 3)
    assert 0 < store["hold_p50_ms"] <= store["hold_p99_ms"]
    peers = runs["peers"]
    for peer in ("holdsvc", "sqlite"):
        assert peers[peer]["wrong_holders"] == 0 and peers[peer]["attempts_per_s"] > 0
    # The tests' own PostgreSQL, never the machine's.
    assert peers["postgres"]["wrong_holders"] == 0, peers["postgres"]
    contention = runs["contention"]
    assert contention["double_held"] == 0
    assert contention["holds_per_s"] > 0 and contention["refusals_per_s"] > 0
    assert 0 < runs["memory"]["bytes_per_held_seat"] < 1000
    ceiling = store["ratio_vs_script_ceiling"]
    assert ceiling == round(store["holds_per_s"] / store["script_ceiling_per_s"], 3)
    assert report["targets"]["store_holds.ratio_vs_script_ceiling"].startswith(str(ceiling))
    assert report["targets"]["http_holds.ratio_vs_noop"] == "not measured"
    assert "invariant violations: 0" in proc.stdout


def test_an_unknown_scenario_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "invalid choice: 'nope'" in proc.stderr
