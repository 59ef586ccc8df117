"""The playback buffer without a device: a hand-driven clock stands in for time, the test reads
blocks the way an output callback does."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from voicerelay.audio.playback import PlaybackBuffer

RATE = 24_000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1000


def ramp(ms: int, start: int = 1) -> bytes:
    """``ms`` of distinct non-zero samples (so order and gaps show)."""
    return (np.arange(ms * 24, dtype=np.int64) % 30_000 + start).astype("<i2").tobytes()


def play(buffer: PlaybackBuffer, clock: Clock, ms: int, block_ms: int = 20, delay: float | None = None) -> np.ndarray:
    """Read ``ms`` of output in blocks, the clock moving in real time."""
    out = []
    for _ in range(ms // block_ms):
        out.append(buffer.read(block_ms * 24, delay))
        clock.advance(block_ms)
    return np.concatenate(out)


def test_read_always_returns_the_frames_asked_for() -> None:
    buffer = PlaybackBuffer(preroll_ms=0)
    assert buffer.idle
    silence = buffer.read(441)
    assert silence.shape == (441,) and silence.dtype == np.int16 and not silence.any()
    buffer.feed(ramp(10), "item_a")
    out = buffer.read(441)
    assert out.shape == (441,) and out[:240].all() and not out[240:].any()


def test_an_item_waits_for_its_preroll() -> None:
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=80, clock=clock)
    buffer.feed(ramp(40), "item_a")
    assert not play(buffer, clock, 40).any()  # 40 ms queued: not yet
    assert not buffer.idle and buffer.queued_ms == 40
    buffer.feed(ramp(60, start=1 + 40 * 24), "item_a")
    out = play(buffer, clock, 100)
    assert np.array_equal(out, np.frombuffer(ramp(100), dtype="<i2"))


def test_a_complete_response_shorter_than_the_preroll_plays_at_once() -> None:
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=80, clock=clock)
    buffer.feed(ramp(30), "item_a")
    assert not buffer.read(480).any()
    buffer.finish()
    assert buffer.read(480).all()


def test_a_stalled_item_plays_after_max_wait() -> None:
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=80, max_wait_ms=200, clock=clock)
    buffer.feed(ramp(30), "item_a")
    assert not play(buffer, clock, 180).any()
    assert play(buffer, clock, 60).any()  # by 200 ms (give or take float rounding)


def test_no_underrun_between_deltas_of_one_response() -> None:
    """40 ms deltas arriving up to 35 ms behind their real-time schedule, and in bursts, play back
    as one unbroken stream with an 80 ms pre-roll."""
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=80, clock=clock)
    rng = np.random.default_rng(7)
    deltas = [ramp(40, start=1 + i * 960) for i in range(75)]
    due = [0.04 * i + rng.uniform(0, 0.035) for i in range(75)]  # seconds after the first delta is due
    due[30:36] = [due[30]] * 6  # a burst: five deltas early
    start, out, fed = clock.now, [], 0
    while fed < len(deltas) or not buffer.idle:
        while fed < len(deltas) and clock.now - start >= due[fed]:
            buffer.feed(deltas[fed], "item_a")
            fed += 1
        if fed == len(deltas):
            buffer.finish()
        out.append(buffer.read(240))  # 10 ms blocks
        clock.advance(10)
    played = np.concatenate(out)
    audio = np.flatnonzero(played)
    assert buffer.underruns == 0
    assert np.array_equal(played[audio[0]:audio[-1] + 1], np.frombuffer(b"".join(deltas), dtype="<i2"))


def test_without_a_preroll_late_deltas_underrun() -> None:
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=0, clock=clock)
    for i in range(10):
        buffer.feed(ramp(40), "item_a")
        play(buffer, clock, 40 + (20 if i % 2 else 0), block_ms=10)  # every other delta 20 ms late
    assert buffer.underruns == 5


def test_stop_returns_what_was_heard_not_what_was_handed() -> None:
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=80, clock=clock)
    buffer.feed(ramp(1000), "item_a")
    play(buffer, clock, 600, block_ms=20, delay=0.05)  # 600 ms handed; each block heard 50 ms later
    # the last block was read 20 ms ago (the clock moved on): of it and the 50 ms latency, 50 ms are unheard
    assert buffer.played_ms("item_a") == 550
    assert buffer.stop() == ("item_a", 550)
    assert buffer.idle and buffer.queued_ms == 0
    assert not play(buffer, clock, 100).any()  # the queue was dropped
    assert buffer.played_ms("item_a") == 550  # and the unheard part never counts again


def test_played_never_exceeds_received() -> None:
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=0, latency=0.03, clock=clock)
    buffer.feed(ramp(100), "item_a")
    play(buffer, clock, 400)
    assert buffer.played_ms("item_a") == buffer.received_ms("item_a") == 100
    assert buffer.stop() == ("item_a", 100)


def test_stop_before_anything_was_heard() -> None:
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=80, clock=clock)
    assert buffer.stop() == (None, 0)
    buffer.feed(ramp(40), "item_a")  # still in its pre-roll
    assert buffer.stop() == ("item_a", 0)
    buffer.feed(ramp(200), "item_b")
    buffer.read(480, 0.1)  # handed, but 100 ms from the speaker
    assert buffer.stop() == ("item_b", 0)


def test_audio_in_flight_across_two_items() -> None:
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=0, clock=clock)
    buffer.feed(ramp(100), "item_a")
    buffer.feed(ramp(100), "item_b")
    play(buffer, clock, 140, delay=0.08)  # a: 100 handed, b: 40 handed; 80 ms in flight
    assert buffer.stop() == ("item_b", 0)
    assert buffer.played_ms("item_a") == 60


def test_playback_resumes_after_a_stop() -> None:
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=80, clock=clock)
    buffer.feed(ramp(500), "item_a")
    play(buffer, clock, 200)
    buffer.stop()
    buffer.feed(ramp(100), "item_b")
    out = play(buffer, clock, 100, delay=0.02)
    assert np.array_equal(out, np.frombuffer(ramp(100), dtype="<i2"))
    assert buffer.first_audio_latency("item_b") == pytest.approx(0.02)
    assert buffer.played_ms("item_a") == 200


def test_feed_and_read_from_two_threads() -> None:
    """The event loop feeds while the output callback reads: every sample comes out once, in order."""
    buffer = PlaybackBuffer(preroll_ms=0)
    total = 24 * 2000
    out: list[np.ndarray] = []

    def reader() -> None:
        got = 0
        while got < total:
            block = buffer.read(240)
            nonzero = block[block != 0]
            out.append(nonzero)
            got += nonzero.size

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(20):
        buffer.feed(ramp(100, start=1 + i * 2400), "item_a")
    thread.join(10)
    assert not thread.is_alive()
    assert np.array_equal(np.concatenate(out), np.frombuffer(b"".join(ramp(100, 1 + i * 2400) for i in range(20)),
                                                             dtype="<i2"))


# ---------------------------------------------------------------------- at the device's rate (resample_to)

DEVICE = 44_100


def tone(ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(ms * 24) / RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes()


def play_device(buffer: PlaybackBuffer, clock: Clock, ms: int, delay: float | None = None) -> np.ndarray:
    """Like ``play``, 20 ms blocks at 44.1 kHz, read into a device-owned array as the Speaker does."""
    out = []
    for _ in range(ms // 20):
        block = np.full(882, 12345, dtype="<i2")  # whatever the device's buffer held before
        buffer.read_into(block, delay)
        out.append(block)
        clock.advance(20)
    return np.concatenate(out)


def test_resampled_to_the_device_rate_as_it_is_fed() -> None:
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=80, clock=clock)
    buffer.resample_to(DEVICE)
    second = tone(1000)
    for i in range(50):  # 1 s in 20 ms deltas
        buffer.feed(second[i * 960:(i + 1) * 960], "item_a")
    buffer.finish()  # the resampler's last few samples come out too
    assert buffer.queued_ms == pytest.approx(1000, abs=1)
    out = play_device(buffer, clock, 1200)
    assert not out[DEVICE + 10:].any()  # zero-filled once the audio ran out, nothing left in the device's block
    expected = np.sin(2 * np.pi * 440 * np.arange(DEVICE) / DEVICE) * 8000  # the same tone, at 44.1 kHz
    assert np.abs(out[:DEVICE].astype(float) - expected)[200:-200].max() < 50  # the same tone
    assert buffer.played_ms("item_a") == buffer.received_ms("item_a") == 1000
    assert buffer.idle and buffer.underruns == 0


def test_resampled_items_keep_their_own_samples() -> None:
    """A reply's second item follows the first without a finish() between: the first's resampler tail is its own."""
    clock = Clock()
    buffer = PlaybackBuffer(preroll_ms=0, clock=clock)
    buffer.resample_to(DEVICE)
    buffer.feed(tone(300), "item_a")
    buffer.feed(tone(300, hz=300), "item_b")
    play_device(buffer, clock, 400, delay=0.04)  # a: 300 ms, b: 100 ms handed; the last 40 ms not heard yet
    assert buffer.played_ms("item_a") == 300
    assert buffer.stop() == ("item_b", 60)
    assert buffer.played_ms("item_b") == 60 and buffer.received_ms("item_b") == 300
    buffer.feed(tone(100), "item_c")  # a fresh resampler after the stop: nothing of b comes back
    buffer.finish()
    assert buffer.queued_ms == pytest.approx(100, abs=1)


def test_stop_while_the_resampler_holds_the_only_audio() -> None:
    buffer = PlaybackBuffer(preroll_ms=0)
    buffer.resample_to(DEVICE)
    buffer.feed(tone(1)[:8], "item_a")  # 4 samples: all inside the resampler's delay
    assert buffer.stop() == ("item_a", 0)
    assert buffer.queued_ms == 0 and buffer.idle


def test_resample_to_comes_before_any_audio() -> None:
    buffer = PlaybackBuffer()
    buffer.feed(tone(20), "item_a")
    with pytest.raises(RuntimeError, match="before any audio"):
        buffer.resample_to(DEVICE)
