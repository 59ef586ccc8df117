"""What the benchmarks share: the shipped recordings and their background noise, and for the
``talk`` benchmarks a backend process beside the PulseAudio rig.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
RATE = 24_000


def read_recording(stem: str) -> np.ndarray:
    """A shipped recording as int16 mono 24 kHz samples."""
    pcm, rate = soundfile.read(ROOT / "recordings" / f"{stem}.wav", dtype="int16")
    assert rate == RATE and pcm.ndim == 1, f"{stem}.wav is not 24 kHz mono"
    return pcm


def room_noise(ms: int) -> np.ndarray:
    """``ms`` of the recordings' own background noise: their first 250 ms, tiled."""
    lead = read_recording("hello_there")[: 250 * 24]
    return np.tile(lead, -(-ms // 250))[: ms * 24]


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
