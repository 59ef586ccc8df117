"""Sound cards through sounddevice (PortAudio): listing, choosing, and the two streams of ``talk``.

- :func:`load_sounddevice` imports sounddevice, turning a missing PortAudio library into a
  :class:`DeviceError` that names the Debian package (``libportaudio2``).
- :func:`list_devices` / :func:`select_device`: ``--input-device`` / ``--output-device`` take an
  index or a case-insensitive part of a name; no match, or several, is a one-line error listing
  the candidates.
- :class:`Microphone` opens the input at the device's own rate (its default rate, else 48000,
  44100, 24000, 16000 Hz), resamples with :class:`soxr.ResampleStream` and delivers 24 kHz PCM16
  frames (20 ms by default) from PortAudio's thread, a block (two frames by default) at a time.
- :class:`Speaker` opens the output the same way and pulls samples from a function, telling
  it how long each sample will take to be heard. Given a
  :class:`~voicerelay.audio.playback.PlaybackBuffer`'s ``read``, it has the buffer resample
  as it is fed and its callback only copies into the device's buffer (see the playback
  module: the output callback is where CPU goes while a reply plays); any other function
  gives 24 kHz samples that the callback resamples. :meth:`Speaker.pause` stops it at once,
  dropping what the device holds (barge-in, or nothing to play: an idle output stream still
  costs CPU).

Every :class:`DeviceError` message is one line fit for a CLI. PortAudio and ALSA write their own
complaints about a device that fails to open straight to file descriptor 2 (five lines per rate
tried); while a device is opened or probed they are caught (:func:`_native_stderr`): the ALSA
reason goes into the one-line message, the rest is dropped. Once the streams are open, ALSA's
notices of what its streams recovered from (``ALSA lib pcm.c:8570:(snd_pcm_recover) underrun
occurred`` on a busy machine) go to the log instead (:class:`AlsaNotices`). sounddevice is imported only
when a device is used, so the rest of voicerelay works on machines without PortAudio.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from time import monotonic as _monotonic  # (the callbacks' ``time`` argument is PortAudio's)
from types import ModuleType
from typing import Any, Literal

import numpy as np
import soxr

from voicerelay.audio.playback import LIVE_QUALITY, PlaybackBuffer
from voicerelay.errors import DeviceError
from voicerelay.protocol.audio import SAMPLE_RATE, FrameSplitter

__all__ = ["AlsaNotices", "Device", "DeviceError", "Microphone", "Speaker", "list_devices", "load_sounddevice",
           "pulse_devices", "select_device", "supported_rates"]

log = logging.getLogger(__name__)

Kind = Literal["input", "output"]

#: Rates tried after the device's default one.
FALLBACK_RATES = (48_000, 44_100, 24_000, 16_000)
_PCM16 = np.dtype("<i2")




def load_sounddevice() -> ModuleType:
    """Import sounddevice, or raise :class:`DeviceError` saying what to install."""
    try:
        import sounddevice
    except OSError:  # sounddevice raises OSError('PortAudio library not found') on import
        raise DeviceError("the PortAudio library is not installed: install the Debian package libportaudio2 "
                          "(apt-get install libportaudio2)") from None
    except ImportError:
        raise DeviceError("the sounddevice package is not installed: pip install sounddevice") from None
    return sounddevice


@dataclasses.dataclass(frozen=True, slots=True)
class Device:
    index: int
    name: str
    hostapi: str
    inputs: int
    outputs: int
    default_rate: int
    default_input: bool = False
    default_output: bool = False

    def channels(self, kind: Kind) -> int:
        return self.inputs if kind == "input" else self.outputs

    def is_default(self, kind: Kind) -> bool:
        return self.default_input if kind == "input" else self.default_output

    def label(self) -> str:
        return f"{self.index} {self.name!r}"


def list_devices(sd: ModuleType | None = None) -> list[Device]:
    """Every device PortAudio sees, with the default input and output marked."""
    sd = sd or load_sounddevice()
    try:
        hostapis = [api["name"] for api in sd.query_hostapis()]
        found = sd.query_devices()
    except sd.PortAudioError as exc:
        raise DeviceError(f"PortAudio cannot list the sound devices: {' '.join(str(exc).split())}") from None
    default_in, default_out = (_default_index(sd, kind) for kind in ("input", "output"))
    return [Device(index=i, name=str(d["name"]), hostapi=hostapis[d["hostapi"]] if d["hostapi"] < len(hostapis) else "",
                   inputs=int(d["max_input_channels"]), outputs=int(d["max_output_channels"]),
                   default_rate=int(d["default_samplerate"]), default_input=i == default_in,
                   default_output=i == default_out)
            for i, d in enumerate(found)]


def _default_index(sd: ModuleType, kind: Kind) -> int:
    try:
        return int(sd.query_devices(kind=kind)["index"])
    except (sd.PortAudioError, ValueError, KeyError, TypeError):
        return -1


def supported_rates(device: Device, kind: Kind, sd: ModuleType | None = None) -> list[int]:
    """Which of the default and fallback rates PortAudio accepts for ``device`` (mono PCM16)."""
    sd = sd or load_sounddevice()
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    rates = []
    with _native_stderr():
        for rate in _rates(device):
            try:
                check(device=device.index, channels=1, dtype="int16", samplerate=rate)
            except (sd.PortAudioError, ValueError):
                continue
            rates.append(rate)
    return rates


def select_device(spec: str | None, kind: Kind, devices: list[Device]) -> Device:
    """The ``kind`` device named by ``spec`` (an index or part of a name), or the default one."""
    candidates = [d for d in devices if d.channels(kind) > 0]
    listing = ", ".join(d.label() for d in candidates)
    if not candidates:
        what = "microphone" if kind == "input" else "speaker"
        raise DeviceError(f"no {kind} device: PortAudio sees no {what} on this machine"
                          + (f" (devices: {', '.join(d.label() for d in devices)})" if devices else ""))
    if spec is None or spec.strip() == "":
        return next((d for d in candidates if d.is_default(kind)), candidates[0])
    spec = spec.strip()
    if spec.isdigit():
        match = [d for d in candidates if d.index == int(spec)]
        if not match:
            raise DeviceError(f"no {kind} device has index {spec}; {kind} devices: {listing}")
        return match[0]
    wanted = spec.casefold()
    exact = [d for d in candidates if d.name.casefold() == wanted]
    match = exact or [d for d in candidates if wanted in d.name.casefold()]
    if not match:
        raise DeviceError(f"no {kind} device matches {spec!r}; {kind} devices: {listing}")
    if len(match) > 1:
        raise DeviceError(f"{spec!r} matches several {kind} devices: {', '.join(d.label() for d in match)}; "
                          "give its index or more of its name")
    return match[0]


def pulse_devices(timeout: float = 2.0) -> dict[str, list[str]] | None:
    """The PulseAudio (or PipeWire) sources and sinks, when ``pactl`` reaches a server; else None.

    PortAudio sees such a server as one ALSA device (``pulse``/``default``); the server's own
    device is chosen per process with ``PULSE_SOURCE`` / ``PULSE_SINK``.
    """
    if shutil.which("pactl") is None:
        return None
    found: dict[str, list[str]] = {}
    for kind in ("sources", "sinks"):
        try:
            result = subprocess.run(["pactl", "list", "short", kind], capture_output=True, text=True,
                                    timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if result.returncode != 0:
            return None
        found[kind] = [line.split("\t")[1] for line in result.stdout.splitlines() if line.count("\t") >= 1]
    return found


def pulse_defaults(timeout: float = 2.0) -> dict[str, tuple[str, str]]:
    """The PulseAudio (or PipeWire) source and sink a process started here uses, and why.

    ``{"source": (name, why), "sink": (name, why)}``: ``PULSE_SOURCE`` / ``PULSE_SINK`` when set
    (libpulse uses them first), else the server's default (``pactl info``). Empty when no server
    answers. The ALSA ``pulse`` and ``default`` devices PortAudio lists both lead to these.
    """
    found: dict[str, tuple[str, str]] = {}
    if shutil.which("pactl") is not None:
        try:
            result = subprocess.run(["pactl", "info"], capture_output=True, text=True, timeout=timeout, check=False,
                                    env={**os.environ, "LC_ALL": "C"})
        except (OSError, subprocess.TimeoutExpired):
            return {}
        if result.returncode != 0:
            return {}
        for line in result.stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Default Source", "Default Sink") and value.strip():
                found[key.strip().split()[1].lower()] = (value.strip(), "default")
    for kind, variable in (("source", "PULSE_SOURCE"), ("sink", "PULSE_SINK")):
        if os.environ.get(variable) and found:
            found[kind] = (os.environ[variable], f"from {variable}")
    return found


def _rates(device: Device) -> list[int]:
    rates = [device.default_rate] if device.default_rate > 0 else []
    return rates + [r for r in FALLBACK_RATES if r not in rates]


#: What PortAudio (its ``PA_ENSURE`` traces) and ALSA (its default error handler) print on a failure.
_PORTAUDIO_TRACE = re.compile(r"^Expression '.*' failed in '.*', line: \d+$")
_ALSA_ERROR = re.compile(r"^ALSA lib [^ ]+:\d+:\([^)]*\) (.*)$")


@contextlib.contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """Catch what C libraries write to file descriptor 2 meanwhile; yields the ALSA error messages.

    PortAudio's traces and ALSA's messages are dropped (the caller reports the failure in one
    line), anything else is written to fd 2 afterwards. No other thread must be opening a device.
    """
    reasons: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to catch
        yield reasons
        return
    with tempfile.TemporaryFile() as caught:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()
        os.dup2(caught.fileno(), 2)
        try:
            yield reasons
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            others = []  # as written, line ends included: a full-screen app may be drawing on fd 2
            dropped = False
            for line in caught.read().splitlines(keepends=True):
                text = line.decode(errors="replace").rstrip("\r\n")
                if (alsa := _ALSA_ERROR.match(text)) is not None:
                    reasons.append(alsa.group(1).strip())
                elif _PORTAUDIO_TRACE.match(text) or (dropped and not text.strip()):
                    pass  # (ALSA follows its message with an empty line)
                else:
                    others.append(line)
                    dropped = False
                    continue
                dropped = True
            if others:
                os.write(2, b"".join(others))


#: ALSA's error handler: ``void handler(const char *file, int line, const char *function, int err,
#: const char *fmt, ...)``. The variable arguments are not read (ctypes cannot declare them).
_ALSA_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)


class AlsaNotices:
    """While started, ALSA's messages go to this module's log (debug level), not to file descriptor 2.

    ALSA prints what its streams recovered from, such as ``ALSA lib pcm.c:8570:(snd_pcm_recover)
    underrun occurred`` when a callback came late, with its default error handler, straight to
    fd 2: the middle of a line of the plain view, or of the TUI's screen. ``snd_lib_error_set_handler``
    (alsa-lib's public API) replaces that handler for the whole process; :meth:`stop` puts the
    default one back. Started once the streams are open: a device that fails to open says why
    through :func:`_native_stderr`, which needs ALSA's formatted message. ``count`` is how many
    messages were taken. Nothing happens where there is no ALSA library (macOS, Windows).
    """

    def __init__(self) -> None:
        self.count = 0
        self._lib: Any = None
        self._handler: Any = None  # the ctypes callback, kept alive while it is installed

    def start(self) -> None:
        path = ctypes.util.find_library("asound")
        if path is None or self._handler is not None:
            return
        try:
            lib = ctypes.CDLL(path)  # the library PortAudio loaded: one handler for both
            lib.snd_lib_error_set_handler.argtypes = [_ALSA_HANDLER]
            lib.snd_lib_error_set_handler.restype = ctypes.c_int
        except (OSError, AttributeError):
            return
        handler = _ALSA_HANDLER(self._notice)
        if lib.snd_lib_error_set_handler(handler) == 0:
            self._lib, self._handler = lib, handler

    def stop(self) -> None:
        if self._handler is not None:
            self._lib.snd_lib_error_set_handler(_ALSA_HANDLER())  # NULL: ALSA's default handler again
            self._handler = None

    def _notice(self, file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None) -> None:
        self.count += 1
        if log.isEnabledFor(logging.DEBUG):  # (the format's arguments cannot be read: the format as it is)
            text = (fmt or b"").decode(errors="replace").strip()
            log.debug("ALSA: %s:%d (%s) %s", (file or b"").decode(errors="replace"), line,
                      (function or b"").decode(errors="replace"), text)


class _DeviceStream:
    """What the two streams share: opening at the first usable rate, latency, start and close."""

    device: Device
    rate: int

    def _open(self, sd: ModuleType, kind: Kind, make: Callable[[int], Any]) -> None:
        """``make(rate)`` at the device's default rate, then the fallback rates; the first that opens."""
        self._sd, self._kind, self._make = sd, kind, make
        failures = []
        with _native_stderr() as reasons:
            for rate in _rates(self.device):
                try:
                    self._stream = make(rate)
                except (sd.PortAudioError, ValueError) as exc:
                    failures.append(re.sub(r"^Error opening \w+: ", "", " ".join(str(exc).split())))
                    continue
                self.rate = int(self._stream.samplerate)
                return
        why = f"; ALSA: {reasons[-1]}" if reasons else ""
        raise DeviceError(f"cannot open {kind} device {self.device.label()} at any usable rate "
                          f"(tried {', '.join(str(r) for r in _rates(self.device))} Hz): {failures[-1]}{why}")

    def reopen(self) -> None:
        """Close the stream and open a new one on the same device at the same rate, started if
        the old one ran: the sound server behind the device (PulseAudio, PipeWire) connects a
        new stream to its default device, while the old one, restarted, would look for the device
        it was opened for (``PULSE_SINK``/``PULSE_SOURCE`` are read when a stream is opened)."""
        was_active = self.active
        self.close()
        with _native_stderr() as reasons:
            try:
                self._stream = self._make(self.rate)
            except (self._sd.PortAudioError, ValueError) as exc:
                why = f"; ALSA: {reasons[-1]}" if reasons else ""
                raise DeviceError(f"cannot open {self._kind} device {self.device.label()} again at {self.rate} Hz: "
                                  f"{' '.join(str(exc).split())}{why}") from None
        if was_active:
            self.start()

    @property
    def latency(self) -> float:
        """The device's own latency, in seconds, as PortAudio reports it."""
        return float(self._stream.latency)

    @property
    def active(self) -> bool:
        return bool(self._stream.active)

    #: ``time.monotonic()`` of the last callback (or start): a stream whose device went away where no
    #: sound server moves it (plain ALSA, CoreAudio, WASAPI) stops calling back, without an error
    last_block_at = 0.0

    def start(self) -> None:
        """Start (or resume) the stream; :class:`DeviceError` in one line when it cannot (its device went away)."""
        self.last_block_at = _monotonic()
        with _native_stderr() as reasons:
            try:
                self._stream.start()
            except self._sd.PortAudioError as exc:
                why = f"; ALSA: {reasons[-1]}" if reasons else ""
                raise DeviceError(f"cannot start {self._kind} device {self.device.label()}: "
                                  f"{' '.join(str(exc).split())}{why}") from None

    def close(self) -> None:
        """Stop and close the stream (idempotent). A stream whose device went away may fail to
        stop (PortAudio: an unanticipated host error): it is closed all the same, quietly."""
        if not self._stream.closed:
            with _native_stderr(), contextlib.suppress(self._sd.PortAudioError):
                self._stream.abort()
            with _native_stderr(), contextlib.suppress(self._sd.PortAudioError):
                self._stream.close()


class Microphone(_DeviceStream):
    """The input stream: 24 kHz PCM16 frames of ``frame_ms`` to ``on_frames``, from PortAudio's thread.

    ``on_frames(frames)`` gets a list of ``bytes`` frames (one block's worth) and must return
    quickly; it may be replaced before :meth:`start`. Blocks of ``block_ms`` (40 by default:
    each device wake-up costs CPU, and half of them cost 20 ms of latency at most, before the
    frame leaves). ``overflows`` counts blocks the device dropped because the callback was late.
    """

    def __init__(self, device: Device, on_frames: Callable[[list[bytes]], None], *, frame_ms: int = 20,
                 block_ms: int = 40, sd: ModuleType | None = None) -> None:
        sd = sd or load_sounddevice()
        self.device = device
        self.overflows = 0
        self.on_frames = on_frames
        #: ``process(frames, adc_time) -> frames``: on PortAudio's thread, before ``on_frames``
        #: (echo cancellation); ``adc_time`` is when the first sample was captured (stream time).
        self.process: Callable[[list[bytes], float], list[bytes]] | None = None
        self._splitter = FrameSplitter(frame_ms)
        self._resampled = self._framed = 0  # 24 kHz samples out of the resampler, and out of the splitter
        self._resampler: soxr.ResampleStream | None = None

        def make(rate: int) -> Any:
            return sd.RawInputStream(samplerate=rate, blocksize=rate * block_ms // 1000, device=device.index,
                                     channels=1, dtype="int16", callback=self._callback)

        self._open(sd, "input", make)
        if self.rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="int16", quality=LIVE_QUALITY)

    def _callback(self, indata: Any, frames: int, time: Any, status: Any) -> None:
        self.last_block_at = _monotonic()
        if status.input_overflow:
            self.overflows += 1
        pcm = np.frombuffer(indata, dtype=_PCM16)
        if self._resampler is not None:
            pcm = self._resampler.resample_chunk(pcm)
        self._resampled += pcm.size
        out = self._splitter.feed(pcm.tobytes())
        self._framed += sum(map(len, out)) // 2
        if out and self.process is not None:
            # when the first sample of ``out`` was captured: the block's end, less what the
            # resampler and the splitter still hold and what ``out`` spans
            adc = time.inputBufferAdcTime
            if not adc > 0:  # a host API that does not report it
                adc = time.currentTime - self._stream.latency
            held = (self._resampler.delay() if self._resampler is not None else 0) / SAMPLE_RATE
            pending = (self._resampled - self._framed + sum(map(len, out)) // 2) / SAMPLE_RATE
            out = self.process(out, adc + frames / self.rate - held - pending)
        if out:
            self.on_frames(out)


class Speaker(_DeviceStream):
    """The output stream, fed from ``pull(frames, delay)`` with 24 kHz int16 samples.

    ``pull`` gets the number of 24 kHz samples wanted and ``delay``, the seconds until the first
    of them is heard (the device's latency for this block, plus what the resampler holds).
    When ``pull`` is a :class:`PlaybackBuffer`'s ``read``, the buffer is set to the device's
    rate instead (:meth:`PlaybackBuffer.resample_to`) and fills the device's block in place.
    ``underflows`` counts blocks the device played late.
    """

    def __init__(self, device: Device, pull: Callable[[int, float], np.ndarray], *, block_ms: int = 20,
                 sd: ModuleType | None = None) -> None:
        sd = sd or load_sounddevice()
        self.device = device
        self.underflows = 0
        self._pull = pull
        #: ``tap(block, dac_time)``: each block exactly as handed to the device (int16 at its
        #: rate) and when its first sample is heard (stream time), from the output callback.
        self.tap: Callable[[np.ndarray, float], None] | None = None
        self._lock = threading.Lock()  # pause() against the callback, for the resampler state
        self._pending = np.zeros(0, dtype=_PCM16)  # resampled, not handed yet

        def make(rate: int) -> Any:
            return sd.RawOutputStream(samplerate=rate, blocksize=rate * block_ms // 1000, device=device.index,
                                      channels=1, dtype="int16", callback=self._callback)

        self._open(sd, "output", make)
        buffer = getattr(pull, "__self__", None)
        self._read_into: Callable[[np.ndarray, float], None] | None = None
        if isinstance(buffer, PlaybackBuffer) and getattr(pull, "__func__", None) is PlaybackBuffer.read:
            buffer.resample_to(self.rate)
            self._read_into = buffer.read_into
        self._resampler = self._new_resampler()

    def _new_resampler(self) -> soxr.ResampleStream | None:
        if self.rate == SAMPLE_RATE or self._read_into is not None:
            return None
        return soxr.ResampleStream(SAMPLE_RATE, self.rate, 1, dtype="int16", quality=LIVE_QUALITY)

    def _callback(self, outdata: Any, frames: int, time: Any, status: Any) -> None:
        self.last_block_at = _monotonic()
        if status.output_underflow:
            self.underflows += 1
        latency = time.outputBufferDacTime - time.currentTime
        if not 0 < latency < 2:  # a host API that does not report it
            latency = self._stream.latency
        if self._read_into is not None:  # the buffer is at the device's rate: fill the block in place
            self._read_into(np.frombuffer(outdata, dtype=_PCM16), latency)
        else:
            self._fill(outdata, frames, latency)
        if self.tap is not None:  # PortAudio's time for this block (the first ones after a start: no latency yet)
            dac = time.outputBufferDacTime if time.outputBufferDacTime > 0 else time.currentTime + latency
            self.tap(np.frombuffer(outdata, dtype=_PCM16), dac)

    def _fill(self, outdata: Any, frames: int, latency: float) -> None:
        with self._lock:
            if self._resampler is None:
                outdata[:] = self._pull(frames, latency).tobytes()
                return
            pending = self._pending
            for _ in range(8):  # soxr releases its output in bursts: pull until a block is there
                if pending.size >= frames:
                    break
                held = pending.size + self._resampler.delay()
                want = math.ceil((frames - pending.size) * SAMPLE_RATE / self.rate) + 8
                more = self._resampler.resample_chunk(self._pull(want, latency + held / self.rate))
                pending = np.concatenate((pending, more))
            block = pending[:frames]
            if block.size < frames:
                block = np.concatenate((block, np.zeros(frames - block.size, dtype=_PCM16)))
            outdata[:] = block.tobytes()
            self._pending = pending[frames:]

    def reopen(self) -> None:
        with self._lock:
            self._pending = np.zeros(0, dtype=_PCM16)
            self._resampler = self._new_resampler()
        super().reopen()

    def pause(self) -> None:
        """Stop now, dropping what the device and the resampler hold; :meth:`start` resumes."""
        self._stream.abort()
        with self._lock:
            self._pending = np.zeros(0, dtype=_PCM16)
            self._resampler = self._new_resampler()
