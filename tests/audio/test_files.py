"""AudioFileStream and WavWriter on real files: formats, resampling, chunking, errors, memory."""

from __future__ import annotations

import os
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voicerelay.audio.files import AudioFileError, AudioFileStream, WavWriter, read_wav_layout
from voicerelay.protocol.audio import SAMPLE_RATE

CHUNK = SAMPLE_RATE * 20 // 1000  # 480 samples in a 20 ms chunk


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(pcm: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[np.argmax(spectrum)])


def stream_all(path: Path, chunk_ms: int = 20) -> tuple[AudioFileStream, list[np.ndarray]]:
    with AudioFileStream(path, chunk_ms=chunk_ms) as stream:
        chunks = list(stream)
    return stream, chunks


@pytest.mark.parametrize(
    ("rate", "channels", "subtype"),
    [(44_100, 2, "FLOAT"), (8_000, 1, "PCM_16"), (48_000, 1, "PCM_24"), (16_000, 1, "ULAW"), (22_050, 3, "PCM_32")],
)
def test_any_wav_comes_out_24k_mono_with_the_same_sound(tmp_path: Path, rate: int, channels: int, subtype: str) -> None:
    seconds = 1.5
    tone = sine(440, rate, seconds)
    # Channels at different levels: the mixdown is their average (0.5 at unit gain).
    gains = np.linspace(1.4, 0.6, channels) if channels > 1 else np.ones(1)
    data = np.stack([tone * g for g in gains], axis=1)
    path = tmp_path / f"tone_{rate}.wav"
    soundfile.write(path, data, rate, subtype=subtype)

    stream, chunks = stream_all(path)
    assert (stream.source_rate, stream.channels, stream.frames) == (rate, channels, len(tone))
    assert stream.duration_s == pytest.approx(seconds, abs=1 / rate)
    assert all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    assert all(len(c) == CHUNK for c in chunks[:-1]) and 0 < len(chunks[-1]) <= CHUNK
    pcm = np.concatenate(chunks)
    assert abs(len(pcm) - seconds * SAMPLE_RATE) <= CHUNK
    assert peak_hz(pcm) == pytest.approx(440, abs=2)
    middle = pcm[len(pcm) // 4 : 3 * len(pcm) // 4].astype(np.float64) / 32767
    tolerance = 0.05 if subtype == "ULAW" else 0.01
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=tolerance)


def test_24k_mono_pcm16_passes_through_bit_exact_and_chunks_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pcm = rng.integers(-32768, 32767, 1000, dtype=np.int16)
    path = tmp_path / "exact.wav"
    soundfile.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
    _, chunks = stream_all(path, chunk_ms=10)
    assert [len(c) for c in chunks] == [240, 240, 240, 240, 40]
    assert np.array_equal(np.concatenate(chunks), pcm)


def test_resampled_length_is_exact_and_nothing_is_lost_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    soundfile.write(path, sine(440, 8_000, 0.25), 8_000, subtype="PCM_16")  # 2000 frames -> 6000 samples
    _, chunks = stream_all(path)
    assert [len(c) for c in chunks] == [480] * 12 + [240]
    # The tail survives the resampler's flush: the last chunk is not silence.
    assert np.abs(chunks[-1][:200]).max() > 8000


def test_each_iteration_starts_from_the_beginning(tmp_path: Path) -> None:
    path = tmp_path / "again.wav"
    soundfile.write(path, sine(300, 44_100, 0.3), 44_100)
    with AudioFileStream(path) as stream:
        first = np.concatenate(list(stream))
        second = np.concatenate(list(stream))
    assert np.array_equal(first, second)
    with pytest.raises(ValueError):
        iter(stream)


def test_chunk_ms_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        AudioFileStream(tmp_path / "x.wav", chunk_ms=0)


# ----------------------------------------------------------------------------- errors


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.wav"
    path.write_text("these are not the samples you are looking for\n" * 20)
    return path


def _empty_wav(tmp_path: Path) -> Path:
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    return path


def _truncated_wav(tmp_path: Path) -> Path:
    whole = tmp_path / "whole.wav"
    soundfile.write(whole, sine(440, SAMPLE_RATE, 1.0), SAMPLE_RATE, subtype="PCM_16")
    data = whole.read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) // 2])
    return path


def _header_only(tmp_path: Path) -> Path:
    whole = tmp_path / "whole.wav"
    soundfile.write(whole, sine(440, SAMPLE_RATE, 0.1), SAMPLE_RATE, subtype="PCM_16")
    path = tmp_path / "stub.wav"
    path.write_bytes(whole.read_bytes()[:30])
    return path


def _zero_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p / "missing.wav", "no such file"),
        (lambda p: p, "is a directory"),
        (_text_file, "not an audio file"),
        (_zero_bytes, "not"),
        (_empty_wav, "empty"),
        (_truncated_wav, "truncated"),
        (_header_only, "not"),
    ],
    ids=["missing", "directory", "text", "zero-bytes", "empty", "truncated", "header-only"],
)
def test_bad_files_raise_one_line_audio_file_errors(tmp_path: Path, make, fragment: str) -> None:
    path = make(tmp_path)
    with pytest.raises(AudioFileError) as info:
        AudioFileStream(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot read {path}: ")
    assert fragment in message


def test_truncated_wav_reports_promised_and_actual_sizes(tmp_path: Path) -> None:
    path = _truncated_wav(tmp_path)
    layout = read_wav_layout(path)
    assert layout is not None and layout.truncated
    assert layout.declared_bytes == 48_000 and layout.available_bytes < 48_000
    with pytest.raises(AudioFileError, match=r"header promises 48000 bytes of audio but the file holds \d+"):
        AudioFileStream(path)


def test_truncated_aiff_is_detected_too(tmp_path: Path) -> None:
    whole = tmp_path / "whole.aiff"
    soundfile.write(whole, sine(440, SAMPLE_RATE, 1.0), SAMPLE_RATE, subtype="PCM_16")
    path = tmp_path / "cut.aiff"
    path.write_bytes(whole.read_bytes()[:20_000])
    with pytest.raises(AudioFileError, match="truncated"):
        AudioFileStream(path)


def test_truncated_flac_fails_while_streaming_with_an_audio_file_error(tmp_path: Path) -> None:
    whole = tmp_path / "whole.flac"
    soundfile.write(whole, sine(440, SAMPLE_RATE, 2.0), SAMPLE_RATE)
    path = tmp_path / "cut.flac"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioFileError) as info:
        with AudioFileStream(path) as stream:  # FLAC's header is intact: the damage shows when reading
            for _ in stream:
                pass
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_wav_left_unclosed_by_a_crash_is_still_readable(tmp_path: Path) -> None:
    path = tmp_path / "crashed.wav"
    pcm = np.arange(-500, 500, dtype=np.int16)
    writer = WavWriter(path)
    writer.write(pcm)
    snapshot = tmp_path / "snapshot.wav"
    snapshot.write_bytes(path.read_bytes())  # what a crash would leave: data size 0 in the header
    writer.close()
    layout = read_wav_layout(snapshot)
    assert layout is not None and not layout.truncated and layout.available_bytes == pcm.nbytes
    _, chunks = stream_all(snapshot)
    assert np.array_equal(np.concatenate(chunks), pcm)


def _open_as_nobody(path: Path) -> str:
    """Open ``path`` in a child process running as user nobody; the outcome as text."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+): the child only opens a file
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                AudioFileStream(path).close()
                outcome = "opened"
            except AudioFileError as exc:
                outcome = f"AudioFileError: {exc}"
            except BaseException as exc:  # noqa: BLE001 - report anything to the parent
                outcome = f"{type(exc).__name__}: {exc}"
            os.write(write_fd, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


@pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_unreadable_file_is_an_audio_file_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.wav"
    soundfile.write(path, sine(440, SAMPLE_RATE, 0.1), SAMPLE_RATE, subtype="PCM_16")
    path.chmod(0)
    try:
        if os.geteuid() == 0:  # root reads anything: try as nobody instead
            outcome = _open_as_nobody(path)
            assert outcome == f"AudioFileError: cannot read {path}: permission denied"
        else:
            with pytest.raises(AudioFileError) as info:
                AudioFileStream(path)
            assert str(info.value) == f"cannot read {path}: permission denied"
    finally:
        path.chmod(0o600)


# ----------------------------------------------------------------------------- long files


def test_a_long_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "ten_minutes.wav"
    rate, seconds = 8_000, 600
    second = (sine(440, rate, 1.0) * 32767).astype(np.int16)
    with WavWriter(path, rate=rate) as writer:
        for _ in range(seconds):
            writer.write(second)
        assert writer.frames_written == rate * seconds
    decoded_bytes = seconds * SAMPLE_RATE * 2  # 28.8 MB once decoded at 24 kHz

    def stream_through() -> int:
        total = 0
        with AudioFileStream(path) as stream:
            assert stream.duration_s == seconds
            for chunk in stream:
                total += len(chunk)
        return total

    # A first, untraced pass warms the interpreter's own tables (a one-off resize of a global
    # dict, ~2 MB, was seen mid-stream in a long pytest run); the traced pass is steady state.
    assert abs(stream_through() - seconds * SAMPLE_RATE) <= CHUNK
    tracemalloc.start()
    try:
        total = stream_through()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert abs(total - seconds * SAMPLE_RATE) <= CHUNK
    assert peak < decoded_bytes / 40, f"peak {peak} bytes"  # ~0.25 MB in practice


# ----------------------------------------------------------------------------- WavWriter


def test_wav_writer_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    rng = np.random.default_rng(7)
    parts = [rng.integers(-32768, 32767, n, dtype=np.int16) for n in (480, 100, 7, 0, 960)]
    with WavWriter(path) as writer:
        writer.write(parts[0])
        writer.write(parts[1].tobytes())
        writer.write(bytearray(parts[2].tobytes()))
        writer.write(memoryview(parts[3].tobytes()))
        writer.write(parts[4][::-1][::-1])  # a view is fine
        assert writer.frames_written == sum(len(p) for p in parts)
    assert writer.closed
    writer.close()  # idempotent
    expected = np.concatenate(parts)
    back, rate = soundfile.read(path, dtype="int16")
    info = soundfile.info(path)
    assert rate == SAMPLE_RATE and info.channels == 1 and info.subtype == "PCM_16" and info.format == "WAV"
    assert np.array_equal(back, expected)
    _, chunks = stream_all(path)
    assert np.array_equal(np.concatenate(chunks), expected)


def test_wav_writer_refuses_bad_input(tmp_path: Path) -> None:
    with WavWriter(tmp_path / "w.wav") as writer:
        with pytest.raises(ValueError, match="whole number"):
            writer.write(b"\x00\x01\x02")
        with pytest.raises(TypeError, match="int16"):
            writer.write(np.zeros(4, dtype=np.float32))
        with pytest.raises(ValueError, match="mono"):
            writer.write(np.zeros((4, 2), dtype=np.int16))
        assert writer.frames_written == 0
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"\x00\x00")
    target = tmp_path / "no" / "such" / "folder.wav"
    with pytest.raises(AudioFileError) as info:
        WavWriter(target)
    assert str(info.value) == f"cannot write {target}: no such file"
