"""Acoustic echo cancellation for ``talk``: what the speakers play, taken back out of the microphone.

Two sides, two PortAudio threads:

- **Far end** (:meth:`EchoPath.far`, the speakers' output callback): each block exactly as it
  was handed to the device (at the device's rate, after resampling), with the time its first
  sample is heard (``outputBufferDacTime``, else now plus the latency sounddevice reports). It
  is only copied into a queue there: the output callback must stay cheap.
- **Near end** (:meth:`EchoPath.near`, the microphone's input callback, after its resampler):
  24 kHz frames with the time their first sample was captured (``inputBufferAdcTime`` less
  what the resampler and the frame splitter held). Queued far blocks are resampled to 24 kHz
  and written into a ring indexed by time; the reference of each 10 ms microphone frame is the
  ring at the same time (plus ``LEAD``: an echo must never come before its reference), so the
  canceller only has to model the room (a few ms to a few tens of ms of acoustic path). Both
  timelines stay contiguous: PortAudio's times jitter by a millisecond or two from callback to
  callback, and a reference that moves by a sample is one a linear canceller cannot follow. A
  gap in either (an underrun, an overflow) moves it, and the canceller learns again.

After the canceller, a **residual echo gate** silences what is left of the echo at the far end's
onsets after a pause (where cancellers lag a frame or two) and, while the far end sounds, every
frame below the level only a voice reaches (the echo to expect, from the far end's level and the
echo return loss learnt with convergence, less the canceller's own ERLE): a voice detector such
as webrtcvad takes one 20 ms residue 40 dB down for the start of a turn, and a canceller leaks
one when the echo path glitches (a gap in the microphone's stream, a delay that moved). In double talk a voice
starts as quietly as a residue, so the gate holds back what it silences: a frame no residue can
be (within the canceller's own ERLE of the echo) opens it for 200 ms, and the frames it held just
before go upstream first (a pre-roll: the start of the user's first word). What is left of the
onset then is the canceller's own doing (AEC3 suppresses the first ~80 ms of a voice over the
echo on the rig; livekit does not let its suppressor be tuned). :attr:`EchoPath.converged`
says when the canceller has learnt the room (``talk`` mutes the microphone while a reply plays
until then); :attr:`EchoPath.echo_free` when there is no echo to learn (headphones: the
microphone goes up as it is).

While the far end has been silent for half a second (:attr:`EchoPath.idle`: between replies, so
most of the time the user talks) the canceller rests and the microphone goes up as it is: each
call into the canceller costs CPU on the audio thread (livekit's: two FFI requests a 10 ms
frame), and there is no echo to take out. It resumes with the far end's first sound, which is
known ``LEAD`` before its echo reaches the microphone.

The canceller itself is an :class:`Engine`: :class:`WebRTCEngine` (WebRTC's audio processing
module as livekit's ``rtc.AudioProcessingModule`` ships it: AEC3, noise suppression, high-pass
filter) or :class:`SpeexEngine` (speexdsp's echo canceller and preprocessor, through ctypes on
the system library ``libspeexdsp.so.1``). :func:`load_engine` says why one cannot be used
(:class:`EchoUnavailable`), which ``talk --duplex auto`` prints before it falls back to half
duplex.

:class:`EchoStats` counts what a meter and a benchmark need: the microphone's level before
and after, the echo estimate (what was taken out), ERLE while only the far end sounds, and the
CPU time spent in the canceller.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import dataclasses
import logging
import math
import time
from typing import Protocol

import numpy as np
import soxr

from voicerelay.protocol.audio import SAMPLE_RATE

__all__ = ["ENGINES", "EchoPath", "EchoStats", "EchoUnavailable", "Engine", "SpeexEngine", "WebRTCEngine",
           "load_engine"]

#: Both engines work on 10 ms frames at 24 kHz.
FRAME = SAMPLE_RATE // 100
#: How much far-end history is kept (the microphone's frames are matched against it by time).
RING_S = 2.0
#: The far end is "sounding" (for ERLE) when its 10 ms reference frame is above this level.
FAR_ACTIVE_DBFS = -50.0
#: The reference is taken this far ahead of the microphone's frame (samples): an error in the
#: reported times that made the echo arrive before its reference would leave nothing to cancel;
#: a later echo is what the canceller models anyway (the speakers' blocks are known that far ahead).
LEAD = SAMPLE_RATE * 40 // 1000
#: The residual echo gate (see :attr:`EchoPath.gate`): the far end's levels kept (10 ms frames:
#: the echo lags its reference by the lead plus the room), and the bounds.
GATE_HISTORY_FRAMES = 20
ONSET_FRAMES = 15
ONSET_QUIET_FRAMES = 30
GATE_BELOW_ECHO_DB = 25.0  # (at the far end's onsets)
GATE_ONSET_DB = 3.0
VOICE_BELOW_ECHO_DB = 20.0
VOICE_MIN_DB = 6.0
VOICE_ERLE_MARGIN_DB = 8.0
VOICE_FRAMES = 1
#: After convergence the canceller still settles: no voice is told from its residue meanwhile.
SETTLE_FRAMES = 100
VOICE_FLOOR_DBFS = -50.0
HANGOVER_FRAMES = 20
PREROLL_FRAMES = 20
PREROLL_FLOOR_DBFS = -60.0
#: The far end has been this quiet (no sample beyond ``QUIET_PEAK``, -70 dBFS) for ``IDLE_FRAMES``
#: 10 ms frames: no echo is left in the room, and the canceller rests (see :attr:`EchoPath.idle`).
QUIET_PEAK = 10
IDLE_FRAMES = 50
#: Quiet far blocks still resampled after the last sound (what the resampler holds comes out);
#: later ones are not (nothing to resample: the ring reads as silence where nothing was written).
FLUSH_BLOCKS = 3
#: The echo return loss learnt is held to this (a microphone louder than the speakers' signal is noise).
MAX_ERL_DB = 10.0
#: When the canceller counts as converged (see :attr:`EchoPath.converged`).
CONVERGED_FRAMES = 30
CONVERGED_ERLE_DB = 20.0
#: ... or the microphone hears the far end this far down: no echo to learn (headphones).
NO_ECHO_DB = 30.0
#: A reported capture or playing time further than this from the stream's own timeline is a gap.
MAX_JITTER_S = 0.02
#: The microphone's timeline is moved when the reported times drift this far away on average (two
#: devices' clocks). Less is left to the canceller, which follows a slowly moving delay: every jump is
#: one it must learn again, while the assistant's voice leaks through.
REANCHOR_SAMPLES = SAMPLE_RATE // 20
_PCM16 = np.dtype("<i2")

log = logging.getLogger(__name__)


class EchoUnavailable(Exception):
    """Echo cancellation cannot be used here; the message says why, in one line."""


class Engine(Protocol):
    name: str

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        """One 10 ms frame (``FRAME`` int16 samples each): the microphone less the echo of ``far``."""
        ...

    def idle(self, near: np.ndarray) -> np.ndarray:
        """10 ms microphone frames (rows) while the far end has long been silent (no echo to
        take out, see :attr:`EchoPath.idle`): only what the engine does to the microphone
        anyway (noise suppression, say); ``near`` itself when that is nothing."""
        ...


class WebRTCEngine:
    """WebRTC's audio processing module (AEC3) through livekit's ``rtc.AudioProcessingModule``.

    The reference handed to it is already aligned with the microphone (see the module
    docstring), so the delay it is told, once, is the residual one: 0 ms (AEC3 keeps it).

    Each call into livekit is a request through its FFI (a protobuf message each way), which
    costs about as much as the processing itself (measured: 70 us of a cold cache per call, and
    a module with only its high-pass filter on costs 135 us a frame): a frame is two calls, and
    nothing else. Frames are handed as ``bytearray`` (livekit would copy ``bytes`` into one) and
    processed in place. While the far end is silent (:meth:`idle`) the module rests: the
    microphone goes up as it is (the high-pass filter is the canceller's, and rests with it),
    unless noise suppression is on (its noise estimate must follow the microphone throughout).
    """

    name = "webrtc"

    def __init__(self, *, noise_suppression: bool = False, high_pass: bool = True) -> None:
        try:
            from livekit import rtc
        except ImportError:
            raise EchoUnavailable("the echo canceller needs livekit: pip install 'voicerelay[aec]'") from None
        self._frame = rtc.AudioFrame
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, noise_suppression=noise_suppression,
                                              high_pass_filter=high_pass)
        self._apm.set_stream_delay_ms(0)
        self._noise_suppression = noise_suppression
        self._silence = np.zeros(FRAME, dtype=_PCM16)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        self._apm.process_reverse_stream(self._frame(bytearray(far), SAMPLE_RATE, 1, FRAME))
        data = bytearray(near)
        self._apm.process_stream(self._frame(data, SAMPLE_RATE, 1, FRAME))
        return np.frombuffer(data, dtype=_PCM16)

    def idle(self, near: np.ndarray) -> np.ndarray:
        if not self._noise_suppression:
            return near
        return np.stack([self.process(frame, self._silence) for frame in near])


class SpeexEngine:
    """speexdsp's echo canceller (MDF) and preprocessor (residual echo, optional noise suppression).

    Through ctypes on the system library (Debian ``libspeexdsp1``, which PulseAudio itself
    depends on): nothing to build. The filter covers ``tail_ms`` of acoustic path. speexdsp
    has no high-pass filter; a DC blocker stands in for it.
    """

    name = "speex"
    _SET_SAMPLING_RATE = 24
    _PREPROCESS_SET_DENOISE = 0
    _PREPROCESS_SET_ECHO_STATE = 24

    def __init__(self, *, noise_suppression: bool = False, high_pass: bool = True, tail_ms: int = 150) -> None:
        path = ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1"
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            raise EchoUnavailable("the speex echo canceller needs libspeexdsp: apt-get install libspeexdsp1") from None
        lib.speex_echo_state_init.restype = ctypes.c_void_p
        lib.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
        lib.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_echo_cancellation.argtypes = [ctypes.c_void_p] * 4
        lib.speex_preprocess_state_init.restype = ctypes.c_void_p
        lib.speex_preprocess_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.speex_preprocess_state_destroy.argtypes = [ctypes.c_void_p]
        lib.speex_preprocess_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.speex_preprocess_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._lib = lib
        self._echo = lib.speex_echo_state_init(FRAME, SAMPLE_RATE * tail_ms // 1000)
        rate = ctypes.c_int(SAMPLE_RATE)
        lib.speex_echo_ctl(self._echo, self._SET_SAMPLING_RATE, ctypes.byref(rate))
        self._pre = lib.speex_preprocess_state_init(FRAME, SAMPLE_RATE)
        lib.speex_preprocess_ctl(self._pre, self._PREPROCESS_SET_ECHO_STATE, ctypes.c_void_p(self._echo))
        denoise = ctypes.c_int(1 if noise_suppression else 0)
        lib.speex_preprocess_ctl(self._pre, self._PREPROCESS_SET_DENOISE, ctypes.byref(denoise))
        self._high_pass = high_pass
        self._noise_suppression = noise_suppression
        self._dc = 0.0
        self._silence = np.zeros(FRAME, dtype=_PCM16)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        near = np.ascontiguousarray(near, dtype=_PCM16)
        far = np.ascontiguousarray(far, dtype=_PCM16)
        out = np.empty(FRAME, dtype=_PCM16)
        self._lib.speex_echo_cancellation(self._echo, near.ctypes.data, far.ctypes.data, out.ctypes.data)
        self._lib.speex_preprocess_run(self._pre, out.ctypes.data)
        return self._dc_blocked(out)

    def idle(self, near: np.ndarray) -> np.ndarray:
        if self._noise_suppression:  # the preprocessor's noise estimate follows the microphone throughout
            return np.stack([self.process(frame, self._silence) for frame in near])
        return np.stack([self._dc_blocked(frame) for frame in near]) if self._high_pass else near

    def _dc_blocked(self, out: np.ndarray) -> np.ndarray:
        if self._high_pass:  # a DC blocker: the frame's mean, smoothed across frames
            self._dc = 0.9 * self._dc + 0.1 * float(out.mean())
            out = np.clip(out - round(self._dc), -32768, 32767).astype(_PCM16)
        return out

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is not None:
            lib.speex_preprocess_state_destroy(self._pre)
            lib.speex_echo_state_destroy(self._echo)


class AecAudioProcessingEngine:
    """WebRTC's audio processing module as the ``aec-audio-processing`` package builds it (from
    source: no wheel; several minutes of C++). Compared in ``benchmarks/talk_echo.py``; not the
    default. Its high-pass filter cannot be chosen (the module's own default applies)."""

    name = "aec-audio-processing"

    def __init__(self, *, noise_suppression: bool = False, high_pass: bool = True) -> None:
        try:
            from aec_audio_processing import AudioProcessor
        except ImportError:
            raise EchoUnavailable("this echo canceller needs aec-audio-processing: "
                                  "pip install aec-audio-processing") from None
        self._ap = AudioProcessor(enable_aec=True, enable_ns=noise_suppression, enable_agc=False, enable_vad=False)
        self._ap.set_stream_format(SAMPLE_RATE, 1, SAMPLE_RATE, 1)
        self._ap.set_reverse_stream_format(SAMPLE_RATE, 1)
        self._ap.set_stream_delay(0)

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        self._ap.process_reverse_stream(far.tobytes())
        return np.frombuffer(self._ap.process_stream(near.tobytes()), dtype=_PCM16).copy()

    def idle(self, near: np.ndarray) -> np.ndarray:
        silence = np.zeros(FRAME, dtype=_PCM16)
        return np.stack([self.process(frame, silence) for frame in near])


ENGINES = {"webrtc": WebRTCEngine, "speex": SpeexEngine, "aec-audio-processing": AecAudioProcessingEngine}


def load_engine(name: str = "webrtc", *, noise_suppression: bool = False, high_pass: bool = True) -> Engine:
    """The engine called ``name``, or :class:`EchoUnavailable` saying why not."""
    try:
        make = ENGINES[name]
    except KeyError:
        raise EchoUnavailable(f"no echo canceller called {name!r} (known: {', '.join(ENGINES)})") from None
    return make(noise_suppression=noise_suppression, high_pass=high_pass)


@dataclasses.dataclass(slots=True)
class EchoStats:
    """What the canceller did so far (read from another thread: plain numbers, approximate)."""

    frames: int = 0  # 10 ms microphone frames processed
    cpu_s: float = 0.0  # thread CPU time spent in the engine
    near_dbfs: float = float("-inf")  # the microphone, last 20 ms, before cancellation
    out_dbfs: float = float("-inf")  # ... after
    echo_dbfs: float = float("-inf")  # the echo estimate: what was taken out
    far_dbfs: float = float("-inf")  # the reference
    gated: int = 0  # frames the residual echo gate silenced
    preroll_frames: int = 0  # gated frames sent after all, before the voice they were the start of
    relearns: int = 0  # times a gap in a stream made the canceller learn the delay again
    erle_near: float = 0.0  # energy in and out while the far end sounds (for ERLE)
    erle_out: float = 0.0  # the canceller's output
    erle_gated_out: float = 0.0  # ... after the residual echo gate (what goes upstream)

    @property
    def erle_db(self) -> float | None:
        """Echo return loss enhancement over the frames where the far end sounded."""
        if self.erle_near <= 0 or self.erle_out <= 0:
            return None
        return 10 * math.log10(self.erle_near / self.erle_out)

    @property
    def erle_gated_db(self) -> float | None:
        """ERLE of what goes upstream (the gate's silence counts as a tiny floor, not as nothing)."""
        if self.erle_near <= 0:
            return None
        floor = self.frames * FRAME * 1.0  # +-1 LSB per sample, over the frames processed
        return 10 * math.log10(self.erle_near / max(self.erle_gated_out, floor))

    @property
    def cpu_per_audio_s(self) -> float:
        """Seconds of CPU per second of microphone audio."""
        return self.cpu_s / (self.frames * FRAME / SAMPLE_RATE) if self.frames else 0.0


def _dbfs(energy: float, n: int) -> float:
    return 10 * math.log10(energy / n) - 90.309 if energy > 0 else float("-inf")  # 20*log10(32768) = 90.309


class EchoPath:
    """The far end's blocks (speaker thread) and the microphone's frames (input thread), aligned by time.

    ``out_rate``: the speakers' device rate. ``far`` and ``near`` take times on one clock
    (PortAudio's stream time). ``measure_erle``: count the energy in and out while the far end
    sounds (meaningful when nobody speaks near the microphone meanwhile: a benchmark's doing).
    """

    def __init__(self, engine: Engine, out_rate: int, *, gate: bool = True) -> None:
        self.engine = engine
        self.out_rate = out_rate
        self.stats = EchoStats()
        #: The canceller has learnt the echo path: over the last ``CONVERGED_FRAMES`` frames where
        #: the far end sounded, it took ``CONVERGED_ERLE_DB`` out (or the microphone heard the far
        #: end ``NO_ECHO_DB`` down: nothing to learn). Until then the assistant's
        #: first words leak through (``talk`` keeps the microphone muted while it speaks).
        self.converged = False
        #: The residual echo gate (on by default): while the far end sounds, a frame far below the
        #: far end, or at an onset of the far end (where a canceller lags for a frame or two) a frame
        #: the canceller took much out of, is the echo's residue: silence is sent instead. A voice detector hears a residue 40-80 dB down as speech (webrtcvad does:
        #: one 20 ms frame and its hangover start a turn); a person speaking over the assistant
        #: is well above these bounds.
        self.gate = gate
        #: The microphone hears the far end ``NO_ECHO_DB`` down or less (headphones): its frames go
        #: up as they are. A canceller that has no echo to learn stays in its cautious first state
        #: and eats the start of a voice over the far end (AEC3 does: half the frames of "hello"
        #: 10 dB down). Measured with convergence; measured again after a gap (:meth:`relearn`).
        self.echo_free = False
        #: The far end has been silent for ``IDLE_FRAMES`` (half a second: a room's echo has died
        #: away): the canceller rests, only :meth:`Engine.idle` runs (its high-pass filter). While
        #: the user talks and nothing plays, that is most of a session, and each call into the
        #: canceller costs as much CPU as the rest of the microphone's path. It resumes with the
        #: first far-end frame that sounds, ``LEAD`` before that frame's echo can reach the
        #: microphone, where it left off (the room has not changed meanwhile).
        self.idle = False
        #: The echo return loss (dB): the echo's level in the microphone less the far end's, learnt
        #: with convergence (0 until then). The gate's bounds are set from the echo to expect.
        self.erl_db = 0.0
        self._far_levels: collections.deque[float] = collections.deque(maxlen=GATE_HISTORY_FRAMES)
        self._far_quiet = ONSET_QUIET_FRAMES  # far frames in a row at or below FAR_ACTIVE_DBFS
        self._since_onset = ONSET_FRAMES + 1  # frames since the far end started after a pause
        self._open = 0  # frames the gate stays open after a frame clearly someone's voice
        self._loud = 0  # frames in a row as loud as only a voice can be
        self._settling = 0  # frames before a voice may be told from the residue (SETTLE_FRAMES after convergence)
        self._voice_margin_db = VOICE_MIN_DB  # a voice this far below the echo is clearly not its residue
        #: Pre-roll: the gate's frames just before it sees a voice are held (their canceller output,
        #: up to ``PREROLL_FRAMES``); when it does see one, they go up before that frame. A voice
        #: starts quieter than it goes on, and under the assistant's echo its first syllable is
        #: as quiet as a residue: the gate could not tell, and the user's first word lost its start.
        self.preroll = True
        self._held: collections.deque[np.ndarray] = collections.deque(maxlen=PREROLL_FRAMES)
        self._learning: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=CONVERGED_FRAMES)
        self._blocks: collections.deque[tuple[float, np.ndarray]] = collections.deque()
        self._ring = np.zeros(1 << math.ceil(math.log2(RING_S * SAMPLE_RATE)), dtype=_PCM16)
        self._written = None  # absolute 24 kHz index the ring is written up to (exclusive)
        self._resampler: soxr.ResampleStream | _Identity | None = None  # None: resting (see _drain_far)
        self._segment_started = False
        self._segment_start = 0  # absolute index of the current far segment's first sample
        self._segment_in = 0  # samples (at out_rate) of the current segment so far
        self._stream_start = 0  # absolute index of the current resampler stream's first sample
        self._segment_out = 0  # samples the current resampler stream gave so far
        self._segment_in_end = 0.0  # time the last far block handed ends
        self._quiet_blocks = 0  # far blocks in a row with no sample beyond QUIET_PEAK
        self._sound_end = -(1 << 62)  # absolute index where the far end last sounded (exclusive)
        self._near_rest = np.zeros(0, dtype=_PCM16)  # microphone samples short of a 10 ms frame
        self._near_index = 0  # absolute index of _near_rest's first sample
        self._near_started = False
        self._drift = 0.0  # smoothed difference between the reported capture times and the timeline

    def relearn(self, why: str = "") -> None:
        """The echo's delay changed (a gap in either stream): not converged until it is learnt again."""
        log.debug("echo path: learning the room again (%s)", why or "asked")
        self.converged = self.echo_free = False
        self._learning.clear()
        self.stats.relearns += 1

    # ------------------------------------------------------------------ far end (output callback)

    def far(self, block: np.ndarray, dac_time: float) -> None:
        """A block as handed to the speakers (int16 at ``out_rate``), first heard at ``dac_time``."""
        self._blocks.append((dac_time, block.copy()))

    # ------------------------------------------------------------------ near end (input callback)

    def near(self, frames: list[bytes], adc_time: float) -> list[bytes]:
        """24 kHz microphone frames (any length, multiples of 10 ms best) whose first sample was
        captured at ``adc_time``: the same frames with the echo taken out, cut to the same length
        (the last may be shorter). A voice onset the gate held back comes before the frame where
        the gate saw the voice (see :attr:`preroll`): then there is more audio than came in."""
        started = time.thread_time()
        self._drain_far()
        pcm = np.frombuffer(bytearray().join(frames), dtype=_PCM16)  # (writable: processed in place)
        # the microphone's timeline stays contiguous: the callbacks' capture times jitter by
        # a millisecond or two, and a reference that jumps by a sample at every block is one a
        # linear echo canceller cannot follow. It moves to the reported times only at a gap (an
        # overflow), or when they drift far away on average (the two devices' clocks).
        expected = self._near_index + self._near_rest.size
        measured = adc_time * SAMPLE_RATE
        if self._near_started:
            self._drift += 0.05 * ((measured - expected) - self._drift)
        if not self._near_started or abs(measured - expected) > MAX_JITTER_S * SAMPLE_RATE:
            self._near_rest = np.zeros(0, dtype=_PCM16)
            if self._near_started:  # a gap (an overflow): the delay the canceller learnt is gone
                self.relearn(f"the microphone's times jumped {(measured - expected) / SAMPLE_RATE * 1000:+.0f} ms")
            self._near_index, self._drift, self._near_started = round(measured), 0.0, True
        elif abs(self._drift) > REANCHOR_SAMPLES:
            self.relearn(f"the microphone drifted {self._drift / SAMPLE_RATE * 1000:+.0f} ms from the speakers")
            self._near_index += round(self._drift)
            self._drift = 0.0
        data = np.concatenate((self._near_rest, pcm)) if self._near_rest.size else pcm
        whole = data.size - data.size % FRAME
        self.idle = self._sound_end <= self._near_index + LEAD - IDLE_FRAMES * FRAME
        processed = b""
        if whole and self.idle:
            processed = self._rest(data[:whole].reshape(-1, FRAME))
        elif whole:
            processed = self._frames(data[:whole].reshape(-1, FRAME))
        stats = self.stats
        stats.cpu_s += time.thread_time() - started
        stats.frames += whole // FRAME
        # what is short of a whole frame waits for the next call; the caller gets what was processed
        self._near_rest = data[whole:].copy()
        self._near_index += whole
        size = len(frames[0]) if frames else 0
        return [processed[j:j + size] for j in range(0, len(processed), size)] if size else []

    def _frames(self, near: np.ndarray) -> bytes:
        """Cancel the echo in whole 10 ms frames (rows of ``near``, the first at ``_near_index``), in
        place; what goes upstream (with a voice onset the gate held back, see :attr:`preroll`).

        The levels are measured for the whole block at once: each numpy call on a small array
        costs a few microseconds on the audio thread's cold cache, more than its arithmetic.
        """
        count = near.shape[0]
        far = self._far_at(self._near_index + LEAD, count * FRAME).reshape(count, FRAME)
        before = near.astype(np.float64)
        far_f = far.astype(np.float64)
        near_e = np.einsum("ij,ij->i", before, before).tolist()
        far_e = np.einsum("ij,ij->i", far_f, far_f).tolist()
        engine = self.engine
        for j in range(count):
            cleaned = engine.process(near[j], far[j])
            if not self.echo_free:  # (echo_free: nothing to cancel, the microphone as it is)
                near[j] = cleaned
        out = near.astype(np.float64)
        out_e = np.einsum("ij,ij->i", out, out).tolist()
        stats = self.stats
        gated = []
        onsets: dict[int, list[np.ndarray]] = {}  # frame -> the voice onset held back before it
        for j in range(count):
            far_db = _dbfs(far_e[j], FRAME)
            verdict = (self._residual(_dbfs(near_e[j], FRAME), _dbfs(out_e[j], FRAME), far_db)
                       if self.gate and not self.echo_free else _PASS)
            if verdict is _RESIDUE:
                gated.append(j)
                if self.preroll:
                    self._held.append(near[j].copy())
            elif verdict is _VOICE and self._held:
                held = list(self._held)
                while held and _dbfs(float(held[0].astype(np.float64) @ held[0]), FRAME) < PREROLL_FLOOR_DBFS:
                    del held[0]  # (nothing of a voice there: the canceller had taken it all)
                if held:
                    onsets[j] = held
                self._held.clear()
            else:
                self._held.clear()
            if far_db > FAR_ACTIVE_DBFS:
                stats.erle_near += near_e[j]
                stats.erle_out += out_e[j]
                stats.erle_gated_out += 0.0 if gated and gated[-1] == j else out_e[j]
                if not self.converged:
                    self._learn(near_e[j], out_e[j], far_e[j])
        if gated:
            near[gated] = 0
            out[gated] = 0.0
            stats.gated += len(gated)
            for j in gated:
                out_e[j] = 0.0
        echo = before - out
        n = near.size
        stats.near_dbfs, stats.out_dbfs = _dbfs(sum(near_e), n), _dbfs(sum(out_e), n)
        stats.echo_dbfs, stats.far_dbfs = _dbfs(float(np.einsum("ij,ij->", echo, echo)), n), _dbfs(sum(far_e), n)
        if not onsets:
            return near.tobytes()
        pieces = []
        for j in range(count):
            pieces.extend(onsets.get(j, ()))
            pieces.append(near[j])
            stats.preroll_frames += len(onsets.get(j, ()))
        return np.concatenate(pieces).tobytes()

    def _rest(self, near: np.ndarray) -> bytes:
        """Whole 10 ms frames while the far end has long been silent (:attr:`idle`): only the
        engine's :meth:`~Engine.idle` (often nothing), in place, and the levels."""
        cleaned = self.engine.idle(near)
        if cleaned is not near:
            near[:] = cleaned
        pcm = near.ravel().astype(np.float64)
        stats = self.stats
        stats.near_dbfs = stats.out_dbfs = _dbfs(float(pcm @ pcm), pcm.size)
        stats.echo_dbfs = stats.far_dbfs = float("-inf")
        self._far_levels.extend([float("-inf")] * near.shape[0])  # (the gate sees the far end's onset)
        self._far_quiet += near.shape[0]
        self._held.clear()
        return near.tobytes()

    def _learn(self, near_e: float, out_e: float, far_e: float) -> None:
        """One frame where the far end sounds, towards :attr:`converged` (and :attr:`echo_free`)."""
        self._learning.append((near_e, out_e, far_e))
        if len(self._learning) == self._learning.maxlen:
            n_sum, c_sum, f_sum = map(sum, zip(*self._learning, strict=True))
            # it cancels the echo, or there is none to cancel (headphones)
            self.echo_free = 10 * math.log10((f_sum + 1) / (n_sum + 1)) >= NO_ECHO_DB
            self.converged = self.echo_free or 10 * math.log10((n_sum + 1) / (c_sum + 1)) >= CONVERGED_ERLE_DB
            if self.converged and not self.echo_free:
                self.erl_db = min(MAX_ERL_DB, 10 * math.log10((n_sum + 1) / (f_sum + 1)))
                # what the canceller takes out, less a margin, is how far below the echo a voice shows
                erle = 10 * math.log10((n_sum + 1) / (c_sum + 1))
                self._voice_margin_db = min(VOICE_BELOW_ECHO_DB, max(VOICE_MIN_DB, erle - VOICE_ERLE_MARGIN_DB))
                self._settling = SETTLE_FRAMES
            if self.converged:
                log.debug("echo path: converged (%s), echo return loss %.1f dB, voice margin %.1f dB",
                          "no echo" if self.echo_free else "cancelling", self.erl_db, self._voice_margin_db)

    # ------------------------------------------------------------------ internals

    def _residual(self, near_db: float, out_db: float, far_db: float) -> object:
        """Is this frame's output the echo's residue (``_RESIDUE``: gated), clearly someone's voice
        (``_VOICE``: the gate stays open a while), or neither (``_PASS``)? See :attr:`gate`."""
        history = self._far_levels
        history.append(far_db)
        if far_db <= FAR_ACTIVE_DBFS:
            self._far_quiet += 1
        else:
            if self._far_quiet >= ONSET_QUIET_FRAMES:  # the far end starts after a pause: a reply, a sentence
                self._since_onset = 0
            self._far_quiet = 0
        self._since_onset += 1
        loudest = max(history)
        if loudest <= FAR_ACTIVE_DBFS:
            self._open = 0
            return _PASS  # the far end is silent: whatever is left is the room's
        echo = loudest + self.erl_db  # the loudest echo to expect in the microphone
        if self._since_onset <= ONSET_FRAMES:  # the canceller may lag here: what it took much out of is residue
            residue = out_db < echo - GATE_BELOW_ECHO_DB or out_db < near_db - GATE_ONSET_DB
            return _RESIDUE if residue else _PASS
        self._settling -= 1
        voice_bound = max(echo - self._voice_margin_db, VOICE_FLOOR_DBFS)
        if self.converged and self._settling <= 0 and out_db >= voice_bound:  # no residue is that loud
            self._loud += 1
            if self._loud >= VOICE_FRAMES:  # (a residue may spike for a frame; a voice goes on)
                opened = self._open == 0
                self._open = HANGOVER_FRAMES
                if opened:
                    log.debug("echo path: a voice over the far end (%.1f dBFS after cancelling, %.1f before, "
                              "echo expected %.1f)", out_db, near_db, echo)
                return _VOICE if opened else _PASS
        else:
            self._loud = 0
        if self._open > 0:
            self._open -= 1
            return _PASS
        # below a voice's bound and no voice going on: a residue. The canceller leaks for a frame
        # when the echo path glitches (a gap in the microphone, a delay that moved) and one 10 ms
        # frame 20 dB under the echo is a turn to a voice detector; the start of a real voice that
        # quiet is held (the pre-roll) and goes up once the voice shows.
        return _RESIDUE if out_db < voice_bound else _PASS

    def _drain_far(self) -> None:
        """Resample the far blocks handed since the last call into the ring, on their timeline.

        A segment is a run of contiguous blocks: its samples are placed from its first block's
        time on, counted (``_segment_in``), not re-timed block by block. A long quiet run in it
        (the output stream playing silence between replies) is not resampled: the resampler
        stream is dropped once it has let out what it held, and a new one starts with the next
        sound, at the place the count gives (a fraction of a sample from where the old one would
        have put it).
        """
        while self._blocks:
            dac_time, block = self._blocks.popleft()
            if self._segment_started and abs(dac_time - self._segment_in_end) > MAX_JITTER_S:
                # not contiguous with the last block (an underrun): a new segment, whose delay the
                # canceller must learn again
                self._segment_started = False
                self.relearn(f"the speakers' times jumped {(dac_time - self._segment_in_end) * 1000:+.0f} ms")
            if not self._segment_started:
                self._segment_started, self._resampler = True, None
                self._segment_start = round(dac_time * SAMPLE_RATE)
                self._segment_in = 0
                self._quiet_blocks = 0
            self._segment_in_end = dac_time + block.size / self.out_rate
            quiet = not block.size or (-QUIET_PEAK <= int(block.min()) and int(block.max()) <= QUIET_PEAK)
            self._quiet_blocks = self._quiet_blocks + 1 if quiet else 0
            if self._quiet_blocks <= FLUSH_BLOCKS:
                if self._resampler is None:
                    self._resampler = (soxr.ResampleStream(self.out_rate, SAMPLE_RATE, 1, dtype="int16", quality="LQ")
                                       if self.out_rate != SAMPLE_RATE else _Identity())
                    self._stream_start = self._segment_start + round(self._segment_in * SAMPLE_RATE / self.out_rate)
                    self._segment_out = 0
                out = self._resampler.resample_chunk(block)
                self._write(self._stream_start + self._segment_out, out)
                self._segment_out += out.size
            else:
                self._resampler = None
            self._segment_in += block.size
            if not quiet:
                self._sound_end = self._segment_start + round(self._segment_in * SAMPLE_RATE / self.out_rate)

    def _write(self, index: int, samples: np.ndarray) -> None:
        size = self._ring.size
        if self._written is None or index - self._written > size:
            self._written = index
            self._ring[:] = 0
        if index > self._written:  # never written in between: silence
            self._put(self._written, np.zeros(index - self._written, dtype=_PCM16))
        self._put(index, samples)
        self._written = max(self._written, index + samples.size)

    def _put(self, index: int, samples: np.ndarray) -> None:
        size = self._ring.size
        samples = samples[-size:]
        first = index % size
        n = min(samples.size, size - first)
        self._ring[first:first + n] = samples[:n]
        self._ring[:samples.size - n] = samples[n:]

    def _far_at(self, index: int, count: int) -> np.ndarray:
        """The far end's ``count`` samples from absolute index ``index`` (silence where none were heard)."""
        size = self._ring.size
        out = np.zeros(count, dtype=_PCM16)
        if self._written is None:
            return out
        lo, hi = max(index, self._written - size), min(index + count, self._written)
        if lo >= hi:
            return out
        first = lo % size
        n = hi - lo
        k = min(n, size - first)
        out[lo - index:lo - index + k] = self._ring[first:first + k]
        out[lo - index + k:hi - index] = self._ring[:n - k]
        return out


_PASS, _RESIDUE, _VOICE = object(), object(), object()


class _Identity:
    def resample_chunk(self, block: np.ndarray) -> np.ndarray:
        return block
