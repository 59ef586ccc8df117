"""What the benchmarks share: the shipped recordings and their background noise.

(``tests/conftest.py`` has the same two helpers for the tests; benchmarks do not import tests.)
"""

from __future__ import annotations

from pathlib import Path

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
