"""Audio files: stream any file libsndfile reads as 24 kHz mono PCM16, and write PCM16 WAVs.

:class:`AudioFileStream` reads block by block and resamples with :class:`soxr.ResampleStream`,
so a long file is never loaded whole. :class:`WavWriter` writes the Realtime format (PCM16
mono 24 kHz) incrementally. Every problem with a file is an :class:`AudioFileError` whose
message is one line fit for a CLI: ``cannot read x.wav: not an audio file``.

libsndfile quietly shortens a WAV whose header promises more audio than the file holds (a
truncated download, a copy cut short), so this module also walks the RIFF/AIFF chunks itself
to tell a truncated file from a complete one (see :func:`read_wav_layout`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, NoReturn, Self

import numpy as np
import soundfile
import soxr

from voicerelay.errors import AudioFileError
from voicerelay.errors import one_line as _one_line
from voicerelay.protocol.audio import SAMPLE_RATE, float_to_pcm16

__all__ = ["AudioFileError", "AudioFileStream", "WavLayout", "WavWriter", "read_wav_layout"]

_PCM16 = np.dtype("<i2")
_UNKNOWN_SIZE = 0xFFFFFFFF  # what streaming writers put in a size field they cannot know
_MAX_CHUNKS = 4096  # a chunk walk gives up after this many chunks (a corrupt or hostile file)
_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE




def _describe_os_error(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, NotADirectoryError):
        return "no such file (a parent in the path is not a folder)"
    return _one_line(exc.strerror or str(exc)).rstrip(".").lower() or type(exc).__name__


def _describe_sndfile_error(exc: Exception) -> str:
    detail = _one_line(str(exc))
    # soundfile prefixes "Error opening '<path>': "; keep libsndfile's own words only.
    if ": " in detail and detail.startswith("Error opening"):
        detail = detail.split("': ", 1)[-1]
    detail = detail.rstrip(".")
    if "format not recognised" in detail.lower() or "format not recognized" in detail.lower():
        return "not an audio file"
    return f"not a readable audio file ({detail})" if detail else "not a readable audio file"


@dataclass(frozen=True, slots=True)
class WavLayout:
    """Where the sample data of a RIFF WAV (or AIFF) file lies, as its header declares it.

    ``declared_bytes`` is ``None`` when the header does not know the size (a streamed WAV:
    ``0xFFFFFFFF``). ``available_bytes`` is what the file actually holds from ``data_offset``
    to its end. ``format_tag``/``channels``/``sample_rate``/``bits`` come from the ``fmt ``
    chunk (``format_tag`` resolved through WAVE_FORMAT_EXTENSIBLE; 0 and ``sample_rate`` 0
    for AIFF, which this module only checks for truncation).
    """

    container: str  # "wav" or "aiff"
    format_tag: int
    channels: int
    sample_rate: int
    bits: int
    data_offset: int
    declared_bytes: int | None
    available_bytes: int

    @property
    def truncated(self) -> bool:
        """True when the header promises more sample data than the file holds."""
        return self.declared_bytes is not None and self.declared_bytes > self.available_bytes

    @property
    def is_pcm16_mono(self) -> bool:
        """True for uncompressed 16-bit mono WAV data (the Realtime format at any rate)."""
        return (
            self.container == "wav"
            and self.format_tag == _WAVE_FORMAT_PCM
            and self.channels == 1
            and self.bits == 16
        )


def _read_exact(fh: BinaryIO, n: int) -> bytes | None:
    data = fh.read(n)
    return data if len(data) == n else None


def _walk_riff(fh: BinaryIO, file_size: int, head: bytes) -> WavLayout | None:
    magic = head[:4]
    endian = ">" if magic == b"RIFX" else "<"
    format_tag = channels = rate = bits = 0
    ds64_data: int | None = None
    pos = 12
    for _ in range(_MAX_CHUNKS):
        if pos + 8 > file_size:
            return None
        fh.seek(pos)
        header = _read_exact(fh, 8)
        if header is None:
            return None
        cid = header[:4]
        (size,) = struct.unpack(endian + "I", header[4:])
        if cid == b"ds64" and magic == b"RF64":
            body = _read_exact(fh, 16)
            if body is not None:
                _riff64, ds64_data = struct.unpack("<QQ", body)
        elif cid == b"fmt ":
            body = fh.read(min(size, 40))
            if len(body) >= 16:
                format_tag, channels, rate, _byte_rate, _align, bits = struct.unpack(endian + "HHIIHH", body[:16])
                if format_tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                    (format_tag,) = struct.unpack(endian + "H", body[24:26])
        elif cid == b"data":
            data_offset = pos + 8
            declared: int | None = size
            if magic == b"RF64" and size == _UNKNOWN_SIZE:
                declared = ds64_data
            elif size == _UNKNOWN_SIZE:
                declared = None
            return WavLayout(
                "wav", format_tag, channels, rate, bits, data_offset, declared, max(0, file_size - data_offset)
            )
        pos += 8 + size + (size & 1)
    return None


def _walk_aiff(fh: BinaryIO, file_size: int) -> WavLayout | None:
    pos = 12
    channels = bits = 0
    for _ in range(_MAX_CHUNKS):
        if pos + 8 > file_size:
            return None
        fh.seek(pos)
        header = _read_exact(fh, 8)
        if header is None:
            return None
        cid = header[:4]
        (size,) = struct.unpack(">I", header[4:])
        if cid == b"COMM":
            body = _read_exact(fh, 8)
            if body is not None:
                channels, _frames, bits = struct.unpack(">HIH", body)
        elif cid == b"SSND":
            # The chunk starts with an 8-byte offset/block-size pair before the samples.
            data_offset = pos + 16
            declared = None if size == _UNKNOWN_SIZE else max(0, size - 8)
            return WavLayout("aiff", 0, channels, 0, bits, data_offset, declared, max(0, file_size - data_offset))
        pos += 8 + size + (size & 1)
    return None


def _scan_container(fh: BinaryIO) -> WavLayout | None:
    """Walk the chunks of a RIFF/RIFX/RF64 WAVE or AIFF file; ``None`` for anything else."""
    fh.seek(0, os.SEEK_END)
    file_size = fh.tell()
    fh.seek(0)
    head = fh.read(12)
    if len(head) < 12:
        return None
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return _walk_riff(fh, file_size, head)
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return _walk_aiff(fh, file_size)
    return None


def read_wav_layout(path: str | os.PathLike[str]) -> WavLayout | None:
    """The data layout a WAV/AIFF file's header declares, or ``None`` if it is not one.

    Raises :class:`AudioFileError` when the file cannot be opened.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            return _scan_container(fh)
    except OSError as exc:
        raise AudioFileError(f"cannot read {name}: {_describe_os_error(exc)}") from None


class ClosedOnExit:
    """``with`` closes it: for the file-like classes here and in :mod:`voicerelay.recording`."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AudioFileStream(ClosedOnExit):
    """Streams any audio file soundfile reads as 24 kHz mono int16 chunks.

    WAV of any rate, channel count and sample format (PCM_16/24/32, FLOAT, ULAW...), or any
    other format libsndfile knows (FLAC, OGG, AIFF...). Channels are mixed down by averaging;
    the rate is converted with :class:`soxr.ResampleStream`. The file is read block by block
    (``SoundFile.read(frames, dtype='float32')``), so a long file is never loaded whole. A
    24 kHz mono PCM_16 source is passed through bit for bit.

    The file is opened and validated at once: a missing path, a folder, a file that is not
    audio, an empty or truncated file raise :class:`AudioFileError`. Use as a context manager
    or call :meth:`close`.
    """

    source_rate: int
    """Sample rate of the source file, in Hz."""
    channels: int
    """Channel count of the source file."""
    frames: int
    """Frames in the source file (samples per channel), as its header declares."""

    def __init__(self, path: str | os.PathLike[str], chunk_ms: int = 20) -> None:
        if isinstance(chunk_ms, bool) or not isinstance(chunk_ms, int) or chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be a positive integer, got {chunk_ms!r}")
        self.name = os.fspath(path)
        """The path as given, used in error messages."""
        self.chunk_ms = chunk_ms
        self._chunk_samples = SAMPLE_RATE * chunk_ms // 1000
        self._file: soundfile.SoundFile | None = None

        try:
            with open(self.name, "rb") as fh:
                layout = _scan_container(fh)
        except OSError as exc:
            self._fail(_describe_os_error(exc))
        try:
            sf = soundfile.SoundFile(self.name)
        except (soundfile.SoundFileError, RuntimeError) as exc:
            self._fail(_describe_sndfile_error(exc))
        except OSError as exc:
            self._fail(_describe_os_error(exc))
        except (TypeError, ValueError) as exc:  # pragma: no cover - libsndfile oddities
            self._fail(f"not a readable audio file ({_one_line(str(exc))})")
        self._file = sf
        self.source_rate = int(sf.samplerate)
        self.channels = int(sf.channels)
        self.frames = int(sf.frames)
        self._passthrough = self.source_rate == SAMPLE_RATE and self.channels == 1 and sf.subtype == "PCM_16"
        if self.frames <= 0:
            self.close()
            self._fail("empty (no audio frames)")
        if self.source_rate <= 0 or self.channels <= 0:
            self.close()
            self._fail("not a readable audio file (bad sample rate or channel count)")
        if layout is not None and layout.truncated:
            self.close()
            self._fail(
                f"truncated: the header promises {layout.declared_bytes} bytes of audio "
                f"but the file holds {layout.available_bytes}"
            )

    def _fail(self, reason: str) -> NoReturn:
        raise AudioFileError(f"cannot read {self.name}: {reason}") from None

    @property
    def duration_s(self) -> float:
        """Duration of the source, in seconds."""
        return self.frames / self.source_rate

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._file is None

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield int16 24 kHz mono chunks of exactly ``chunk_ms`` (the last one may be shorter).

        Each iteration starts from the beginning of the file. The resampler is flushed at the
        end, so nothing is lost. A file found short while reading raises :class:`AudioFileError`.
        """
        sf = self._file
        if sf is None:
            raise ValueError("I/O operation on a closed AudioFileStream")
        return self._chunks(sf)

    def _chunks(self, sf: soundfile.SoundFile) -> Iterator[np.ndarray]:
        chunk = self._chunk_samples
        block = max(4096, self.source_rate // 10)
        resampler = (
            None
            if self.source_rate == SAMPLE_RATE
            else soxr.ResampleStream(self.source_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        )
        pending = np.empty(0, dtype=_PCM16)
        frames_read = 0
        try:
            sf.seek(0)
        except (soundfile.SoundFileError, RuntimeError, OSError) as exc:
            self._fail(f"cannot seek ({_one_line(str(exc)).rstrip('.')})")
        while True:
            try:
                if self._passthrough:
                    pcm = sf.read(block, dtype="int16")
                    n = len(pcm)
                else:
                    data = sf.read(block, dtype="float32", always_2d=True)
                    n = len(data)
            except (soundfile.SoundFileError, RuntimeError) as exc:
                self._fail(f"truncated or corrupt audio data ({_one_line(str(exc)).rstrip('.')})")
            except OSError as exc:
                self._fail(f"read error ({_describe_os_error(exc)})")
            frames_read += n
            last = n < block
            if not self._passthrough:
                mono = data[:, 0] if self.channels == 1 else data.mean(axis=1, dtype=np.float32)
                mono = np.ascontiguousarray(mono, dtype=np.float32)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=last)
                pcm = float_to_pcm16(mono)
            buf = np.concatenate((pending, pcm)) if pending.size else pcm
            full = len(buf) // chunk * chunk
            for start in range(0, full, chunk):
                yield buf[start : start + chunk]
            pending = buf[full:]
            if last:
                break
        if frames_read < self.frames:
            self._fail(f"truncated: the header promises {self.frames} frames but only {frames_read} could be read")
        if pending.size:
            yield pending

    def close(self) -> None:
        """Close the file. Idempotent."""
        sf, self._file = self._file, None
        if sf is not None:
            sf.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.source_rate} Hz, {self.channels} ch, {self.duration_s:.2f} s"
        return f"<AudioFileStream {self.name!r} {state}>"


class WavWriter(ClosedOnExit):
    """Writes 24 kHz mono PCM16 WAV incrementally (soundfile, subtype PCM_16).

    :meth:`write` takes raw little-endian PCM16 bytes or an int16 ndarray. The header is
    completed on :meth:`close`; a file left unclosed by a crash is still readable (libsndfile
    and :func:`read_wav_layout` both find the data that was written). Context manager.
    """

    def __init__(self, path: str | os.PathLike[str], rate: int = SAMPLE_RATE) -> None:
        if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
            raise ValueError(f"rate must be a positive integer, got {rate!r}")
        self.name = os.fspath(path)
        """The path as given, used in error messages."""
        self.rate = rate
        self.frames_written = 0
        """Samples written so far."""
        try:
            with open(self.name, "wb"):
                pass
        except OSError as exc:
            raise AudioFileError(f"cannot write {self.name}: {_describe_os_error(exc)}") from None
        try:
            self._file: soundfile.SoundFile | None = soundfile.SoundFile(
                self.name, "w", samplerate=rate, channels=1, subtype="PCM_16", format="WAV"
            )
        except (soundfile.SoundFileError, RuntimeError, OSError) as exc:
            raise AudioFileError(f"cannot write {self.name}: {_one_line(str(exc))}") from None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._file is None

    def write(self, pcm: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Append PCM16 samples: little-endian bytes (an even count) or a 1-D int16 array."""
        sf = self._file
        if sf is None:
            raise ValueError(f"I/O operation on a closed WavWriter ({self.name})")
        if isinstance(pcm, np.ndarray):
            if pcm.dtype.kind != "i" or pcm.dtype.itemsize != 2:
                raise TypeError(f"WavWriter.write expects int16 samples, got an array of {pcm.dtype}")
            if pcm.ndim != 1:
                raise ValueError(f"WavWriter.write expects mono (1-D) samples, got shape {pcm.shape}")
            samples = np.ascontiguousarray(pcm, dtype=np.int16)
        else:
            raw = memoryview(pcm).cast("B")
            if len(raw) % 2:
                raise ValueError(f"{len(raw)} bytes is not a whole number of PCM16 samples")
            samples = np.frombuffer(raw, dtype=_PCM16).astype(np.int16, copy=False)
        if samples.size == 0:
            return
        try:
            sf.write(samples)
        except (soundfile.SoundFileError, RuntimeError, OSError) as exc:
            raise AudioFileError(f"cannot write {self.name}: {_one_line(str(exc))}") from None
        self.frames_written += int(samples.size)

    def close(self) -> None:
        """Complete the header and close the file. Idempotent."""
        sf, self._file = self._file, None
        if sf is not None:
            sf.close()

    def __repr__(self) -> str:
        return f"<WavWriter {self.name!r} {self.frames_written} frames{' closed' if self.closed else ''}>"
