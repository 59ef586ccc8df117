"""Server VAD on real speech: the recordings (espeak-ng plus light noise)."""

from __future__ import annotations

import numpy as np
import pytest

from voicerelay.backend.phrases import RECORDING_SENTENCES
from voicerelay.backend.vad import VoiceActivityDetector, aggressiveness

from ..conftest import read_recording, room_noise


def speech_bounds(pcm: np.ndarray) -> tuple[int, int]:
    """Where the speech is, in ms, from the signal itself (noise floor is ~30 dB down)."""
    frames = pcm[: pcm.size // 240 * 240].astype(np.float64).reshape(-1, 240)  # 10 ms frames
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = np.flatnonzero(rms > rms.max() / 10)
    return int(loud[0] * 10), int((loud[-1] + 1) * 10)


def run_vad(pcm: np.ndarray, chunk: int = 480, **kw: int) -> list[tuple[str, int]]:
    vad = VoiceActivityDetector(**kw)
    events = []
    for i in range(0, pcm.size, chunk):
        events += [(e.kind, e.ms) for e in vad.feed(pcm[i : i + chunk])]
    return events


@pytest.mark.parametrize("stem", sorted(RECORDING_SENTENCES))
def test_each_recording_is_one_turn_with_correct_times(stem: str) -> None:
    pcm = read_recording(stem)
    pcm = np.concatenate((pcm, room_noise(500)))  # extra trailing noise: the turn must close
    start, end = speech_bounds(pcm)
    events = run_vad(pcm, prefix_padding_ms=300, silence_duration_ms=500)
    assert [k for k, _ in events] == ["speech_started", "speech_stopped"]
    (_, audio_start_ms), (_, audio_end_ms) = events
    assert abs(audio_start_ms - max(0, start - 300)) <= 80  # prefix padding included
    assert abs(audio_end_ms - end) <= 160


def test_chunk_size_does_not_change_the_result() -> None:
    pcm = read_recording("hello_there")
    pcm = np.concatenate((pcm, room_noise(500)))
    assert run_vad(pcm, chunk=480) == run_vad(pcm, chunk=7) == run_vad(pcm, chunk=24_000)


def test_noise_alone_is_not_speech() -> None:
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 200, 24_000 * 3).astype(np.int16)
    assert run_vad(noise) == []


def test_threshold_maps_onto_webrtcvad_modes() -> None:
    assert [aggressiveness(t) for t in (0.0, 0.3, 0.5, 0.9, 1.0)] == [0, 1, 2, 3, 3]


def test_force_stop_ends_a_turn_in_progress() -> None:
    pcm = read_recording("what_is_your_name")
    vad = VoiceActivityDetector()
    start, _ = speech_bounds(pcm)
    events = vad.feed(pcm[: (start + 400) * 24])
    assert [e.kind for e in events] == ["speech_started"]
    stopped = vad.force_stop()
    assert stopped is not None and stopped.kind == "speech_stopped" and stopped.ms > start
    assert vad.force_stop() is None


@pytest.mark.parametrize("stem", sorted(RECORDING_SENTENCES))
def test_a_pause_is_told_once_before_the_turn_ends_with_the_same_end(stem: str) -> None:
    pcm = np.concatenate((read_recording(stem), room_noise(500)))
    events = run_vad(pcm, prefix_padding_ms=300, silence_duration_ms=500, pause_ms=150)
    assert [k for k, _ in events] == ["speech_started", "speech_paused", "speech_stopped"]
    assert events[1][1] == events[2][1]  # where the speech ended
    assert [e for e in events if e[0] != "speech_paused"] == run_vad(pcm, prefix_padding_ms=300,
                                                                     silence_duration_ms=500)


def test_speech_that_resumes_after_a_pause_is_one_turn_with_a_pause_told_each_time() -> None:
    speech = read_recording("hello_there")
    start, end = speech_bounds(speech)
    pcm = np.concatenate((speech[: end * 24], room_noise(300), speech[start * 24 :], room_noise(500)))
    events = run_vad(pcm, pause_ms=150)
    assert [k for k, _ in events] == ["speech_started", "speech_paused", "speech_paused", "speech_stopped"]
    assert events[1][1] < events[2][1] == events[3][1]
