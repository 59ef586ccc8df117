"""Server VAD for the embedded backend: webrtcvad on 16 kHz audio resampled with soxr.

:class:`VoiceActivityDetector` is fed 24 kHz PCM16 as it arrives and reports where speech
starts and stops, in milliseconds of session audio (the clock ``audio_start_ms`` and
``audio_end_ms`` use). webrtcvad only takes 8/16/32/48 kHz, so input is resampled to 16 kHz by
a streaming soxr resampler and judged in 20 ms frames.

Decisions, mirroring OpenAI's server VAD:

* speech starts after ``START_FRAMES`` consecutive voiced frames (100 ms: fewer let webrtcvad's
  start-up adaptation fire on plain noise); ``audio_start_ms`` is the first voiced frame minus ``prefix_padding_ms`` (never < 0);
* speech stops once ``silence_duration_ms`` of unvoiced frames follow; ``audio_end_ms`` is the
  end of the last voiced frame;
* ``threshold`` (0-1) picks webrtcvad's aggressiveness: higher needs clearer speech;
* with ``pause_ms``, ``speech_paused`` (``ms``: the end of the last voiced frame) once speech has
  been followed by ``pause_ms`` of unvoiced frames, before ``silence_duration_ms`` says whether the
  turn ended: the audio a recogniser needs of the turn is then all there (the session starts
  recognising it early, see ``session.py``). Once per pause; speech that resumes resets it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import soxr
import webrtcvad

VAD_RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = VAD_RATE * FRAME_MS // 1000
START_FRAMES = 5


@dataclasses.dataclass(frozen=True, slots=True)
class VadEvent:
    kind: str  # "speech_started" | "speech_paused" | "speech_stopped"
    ms: int  # audio_start_ms or audio_end_ms, in session audio milliseconds


def aggressiveness(threshold: float) -> int:
    """Map OpenAI's 0-1 threshold onto webrtcvad's modes 0-3."""
    return max(0, min(3, int(threshold * 4)))


class VoiceActivityDetector:
    def __init__(self, threshold: float = 0.5, prefix_padding_ms: int = 300, silence_duration_ms: int = 500,
                 pause_ms: int | None = None) -> None:
        self._vad = webrtcvad.Vad(aggressiveness(threshold))
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self.pause_ms = pause_ms
        self._pause_told = False
        self._resampler = soxr.ResampleStream(24_000, VAD_RATE, 1, dtype="int16")
        self._pending = np.zeros(0, dtype=np.int16)
        self._frame_index = 0  # 20 ms frames judged so far
        self._voiced_run = 0
        self._silence_ms = 0
        self._last_voiced_end_ms = 0
        self.speaking = False

    def feed(self, pcm24: np.ndarray) -> list[VadEvent]:
        """Judge more session audio (int16, 24 kHz); return the events it completes."""
        resampled = self._resampler.resample_chunk(pcm24)
        pcm = np.concatenate((self._pending, resampled)) if self._pending.size else resampled
        events: list[VadEvent] = []
        n = pcm.size // FRAME_SAMPLES
        for i in range(n):
            frame = pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
            event = self._judge(self._vad.is_speech(frame.tobytes(), VAD_RATE))
            if event:
                events.append(event)
        self._pending = pcm[n * FRAME_SAMPLES :].copy()
        return events

    def _judge(self, voiced: bool) -> VadEvent | None:
        start_ms = self._frame_index * FRAME_MS
        self._frame_index += 1
        if voiced:
            self._voiced_run += 1
            self._silence_ms = 0
            self._pause_told = False
            self._last_voiced_end_ms = start_ms + FRAME_MS
            if not self.speaking and self._voiced_run >= START_FRAMES:
                self.speaking = True
                first_voiced_ms = start_ms - (START_FRAMES - 1) * FRAME_MS
                return VadEvent("speech_started", max(0, first_voiced_ms - self.prefix_padding_ms))
            return None
        self._voiced_run = 0
        if self.speaking:
            self._silence_ms += FRAME_MS
            if self._silence_ms >= self.silence_duration_ms:
                self.speaking = False
                return VadEvent("speech_stopped", self._last_voiced_end_ms)
            if self.pause_ms is not None and not self._pause_told and self._silence_ms >= self.pause_ms:
                self._pause_told = True
                return VadEvent("speech_paused", self._last_voiced_end_ms)
        return None

    def force_stop(self) -> VadEvent | None:
        """End a turn in progress (a manual commit during speech)."""
        if not self.speaking:
            return None
        self.speaking = False
        self._voiced_run = 0
        return VadEvent("speech_stopped", self._last_voiced_end_ms)
