"""What the benchmarks share: the shipped recordings and their background noise; what /proc says
about CPU (our processes', and the load that other work puts on the machine); the ramp that finds
a capacity ceiling; and for the ``talk`` benchmarks a backend process beside the PulseAudio rig.

(``tests/conftest.py`` has the same two recording helpers for the tests; the rig is the tests'
own ``tests/audio_rig.py``, imported only by :func:`backend_and_rig`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
RATE = 24_000
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def read_recording(stem: str) -> np.ndarray:
    """A shipped recording as int16 mono 24 kHz samples."""
    pcm, rate = soundfile.read(ROOT / "recordings" / f"{stem}.wav", dtype="int16")
    assert rate == RATE and pcm.ndim == 1, f"{stem}.wav is not 24 kHz mono"
    return pcm


def room_noise(ms: int) -> np.ndarray:
    """``ms`` of the recordings' own background noise: their first 250 ms, tiled."""
    lead = read_recording("hello_there")[: 250 * 24]
    return np.tile(lead, -(-ms // 250))[: ms * 24]


# ------------------------------------------------------------------------------------ /proc


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a process (all its threads), or of its thread ``tid`` alone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def rss_mib(pid: int | str = "self") -> float:
    """A process's resident memory (VmRSS), in MiB; NaN when it is gone or reports none."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children...), from /proc/PID/task/*/children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                todo.append(child)
    return found


def cpu_seconds_or_zero(pid: int, tid: int | None = None) -> float:
    """:func:`cpu_seconds`, 0 for a process that is gone."""
    try:
        return cpu_seconds(pid, tid)
    except OSError:
        return 0.0


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores; steal (the hypervisor running someone else) counts as busy."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def foreign_cores(ours: float, machine_a: tuple[int, int], machine_b: tuple[int, int]) -> float:
    """Cores busy with something other than our processes (``ours`` in cores) between two samples."""
    busy, total = machine_b[0] - machine_a[0], machine_b[1] - machine_a[1]
    return max(0.0, busy / max(1, total) * NCPU - ours)


def wait_quiet(limit: float, patience: float) -> float:
    """Wait (at most ``patience`` s) for a half second with under ``limit`` cores busy; returns that load.
    Call it while the benchmark's own processes idle: all the load it sees counts as other work's."""
    deadline = time.monotonic() + patience
    while True:
        a = machine_ticks()
        time.sleep(0.5)
        load = foreign_cores(0.0, a, machine_ticks())
        if load < limit or time.monotonic() >= deadline:
            return load


# ------------------------------------------------------------------------------------ capacity ramp


def ramp(steps: list[int], resolution: int) -> Generator[int, bool | None, int]:
    """The N values of a capacity ramp: up the steps to the first failure, then bisect down to
    ``resolution`` between the last N that held and it. Send each step's verdict; the generator's
    return value is the largest N that held."""
    passed, failed = 0, None
    for n in steps:
        if (yield n):
            passed = n
        else:
            failed = n
            break
    if failed is None:
        return passed
    while failed - passed > resolution:
        mid = (passed + failed) // 2
        if (yield mid):
            passed = mid
        else:
            failed = mid
    return passed


# ------------------------------------------------------------------------------------ talk


@contextlib.contextmanager
def backend_and_rig() -> Iterator[tuple[str, Any]]:
    """A ``voicerelay backend`` process (pace 10) on a free loopback port and the PulseAudio rig,
    with the rig's environment set for PortAudio; yields the backend's URL and the rig. Exits with
    a line saying what to install when PulseAudio is missing."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.audio_rig import AudioRig, available

    if not available():
        raise SystemExit("needs PulseAudio: apt-get install pulseaudio pulseaudio-utils")
    os.environ.pop("OPENAI_API_KEY", None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = subprocess.Popen([sys.executable, "-m", "voicerelay", "backend", "--port", str(port), "--pace", "10"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert backend.stderr is not None
        backend.stderr.readline()  # its banner: listening
        with tempfile.TemporaryDirectory(prefix="vr-bench-") as folder, AudioRig(Path(folder)) as rig:
            os.environ.update(rig.env())  # before PortAudio starts: it reads them once
            yield f"ws://127.0.0.1:{port}/v1/realtime", rig
    finally:
        backend.send_signal(signal.SIGINT)
        backend.wait(10)
        if backend.stderr is not None:
            backend.stderr.close()


async def until_live(session: asyncio.Task[Any], probe: Any) -> Any:
    """Wait until the ``talk`` session (``session``, its task) that ``probe`` attached to sends live
    audio; return its ``Talk``. A session that ended first raises its failure here."""
    while probe.talk is None or not probe.talk.live_audio:
        await asyncio.sleep(0.05)
        if session.done():
            await session
    return probe.talk
