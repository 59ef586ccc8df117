"""The echo path without devices: far blocks at the speakers' rate with their playing times,
microphone frames with their capture times, a synthetic room in between."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from voicerelay.audio.echo import ENGINES, FRAME, EchoPath, EchoUnavailable, load_engine

from ..conftest import read_recording

OUT_RATE = 44_100
BLOCK_S = 0.02
MIC_BLOCK_S = 0.04


def engines() -> list[str]:
    usable = []
    for name in ENGINES:
        try:
            load_engine(name)
        except EchoUnavailable:
            continue
        usable.append(name)
    return usable


def room(far24: np.ndarray, delay_s: float, gain: float, voice: np.ndarray | None = None) -> np.ndarray:
    """The microphone: the far end delayed and attenuated, plus a voice, plus a little noise."""
    d = round(delay_s * 24_000)
    mic = np.zeros(far24.size, dtype=np.float64)
    mic[d:] = far24[:-d] * gain
    if voice is not None:
        mic[:voice.size] += voice
    mic += np.random.default_rng(0).normal(0, 3, mic.size)
    return np.clip(mic, -32768, 32767).astype(np.int16)


def drive(path: EchoPath, far24: np.ndarray, mic: np.ndarray, jitter_s: float = 0.0) -> np.ndarray:
    """Play ``far24`` through the path's far side (resampled to the device rate, in 20 ms blocks
    heard 40 ms after they are handed) and the microphone through its near side (40 ms blocks,
    captured 40 ms before they are processed), interleaved as two device threads would; times
    carry ``jitter_s`` of random error, as PortAudio's do."""
    rng = np.random.default_rng(1)
    far_out = soxr.resample(far24, 24_000, OUT_RATE).astype(np.int16)
    block, mic_block = round(OUT_RATE * BLOCK_S), round(24_000 * MIC_BLOCK_S)
    t0 = 1000.0
    handed = 0
    out = []
    for start in range(0, mic.size - mic_block + 1, mic_block):
        now = t0 + (start + mic_block) / 24_000 + 0.04  # when this microphone block is processed
        while handed < far_out.size and t0 + handed / OUT_RATE < now + 0.04:  # the speakers run ahead
            path.far(far_out[handed:handed + block], t0 + handed / OUT_RATE + rng.uniform(-jitter_s, jitter_s))
            handed += block
        frames = [mic[start + i:start + i + 480].tobytes() for i in range(0, mic_block, 480)]
        adc = t0 + start / 24_000 + rng.uniform(-jitter_s, jitter_s)
        out.append(np.frombuffer(b"".join(path.near(frames, adc)), dtype=np.int16))
    return np.concatenate(out)


def erle(mic: np.ndarray, out: np.ndarray, start: int) -> float:
    a = mic[start:out.size].astype(np.float64)
    b = out[start:].astype(np.float64)
    return 10 * np.log10((a @ a) / max(b @ b, 1.0))


@pytest.mark.parametrize("name", engines())
@pytest.mark.parametrize("jitter_s", [0.0, 0.002], ids=["exact times", "2 ms jitter"])
def test_the_echo_is_taken_out_when_the_times_match(name: str, jitter_s: float) -> None:
    far = np.concatenate([read_recording("what_can_you_do")] * 2)
    mic = room(far, delay_s=0.03, gain=0.5)
    path = EchoPath(load_engine(name), OUT_RATE, gate=False)
    out = drive(path, far, mic, jitter_s)
    value = erle(mic, out, out.size // 2)  # once converged
    print(f"{name}: ERLE {value:.1f} dB, {path.stats.cpu_per_audio_s * 100:.2f} % CPU")
    assert value > (10 if name == "speex" else 20), value
    assert path.converged or name == "speex"


def test_the_reference_is_the_far_end_at_the_microphone_time() -> None:
    """Without a canceller (one that returns the reference), the output is the far end as it was
    heard at each microphone frame's capture time, plus the lead."""
    from voicerelay.audio import echo

    class Reference:
        name = "reference"

        def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
            return far

    far = read_recording("what_can_you_do")
    path = EchoPath(Reference(), OUT_RATE, gate=False)
    out = drive(path, far, np.zeros_like(far))
    lead = echo.LEAD
    # out[k] = far[k + lead], give or take the resamplers' few samples
    a, b = out[2400:-2400].astype(np.float64), far[2400 + lead:2400 + lead + out.size - 4800].astype(np.float64)
    shifts = {s: float(np.dot(a[50:-50], b[50 + s:b.size - 50 + s])) for s in range(-20, 21)}
    best = max(shifts, key=shifts.get)
    assert abs(best) <= 3, best


def test_a_voice_over_the_echo_goes_through() -> None:
    far = np.concatenate([read_recording("what_can_you_do")] * 2)
    voice = np.zeros(far.size)
    hello = read_recording("hello_there").astype(np.float64)
    at = far.size - hello.size - 24_000
    voice[at:at + hello.size] = hello
    mic = room(far, delay_s=0.03, gain=0.5, voice=voice)
    path = EchoPath(load_engine(engines()[0]), OUT_RATE)
    out = drive(path, far, mic)
    kept = out[at:at + hello.size].astype(np.float64)
    level = 10 * np.log10((kept @ kept) / (hello @ hello))
    assert level > -10, level  # the voice, not silence (the gate lets a voice through)


def test_an_unknown_or_missing_canceller_says_why() -> None:
    with pytest.raises(EchoUnavailable, match="no echo canceller called 'nope'"):
        load_engine("nope")


@pytest.mark.parametrize("name", engines())
def test_between_replies_the_canceller_rests_and_resumes_where_it_left_off(name: str) -> None:
    """Far end: a reply, 3 s of silence (the output stream playing zeros), the reply again. In the
    silence the microphone (a voice) goes up untouched once the room's echo has died away; the
    second reply's echo is taken out at once, without learning the room again."""
    from voicerelay.audio import echo

    reply = read_recording("what_can_you_do")
    gap = 3 * 24_000
    far = np.concatenate([reply, reply, np.zeros(gap, dtype=np.int16), reply, reply])
    voice = np.zeros(far.size)
    hello = read_recording("hello_there").astype(np.float64)
    at = 2 * reply.size + 24_000  # a second into the silence
    voice[at:at + hello.size] = hello
    mic = room(far, delay_s=0.03, gain=0.5, voice=voice)
    # (speex's stand-in for a high-pass filter, a DC blocker, does not rest: it is not the canceller's)
    path = EchoPath(load_engine(name, high_pass=name != "speex"), OUT_RATE)
    out = drive(path, far, mic)
    rest = slice(2 * reply.size + echo.IDLE_FRAMES * FRAME + 2400, 2 * reply.size + gap - 2400)
    assert np.array_equal(out[rest], mic[rest]), "the microphone is not passed as it is while the far end is silent"
    assert path.stats.relearns == 0
    again = 2 * reply.size + gap
    value = erle(mic[:again + reply.size], out[:again + reply.size], again + 2400)
    print(f"{name}: ERLE of the reply after the silence {value:.1f} dB")
    assert value > (10 if name == "speex" else 20), value


def onset_lost_ms(out: np.ndarray, voice: np.ndarray, at: int) -> float:
    """How much of the start of ``voice`` (added to the microphone at ``at``) is missing from
    ``out``: from its first 10 ms frame within 30 dB of its loudest to the first one in ``out`` no
    more than 6 dB below it. ``voice`` is found in ``out`` by correlation (a held-back onset sent
    late moves it)."""
    def levels(x: np.ndarray) -> np.ndarray:
        x = x[:x.size // FRAME * FRAME].astype(np.float64).reshape(-1, FRAME)
        return 10 * np.log10((x * x).mean(axis=1) + 1e-3)

    said = levels(voice)
    speech = np.flatnonzero(said > said.max() - 30)
    body = voice[(speech[0] + 20) * FRAME:]
    start = at + (speech[0] + 20) * FRAME
    lag = max(range(0, 24 * 400, 8), key=lambda k: float(np.dot(out[start + k:start + k + body.size], body)))
    loss = levels(out[at + lag:at + lag + voice.size])[:said.size] - said
    return float((next(k for k in speech if loss[k] > -6) - speech[0]) * 10)


def test_a_voice_over_the_reply_keeps_its_start() -> None:
    """Double talk: the user starts speaking mid-reply, as loud as the reply's echo. Its first
    syllable is as quiet as a residue: the gate held back 220 ms of it (the canceller alone loses
    10-30 ms); now it sends what it held before the frame where it sees the voice."""
    parts = [read_recording(stem) for stem in ("what_can_you_do", "how_are_you", "weather_in_paris", "what_is_your_name")]
    far = np.concatenate(parts * 2)
    hello = read_recording("hello_there").astype(np.float64) * 0.5
    at = far.size // 2
    voice = np.zeros(far.size)
    voice[at:at + hello.size] = hello
    mic = room(far, delay_s=0.03, gain=0.5, voice=voice)
    name = engines()[0]
    path = EchoPath(load_engine(name), OUT_RATE)
    lost = onset_lost_ms(drive(path, far, mic).astype(np.float64), hello, at)
    print(f"{name}: {lost:.0f} ms of the voice's start lost")
    assert lost <= 40, lost


def test_the_reply_alone_is_never_taken_for_a_voice() -> None:
    """Nothing is held back and sent late while only the reply sounds (it would be its echo)."""
    parts = [read_recording(stem) for stem in ("what_can_you_do", "how_are_you", "weather_in_paris", "what_is_your_name")]
    far = np.concatenate(parts * 3)
    for name in engines():
        path = EchoPath(load_engine(name), OUT_RATE)
        out = drive(path, far, room(far, delay_s=0.03, gain=0.5))
        assert path.stats.preroll_frames == 0 and out.size == far.size // 960 * 960, name
