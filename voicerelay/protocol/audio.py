"""PCM16 / base64 helpers for 24 kHz mono audio, vectorised with numpy. No I/O.

The Realtime protocol carries audio as base64 of signed 16-bit little-endian mono PCM at
24 kHz: 24 samples, 48 bytes per millisecond.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

SAMPLE_RATE = 24_000
BYTES_PER_SAMPLE = 2
BYTES_PER_MS = SAMPLE_RATE * BYTES_PER_SAMPLE // 1000  # 48

_PCM16 = np.dtype("<i2")


class AudioFormatError(ValueError):
    """Audio that is not valid base64 PCM16. ``code`` is the error code to report."""

    def __init__(self, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.code = code


def decode_b64(data: str) -> bytes:
    """Strictly decode base64 PCM16; raise :class:`AudioFormatError` on bad input or odd length."""
    if not isinstance(data, str):
        raise AudioFormatError(f"Invalid type for audio: expected a base64 string, got {type(data).__name__}.")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioFormatError(f"Invalid 'audio'. Expected base64-encoded audio bytes ({exc}).") from exc
    if len(raw) % BYTES_PER_SAMPLE:
        raise AudioFormatError(
            f"Invalid 'audio': {len(raw)} bytes is not a whole number of PCM16 samples (odd byte count)."
        )
    return raw


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64_nbytes(data: str) -> int:
    """The byte count of base64 ``data``, checked as strictly as :func:`decode_b64` checks it,
    without decoding it (a relay forwards the base64 as it is; this is several times cheaper).

    Raises :class:`AudioFormatError` on what :func:`decode_b64` refuses as base64: a character
    outside the standard alphabet (whitespace included), a length that is not a multiple of 4, or
    padding other than one or two ``=`` at the very end. It is stricter in one case: ``=`` after a
    complete group (``"AAAA="``), which Python's decoder lets through but a browser's ``atob``
    refuses, is refused here too, since what is checked here is forwarded as it is.
    """
    if not isinstance(data, str):
        raise AudioFormatError(f"Invalid type for audio: expected a base64 string, got {type(data).__name__}.")
    try:
        raw = data.encode("ascii")
    except UnicodeEncodeError:
        raise AudioFormatError("Invalid 'audio'. Expected base64-encoded audio bytes (a non-ASCII character).") from None
    rest = raw.translate(None, _B64_ALPHABET)  # what is not in the alphabet: only the final padding may be
    if len(raw) % 4 or (rest and (rest not in (b"=", b"==") or not raw.endswith(rest))):
        raise AudioFormatError("Invalid 'audio'. Expected base64-encoded audio bytes (not valid base64).")
    return len(raw) // 4 * 3 - len(rest)


def b64_pcm16_nbytes(data: str) -> int:
    """:func:`b64_nbytes`, and an odd byte count is an :class:`AudioFormatError` too, as in :func:`decode_b64`."""
    nbytes = b64_nbytes(data)
    if nbytes % BYTES_PER_SAMPLE:
        raise AudioFormatError(
            f"Invalid 'audio': {nbytes} bytes is not a whole number of PCM16 samples (odd byte count)."
        )
    return nbytes


def pcm16_to_b64(pcm: np.ndarray | bytes | bytearray | memoryview) -> str:
    """int16 samples (or raw PCM16 bytes) -> base64 text."""
    if isinstance(pcm, np.ndarray):
        pcm = np.ascontiguousarray(pcm, dtype=_PCM16).tobytes()
    return base64.b64encode(pcm).decode("ascii")


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16, clipped (no wrap-around on overs)."""
    scaled = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.rint(scaled).astype(_PCM16)


def rms_dbfs(pcm: np.ndarray) -> float:
    """Level in dB relative to full scale; ``-inf`` for empty or digital silence."""
    if pcm.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(pcm.astype(np.float64)))))
    return 20.0 * np.log10(rms / 32768.0) if rms > 0 else float("-inf")


def ms_to_bytes(ms: float) -> int:
    """Bytes of 24 kHz PCM16 in ``ms`` milliseconds, on a sample boundary."""
    return int(ms * SAMPLE_RATE / 1000) * BYTES_PER_SAMPLE


class FrameSplitter:
    """Cuts a stream of PCM16 bytes into fixed-size frames (20 ms by default).

    ``feed`` returns the complete frames; the remainder waits for the next call. ``flush``
    returns it zero-padded to a full frame (or nothing).
    """

    def __init__(self, frame_ms: int = 20) -> None:
        if frame_ms <= 0:
            raise ValueError("frame_ms must be positive")
        self.frame_bytes = ms_to_bytes(frame_ms)
        self._pending = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        self._pending += data
        n = len(self._pending) // self.frame_bytes
        frames = [bytes(self._pending[i * self.frame_bytes : (i + 1) * self.frame_bytes]) for i in range(n)]
        del self._pending[: n * self.frame_bytes]
        return frames

    def flush(self) -> list[bytes]:
        if not self._pending:
            return []
        frame = bytes(self._pending) + b"\0" * (self.frame_bytes - len(self._pending))
        self._pending.clear()
        return [frame]
