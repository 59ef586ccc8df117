"""Recorder and RecordedSession on real folders: round trip, key scrubbing, errors, incremental writes."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from voicerelay.protocol.audio import SAMPLE_RATE, pcm16_to_b64
from voicerelay.recording import RecordedEvent, RecordedSession, Recorder, RecordingError, scrub

KEY = "sk-proj-AbCdEf0123456789_xyz-QRSTUV"


def ticking_clock(start: float = 1000.0, step: float = 0.02) -> Callable[[], float]:
    """A deterministic monotonic clock: each call advances by ``step`` seconds."""
    now = [start - step]

    def clock() -> float:
        now[0] += step
        return now[0]

    return clock


def pcm(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(-32768, 32767, n, dtype=np.int16).astype("<i2").tobytes()


def synthetic_session() -> tuple[list[tuple[str, dict[str, Any]]], bytes, bytes]:
    """Events both ways, GA and beta names; the input and output audio they carry."""
    inputs = [pcm(480, seed) for seed in range(5)]
    outputs = [pcm(960, 100 + seed) for seed in range(4)]
    events: list[tuple[str, dict[str, Any]]] = [
        ("up", {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}}),
        ("down", {"type": "session.created", "event_id": "e1", "session": {"id": "sess_1", "model": "gpt-realtime"}}),
    ]
    events += [("up", {"type": "input_audio_buffer.append", "audio": base64.b64encode(c).decode()}) for c in inputs]
    events += [
        ("up", {"type": "input_audio_buffer.commit"}),
        ("down", {"type": "input_audio_buffer.committed", "event_id": "e2", "item_id": "item_1"}),
        ("down", {"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_1",
                  "content_index": 0, "transcript": "What's the weather?"}),
        ("down", {"type": "response.output_audio.delta", "response_id": "r1", "item_id": "item_2",
                  "output_index": 0, "content_index": 0, "delta": base64.b64encode(outputs[0]).decode()}),
        ("down", {"type": "response.output_audio.delta", "response_id": "r1", "item_id": "item_2",
                  "output_index": 0, "content_index": 0, "delta": base64.b64encode(outputs[1]).decode()}),
        ("down", {"type": "response.output_text.delta", "response_id": "r1", "delta": "abcd"}),
        ("down", {"type": "response.output_audio_transcript.done", "response_id": "r1", "transcript": "Sunny."}),
        ("down", {"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_3",
                  "content_index": 0, "transcript": "And tomorrow?"}),
        # The beta dialect's names.
        ("down", {"type": "response.audio.delta", "response_id": "r2", "item_id": "item_4",
                  "output_index": 0, "content_index": 0, "delta": base64.b64encode(outputs[2]).decode()}),
        ("down", {"type": "response.audio.delta", "response_id": "r2", "item_id": "item_4",
                  "output_index": 0, "content_index": 0, "delta": base64.b64encode(outputs[3]).decode()}),
        ("down", {"type": "response.audio_transcript.done", "response_id": "r2", "transcript": "Rain."}),
        ("down", {"type": "response.done", "response": {"id": "r2", "status": "completed", "output": []}}),
    ]
    return events, b"".join(inputs), b"".join(outputs)


def record_session(folder: Path, events: list[tuple[str, dict[str, Any]]], **kwargs: Any) -> None:
    with Recorder(folder, clock=ticking_clock(), **kwargs) as recorder:
        for direction, event in events:
            recorder.record(direction, event)  # type: ignore[arg-type]


def lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "session.jsonl").read_text(encoding="utf-8").splitlines()]


def test_round_trip(tmp_path: Path) -> None:
    events, sent, received = synthetic_session()
    originals = copy.deepcopy(events)
    folder = tmp_path / "deep" / "rec"
    record_session(folder, events, metadata={"model": "gpt-realtime", "voice": "alloy", "dialect": "ga"})
    assert events == originals  # the caller's events are never mutated

    session = RecordedSession.open(folder)
    assert session.folder == folder
    meta = session.metadata
    assert meta["type"] == "voicerelay.recording" and meta["version"] == 1
    assert meta["created"].endswith("Z") and meta["model"] == "gpt-realtime" and meta["voice"] == "alloy"
    assert len(session.events) == len(events)
    assert [(r.direction, r.event["type"]) for r in session.events] == [(d, e["type"]) for d, e in events]
    times = [r.t for r in session.events]
    assert times == pytest.approx([0.02 * (i + 1) for i in range(len(events))])
    assert all(isinstance(r, RecordedEvent) for r in session.events)

    # Audio left as references in events, and in the files.
    first_append = next(r for r in session.events if r.event["type"] == "input_audio_buffer.append")
    assert first_append.event["audio"] == {"wav": "input.wav", "offset": 0, "bytes": 960}
    deltas = [r.event["delta"] for r in session.events if r.event["type"].endswith("audio.delta")]
    assert deltas[-1] == {"wav": "output.wav", "offset": 3 * 1920, "bytes": 1920}
    raw = (folder / "session.jsonl").read_text(encoding="utf-8")
    assert base64.b64encode(sent[:960]).decode() not in raw

    chunks = list(session.input_chunks())
    assert b"".join(c for _, c in chunks) == sent
    assert [t for t, _ in chunks] == [r.t for r in session.events if r.event["type"] == "input_audio_buffer.append"]
    assert [session.restored(r) for r in session.events] == [e for _, e in originals]
    assert session.audio({"wav": "output.wav", "offset": 0, "bytes": 1920 * 4}) == received

    # The WAVs are ordinary PCM16 mono 24 kHz files.
    for name, expected in (("input.wav", sent), ("output.wav", received)):
        data, rate = soundfile.read(folder / name, dtype="int16")
        assert rate == SAMPLE_RATE and data.ndim == 1 and data.astype("<i2").tobytes() == expected
        assert soundfile.info(folder / name).subtype == "PCM_16"

    assert session.transcripts() == {
        "user": ["What's the weather?", "And tomorrow?"],
        "assistant": ["Sunny.", "Rain."],
    }


def test_other_audio_is_elided_and_bad_audio_is_marked(tmp_path: Path) -> None:
    item_audio = pcm(4800, 9)
    picture = "data:image/png;base64," + base64.b64encode(bytes(3000)).decode()
    events = [
        ("down", {"type": "conversation.item.retrieved", "item": {"id": "item_1", "type": "message", "role": "user",
                  "content": [{"type": "input_audio", "audio": base64.b64encode(item_audio).decode(),
                               "transcript": "hello"}]}}),
        ("up", {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                "content": [{"type": "input_image", "image_url": picture}]}}),
        ("up", {"type": "input_audio_buffer.append", "audio": "not base64!!"}),
        ("up", {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x02\x03").decode()}),
        ("down", {"type": "response.output_audio.delta", "delta": 42}),
        ("up", {"type": "input_audio_buffer.append", "audio": pcm16_to_b64(pcm(10, 1))}),
    ]
    originals = copy.deepcopy(events)
    record_session(tmp_path / "rec", events)
    assert events == originals
    session = RecordedSession.open(tmp_path / "rec")
    retrieved, created, bad1, bad2, bad3, good = (r.event for r in session.events)
    assert retrieved["item"]["content"][0] == {"type": "input_audio", "audio": {"elided_bytes": len(item_audio)},
                                               "transcript": "hello"}
    assert created["item"]["content"][0]["image_url"] == {"elided_bytes": 3000}
    assert bad1["audio"] == bad2["audio"] == {"invalid_audio": True} and bad3["delta"] == {"invalid_audio": True}
    assert good["audio"] == {"wav": "input.wav", "offset": 0, "bytes": 20}
    assert [c for _, c in session.input_chunks()] == [pcm(10, 1)]
    assert session.restored(session.events[0]) == retrieved  # elided audio cannot come back


def test_odd_server_content_does_not_break_a_recording(tmp_path: Path) -> None:
    lookalike = {"wav": "../../etc/passwd", "offset": 0, "bytes": 4096}
    events = [
        ("down", {"type": "conversation.item.done", "item": {"metadata": lookalike}}),
        ("down", {"type": "response.output_text.delta", "delta": "broken \ud800 surrogate"}),
    ]
    record_session(tmp_path / "rec", events)
    session = RecordedSession.open(tmp_path / "rec")
    assert [session.restored(r) for r in session.events] == [e for _, e in events]


def test_api_keys_never_reach_a_recording(tmp_path: Path) -> None:
    events = [
        ("up", {"type": "session.update", "headers": {"Authorization": f"Bearer {KEY}"},
                "session": {"instructions": f"My key is {KEY}, keep it safe.",
                            "tools": [{"name": "lookup", "description": KEY, "api_key": KEY,
                                       "parameters": {"x-api-key": "abc"}}]}}),
        ("down", {"type": "error", "error": {"message": f"Incorrect API key provided: {KEY}.",
                                              "Authorization": "Bearer ek_1234567890abcdef"}}),
        ("down", {"type": "session.created", "session": {"client_secret": {"value": "ek_68af"}, "notes": [
            ["nested", f"{KEY}"], f"Bearer tok_abcdefghijklmnop and {KEY}"]}}),
        ("up", {"type": "input_audio_buffer.append", "audio": pcm16_to_b64(pcm(48, 3)),
                "OpenAI-Api-Key": KEY}),
    ]
    originals = copy.deepcopy(events)
    folder = tmp_path / "rec"
    record_session(folder, events, metadata={"url": f"wss://example.test/?key={KEY}", "Authorization": KEY})
    assert events == originals

    for name in ("session.jsonl", "input.wav", "output.wav"):
        content = (folder / name).read_bytes()
        assert KEY.encode() not in content and b"sk-proj" not in content and b"ek_" not in content
    header, update, error, created, append = lines(folder)
    assert "Authorization" not in header["event"] and header["event"]["url"] == "wss://example.test/?key=sk-…redacted"
    assert "headers" not in update["event"]
    assert update["event"]["session"]["instructions"] == "My key is sk-…redacted, keep it safe."
    tool = update["event"]["session"]["tools"][0]
    assert tool == {"name": "lookup", "description": "sk-…redacted", "parameters": {}}
    assert error["event"]["error"] == {"message": "Incorrect API key provided: sk-…redacted."}
    assert created["event"]["session"] == {"notes": [["nested", "sk-…redacted"], "Bearer …redacted and sk-…redacted"]}
    assert append["event"] == {"type": "input_audio_buffer.append",
                               "audio": {"wav": "input.wav", "offset": 0, "bytes": 96}}
    assert scrub({"a": [KEY]}) == {"a": ["sk-…redacted"]}


def test_writing_is_incremental(tmp_path: Path) -> None:
    folder = tmp_path / "live"
    recorder = Recorder(folder, metadata={"front_door": "talk"}, clock=ticking_clock())
    try:
        assert [line["dir"] for line in lines(folder)] == ["meta"]
        audio = pcm(480, 5)
        recorder.record("up", {"type": "input_audio_buffer.append", "audio": pcm16_to_b64(audio)})
        recorder.record("down", {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0})
        assert [line["dir"] for line in lines(folder)] == ["meta", "up", "down"]
        # Readable while being written, audio included (the WAV header is completed only on close).
        live = RecordedSession.open(folder)
        assert [c for _, c in live.input_chunks()] == [audio]
        assert live.metadata["front_door"] == "talk"
    finally:
        recorder.close()
    recorder.close()  # idempotent
    assert recorder.closed
    with pytest.raises(RecordingError, match="closed"):
        recorder.record("up", {"type": "input_audio_buffer.commit"})


def test_recorder_refuses_bad_folders_and_arguments(tmp_path: Path) -> None:
    record_session(tmp_path / "rec", [])
    with pytest.raises(RecordingError) as info:
        Recorder(tmp_path / "rec")
    assert str(info.value) == f"cannot record to {tmp_path / 'rec'}: it already holds a recorded session (session.jsonl)"
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(RecordingError, match="not a folder"):
        Recorder(afile)
    with pytest.raises(ValueError, match="version"):
        Recorder(tmp_path / "other", metadata={"version": 2})
    with Recorder(tmp_path / "third") as recorder:
        with pytest.raises(ValueError, match="direction"):
            recorder.record("sideways", {"type": "x"})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- RecordedSession errors


def _valid(tmp_path: Path) -> Path:
    events, _, _ = synthetic_session()
    folder = tmp_path / "rec"
    record_session(folder, events)
    return folder


def _rewrite_line(folder: Path, number: int, text: str) -> None:
    path = folder / "session.jsonl"
    content = path.read_text(encoding="utf-8").splitlines()
    content[number - 1] = text
    path.write_text("\n".join(content) + "\n", encoding="utf-8")


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nowhere"


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "rec.txt").write_text("hello")
    return tmp_path / "rec.txt"


def _no_jsonl(tmp_path: Path) -> Path:
    folder = _valid(tmp_path)
    (folder / "session.jsonl").unlink()
    return folder


def _empty_jsonl(tmp_path: Path) -> Path:
    folder = _valid(tmp_path)
    (folder / "session.jsonl").write_text("")
    return folder


def _bad_header(tmp_path: Path) -> Path:
    folder = _valid(tmp_path)
    _rewrite_line(folder, 1, json.dumps({"t": 0.0, "dir": "up", "event": {"type": "session.update"}}))
    return folder


def _future_version(tmp_path: Path) -> Path:
    folder = _valid(tmp_path)
    _rewrite_line(folder, 1, json.dumps({"t": 0.0, "dir": "meta",
                                         "event": {"type": "voicerelay.recording", "version": 99}}))
    return folder


def _garbage_line(tmp_path: Path) -> Path:
    folder = _valid(tmp_path)
    _rewrite_line(folder, 4, '{"t": 0.1, "dir": "up", "event": {"type": "input_audio_buff')
    return folder


def _bad_direction(tmp_path: Path) -> Path:
    folder = _valid(tmp_path)
    _rewrite_line(folder, 3, json.dumps({"t": 0.1, "dir": "sideways", "event": {}}))
    return folder


def _missing_input_wav(tmp_path: Path) -> Path:
    folder = _valid(tmp_path)
    (folder / "input.wav").unlink()
    return folder


def _missing_output_wav(tmp_path: Path) -> Path:
    folder = _valid(tmp_path)
    (folder / "output.wav").unlink()
    return folder


def _wrong_wav(tmp_path: Path) -> Path:
    folder = _valid(tmp_path)
    soundfile.write(folder / "output.wav", np.zeros((100, 2), dtype=np.int16), 44_100, subtype="PCM_16")
    return folder


def _cut_wav(tmp_path: Path) -> Path:
    folder = _valid(tmp_path)
    data = (folder / "input.wav").read_bytes()
    (folder / "input.wav").write_bytes(data[:-100])
    return folder


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_missing, "no such folder"),
        (_a_file, "not a folder"),
        (_no_jsonl, "no session.jsonl"),
        (_empty_jsonl, "empty"),
        (_bad_header, "session.jsonl line 1 is not a voicerelay recording header"),
        (_future_version, "unsupported recording version 99"),
        (_garbage_line, "session.jsonl line 4 is not valid JSON"),
        (_bad_direction, "session.jsonl line 3 has no valid direction"),
        (_missing_input_wav, "missing input.wav"),
        (_missing_output_wav, "missing output.wav"),
        (_wrong_wav, "output.wav is not a PCM16 mono 24 kHz WAV"),
        (_cut_wav, "beyond the end of input.wav"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.__name__.strip("_"),
)
def test_bad_recordings_raise_one_line_errors(tmp_path: Path, make: Callable[[Path], Path], fragment: str) -> None:
    folder = make(tmp_path)
    with pytest.raises(RecordingError) as info:
        RecordedSession.open(folder)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot open recording {folder}: ")
    assert fragment in message


def test_audio_references_cannot_escape_the_folder(tmp_path: Path) -> None:
    session = RecordedSession.open(_valid(tmp_path))
    for ref in ({"wav": "../secret.wav", "offset": 0, "bytes": 2}, {"wav": "input.wav", "offset": -2, "bytes": 2},
                {"wav": "input.wav", "offset": 0, "bytes": 10**9}):
        with pytest.raises(RecordingError) as info:
            session.audio(ref)
        assert "\n" not in str(info.value)
