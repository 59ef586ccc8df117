from __future__ import annotations

import base64

import numpy as np
import pytest

from voicerelay.protocol import audio


def test_pcm16_base64_round_trip() -> None:
    pcm = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    text = audio.pcm16_to_b64(pcm)
    assert base64.b64decode(text) == pcm.astype("<i2").tobytes()
    assert np.array_equal(np.frombuffer(audio.decode_b64(text), dtype="<i2"), pcm)
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


@pytest.mark.parametrize(("data", "nbytes"), [
    ("", 0),
    ("AAAA", 3),
    ("AAA=", 2),  # padding: 2 bytes, even
    ("AA==", 1),
    (base64.b64encode(bytes(range(256)) * 8).decode(), 2048),
    ("+/+/", 3),
])
def test_b64_nbytes_counts_without_decoding(data: str, nbytes: int) -> None:
    assert audio.b64_nbytes(data) == nbytes == len(base64.b64decode(data, validate=True))


@pytest.mark.parametrize("data", [
    "AAA",  # not a multiple of 4
    "AAAAA",
    "AA=A",  # padding inside
    "A===",  # three =
    "====",
    "=AAA",
    "AAAA AAAA",  # whitespace is refused, as by decode_b64
    "AAAA\n",
    "AA-_",  # the URL-safe alphabet is not base64 here
    "AAé=",  # not ASCII
    "AAA\x00",
    "AAAA=",  # = after a complete group: Python's decoder lets it through, a browser's atob does not
    "AAAAAAAA==",
])
def test_b64_nbytes_refuses_what_is_not_strict_base64(data: str) -> None:
    with pytest.raises(audio.AudioFormatError, match="base64"):
        audio.b64_nbytes(data)


def test_b64_pcm16_nbytes_refuses_odd_byte_counts_padded_or_not() -> None:
    assert audio.b64_pcm16_nbytes("AAA=") == 2
    assert audio.b64_pcm16_nbytes(base64.b64encode(b"\0" * 1920).decode()) == 1920
    for odd in (b"\0", b"\0\1\2", b"\0" * 1921):
        with pytest.raises(audio.AudioFormatError, match="odd byte count"):
            audio.b64_pcm16_nbytes(base64.b64encode(odd).decode())
    with pytest.raises(audio.AudioFormatError, match="expected a base64 string"):
        audio.b64_pcm16_nbytes(b"AAAA")  # type: ignore[arg-type]


def test_b64_pcm16_nbytes_agrees_with_decoding() -> None:
    """On many short strings of base64 characters and a few others, the count is the decoded
    length wherever decode_b64 accepts, and an error wherever it refuses (but for "=" after a
    complete group, refused on purpose)."""
    rng = np.random.default_rng(6)
    symbols = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") + list("==== \n-_"))
    accepted = refused = 0
    for _ in range(20_000):
        data = "".join(rng.choice(symbols, size=int(rng.integers(0, 13))))
        try:
            expected: int | None = len(audio.decode_b64(data))
        except audio.AudioFormatError:
            expected = None
        try:
            got: int | None = audio.b64_pcm16_nbytes(data)
        except audio.AudioFormatError:
            got = None
        if expected is not None and got is None and len(data.rstrip("=")) % 4 == 0 and data.endswith("="):
            continue  # the one stricter case
        assert got == expected, data
        accepted += got is not None
        refused += got is None
    assert accepted > 500 and refused > 500


def test_float_conversion_clips_instead_of_wrapping() -> None:
    pcm = audio.float_to_pcm16(np.array([0.0, 0.5, 1.5, -2.0], dtype=np.float32))
    assert pcm.tolist() == [0, 16384, 32767, -32767]


def test_levels_and_durations() -> None:
    assert audio.rms_dbfs(np.zeros(10, dtype=np.int16)) == float("-inf")
    full = np.full(100, 32767, dtype=np.int16)
    assert abs(audio.rms_dbfs(full)) < 0.01
    assert audio.ms_to_bytes(20) == 960 and audio.ms_to_bytes(1000) == 48_000


def test_frame_splitter_cuts_exact_frames_and_pads_the_rest() -> None:
    splitter = audio.FrameSplitter(frame_ms=20)
    assert splitter.feed(b"\x01" * 500) == []
    frames = splitter.feed(b"\x02" * 1500)
    assert [len(f) for f in frames] == [960, 960]
    assert frames[0][:500] == b"\x01" * 500
    rest = splitter.flush()
    assert len(rest) == 1 and len(rest[0]) == 960 and rest[0].endswith(b"\0")
    assert splitter.flush() == []
