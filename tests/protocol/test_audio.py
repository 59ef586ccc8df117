from __future__ import annotations

import base64

import numpy as np
import pytest

from voicerelay.protocol import audio


def test_pcm16_base64_round_trip() -> None:
    pcm = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    text = audio.pcm16_to_b64(pcm)
    assert base64.b64decode(text) == pcm.astype("<i2").tobytes()
    assert np.array_equal(audio.b64_to_pcm16(text), pcm)
    assert audio.pcm16_to_b64(pcm.tobytes()) == text


@pytest.mark.parametrize(("data", "fragment"), [
    ("not base64!!", "base64"),
    (base64.b64encode(b"\x00\x01\x02").decode(), "odd byte count"),
    (123, "expected a base64 string"),
])
def test_bad_audio_is_refused_with_invalid_value(data: object, fragment: str) -> None:
    with pytest.raises(audio.AudioFormatError) as info:
        audio.decode_b64(data)  # type: ignore[arg-type]
    assert info.value.code == "invalid_value" and fragment in str(info.value)


def test_float_conversion_clips_instead_of_wrapping() -> None:
    pcm = audio.float_to_pcm16(np.array([0.0, 0.5, 1.5, -2.0], dtype=np.float32))
    assert pcm.tolist() == [0, 16384, 32767, -32767]
    back = audio.pcm16_to_float(pcm)
    assert back.dtype == np.float32 and abs(back[1] - 0.5) < 1e-3


def test_levels_and_durations() -> None:
    assert audio.rms_dbfs(np.zeros(10, dtype=np.int16)) == float("-inf")
    full = np.full(100, 32767, dtype=np.int16)
    assert abs(audio.rms_dbfs(full)) < 0.01
    assert audio.duration_ms(48_000) == 1000 and audio.ms_to_bytes(20) == 960


def test_frame_splitter_cuts_exact_frames_and_pads_the_rest() -> None:
    splitter = audio.FrameSplitter(frame_ms=20)
    assert splitter.feed(b"\x01" * 500) == []
    frames = splitter.feed(b"\x02" * 1500)
    assert [len(f) for f in frames] == [960, 960]
    assert frames[0][:500] == b"\x01" * 500
    rest = splitter.flush()
    assert len(rest) == 1 and len(rest[0]) == 960 and rest[0].endswith(b"\0")
    assert splitter.flush() == []
