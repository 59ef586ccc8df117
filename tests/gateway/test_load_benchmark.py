"""The load benchmark's short form (benchmarks/gateway_load.py --paired): real processes, real sockets.

One side-by-side round of three browser-like sessions per server: ``voicerelay serve``'s gateway
and the bare python-socketio -> websockets relay, each in its own process in front of the same
echo upstream, each with its own process of python-socketio clients streaming numbered chunks in
real time. What is asserted is that the work the benchmark times was done (every session started,
every chunk came back to its own client, no error), and that its figures are there to read; never
the figures themselves, which are the machine's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
BENCHMARK = ROOT / "benchmarks" / "gateway_load.py"
N, DURATION_S, CHUNK_MS = 3, 2.0, 40


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, str(BENCHMARK), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("load") / "report.json"
    run = _run("--paired", "1", "--steps", str(N), "--duration", str(DURATION_S), "--quiet-wait", "0",
               "--json", str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())["paired"]
    report["printed"] = run.stdout
    return report


@pytest.mark.timeout(150)
def test_a_side_by_side_round_relays_every_chunk_through_both_servers(paired: dict[str, Any]) -> None:
    (round_,) = paired["rounds"]
    assert round_["n"] == N
    chunks = N * int(DURATION_S * 1000 / CHUNK_MS)
    for system in ("bare", "gateway"):
        r = round_[system]
        assert r["started"] == N, (system, r["failures"], paired["printed"])
        assert r["sent"] == chunks, (system, r)
        assert r["lost"] == 0 and r["unexpected"] == 0, (system, r)  # each echo reached its own client
        assert r["error_count"] == 0, (system, r["errors"])
        assert r["complete"], (system, r)
        assert r["us_per_chunk"] > 0 and r["cpu_per"] > 0, (system, r)
    assert round_["counted"]
    assert math.isfinite(round_["ratio"]) and round_["ratio"] > 0
    assert "side by side" in paired["printed"] and f"{N:>5}{1:>6}" in paired["printed"]


@pytest.mark.timeout(150)
def test_one_round_is_too_few_for_a_verdict_and_says_so(paired: dict[str, Any]) -> None:
    assert paired["verdict"] is None and paired["mean"] is None
    assert "too few complete rounds to say" in paired["printed"]
    assert "child processes left: 0" in paired["printed"]


@pytest.mark.parametrize(("args", "says"), [
    (["--paired", "2", "--profile", "4"], "--paired and --profile are separate runs"),
    (["--paired", "2", "--systems", "gateway"], "--paired runs both systems"),
    (["--paired", "-1"], "--paired takes a number of rounds"),
    (["--steps", "0"], "no step in --steps is between 1 and --max-sessions"),
])
def test_unusable_options_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    run = _run(*args, timeout=60)
    assert run.returncode == 2, run.stderr
    assert says in run.stderr.splitlines()[-1]
    assert "Traceback" not in run.stderr
