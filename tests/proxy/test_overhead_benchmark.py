"""The proxy overhead benchmark's short form (benchmarks/proxy_overhead.py): the real command as a
user runs it (live lint and the monitor on, a monitor watching), real processes, a few sessions.
Asserted: the timed work was right (every event both ways arrived, in order, byte for byte) and
the figures were printed; never the figures themselves (timing belongs to the benchmark)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_checks_every_event_and_prints_the_figures() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "proxy_overhead.py"), "--sessions", "3",
                          "--seconds", "1", "--watch"], capture_output=True, text=True, timeout=90,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = run.stdout
    assert "every event arrived, in order, unchanged: 150 up and 150 down per mode" in out
    assert "live lint on, monitor on and watched (as inspect does)" in out
    assert "added by the proxy, up" in out and "the proxy's CPU" in out
