"""Recorded sessions: a :class:`Recorder` that writes them and a :class:`RecordedSession` that reads them.

A recorded session is a folder (the README's "Recordings" describes it for users)::

    session.jsonl   one JSON object per line:
                    {"t": <seconds since the recording started>, "dir": "up"|"down", "event": {...}}
                    "up" was sent to the Realtime server, "down" received from it. The first line
                    is a header: {"t": 0.0, "dir": "meta", "event": {"type": "voicerelay.recording",
                    "version": 1, "created": "<ISO 8601 UTC>", ...caller's metadata}}
    input.wav       every input_audio_buffer.append, concatenated (PCM16 mono 24 kHz)
    output.wav      every response.output_audio.delta / response.audio.delta, concatenated

Audio payloads are replaced by references into the WAVs,
``{"wav": "input.wav", "offset": <byte offset in the PCM data>, "bytes": <n>}``; other large
base64 fields (an item's ``audio`` in ``conversation.item.retrieved``...) by
``{"elided_bytes": n}``; undecodable audio by ``{"invalid_audio": true}``.

A recording never holds an API key: header-like fields (``authorization``, ``headers``,
``api_key``, ``client_secret``...) are dropped wherever they appear, and any string that looks
like an OpenAI key (``sk-...``) or a bearer token is redacted.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from voicerelay.audio.files import ClosedOnExit, WavWriter, read_wav_layout
from voicerelay.errors import AudioFileError, RecordingError
from voicerelay.errors import one_line as _one_line
from voicerelay.protocol.audio import SAMPLE_RATE, AudioFormatError, decode_b64, pcm16_to_b64
from voicerelay.protocol.redact import is_secret_field, redact_secrets, sanitize, scrub  # noqa: F401 - scrub: importable here as before

__all__ = [
    "FORMAT_VERSION",
    "INPUT_WAV",
    "OUTPUT_WAV",
    "SESSION_FILE",
    "RecordedEvent",
    "RecordedSession",
    "Recorder",
    "RecordingError",
    "scrub",
]

FORMAT_VERSION = 1
SESSION_FILE = "session.jsonl"
INPUT_WAV = "input.wav"
OUTPUT_WAV = "output.wav"
HEADER_TYPE = "voicerelay.recording"

_INPUT_APPEND = "input_audio_buffer.append"
_OUTPUT_DELTAS = frozenset({"response.output_audio.delta", "response.audio.delta"})
_USER_TRANSCRIPT = "conversation.item.input_audio_transcription.completed"
_ASSISTANT_TRANSCRIPTS = frozenset({"response.output_audio_transcript.done", "response.audio_transcript.done"})
_RESERVED_METADATA = frozenset({"type", "version", "created"})

_REF_KEYS = frozenset({"wav", "offset", "bytes"})






def _audio_field(direction: str, event: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(field, wav)`` of the audio an event carries into a WAV, or ``None``."""
    kind = event.get("type")
    if direction == "up" and kind == _INPUT_APPEND:
        return "audio", INPUT_WAV
    if direction == "down" and kind in _OUTPUT_DELTAS:
        return "delta", OUTPUT_WAV
    return None


def _json_default(value: object) -> str:
    return redact_secrets(str(value))


# --------------------------------------------------------------------------- writing


class Recorder(ClosedOnExit):
    """Records one session into ``folder`` as ``session.jsonl`` + ``input.wav`` + ``output.wav``.

    The folder is created (parents too); a folder that already holds a ``session.jsonl`` is
    refused with :class:`RecordingError`. Each :meth:`record` call appends one line and
    flushes it, and appends its audio to the WAV first, so a recording is readable while it
    is being written and survives a crash. ``clock`` gives the time in seconds (monotonic);
    ``t`` is measured from the recorder's creation and never goes backwards.

    Not thread-safe: call it from one thread (the relay's event loop).
    """

    folder: Path
    """The recording's folder."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        metadata: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        metadata = dict(metadata or {})
        reserved = _RESERVED_METADATA.intersection(metadata)
        if reserved:
            raise ValueError(f"metadata may not set {', '.join(sorted(reserved))}: the recorder writes them")
        self.folder = Path(folder)
        self._clock = clock
        self._closed = False
        self._last_t = 0.0
        self._offsets = {INPUT_WAV: 0, OUTPUT_WAV: 0}
        self._wavs: dict[str, WavWriter] = {}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RecordingError(f"cannot record to {self.folder}: it exists and is not a folder") from None
        except OSError as exc:
            raise RecordingError(f"cannot record to {self.folder}: {_one_line(exc.strerror or exc)}") from None
        jsonl = self.folder / SESSION_FILE
        try:
            # backslashreplace: a lone surrogate in an event is written as its JSON escape, never an error.
            self._jsonl = open(  # noqa: SIM115 - closed in close()
                jsonl, "x", encoding="utf-8", errors="backslashreplace", newline="\n"
            )
        except FileExistsError:
            raise RecordingError(
                f"cannot record to {self.folder}: it already holds a recorded session ({SESSION_FILE})"
            ) from None
        except OSError as exc:
            raise RecordingError(f"cannot record to {self.folder}: {_one_line(exc.strerror or exc)}") from None
        try:
            for name in (INPUT_WAV, OUTPUT_WAV):
                self._wavs[name] = WavWriter(self.folder / name, rate=SAMPLE_RATE)
        except AudioFileError as exc:
            self._abort()
            raise RecordingError(_one_line(exc)) from None
        self._t0 = clock()
        header: dict[str, Any] = {
            "type": HEADER_TYPE,
            "version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        header.update(sanitize(metadata))
        try:
            self._write_line({"t": 0.0, "dir": "meta", "event": header})
        except RecordingError:
            self._abort()
            raise

    def _abort(self) -> None:
        """Undo a failed construction: close what was opened, remove session.jsonl."""
        self._closed = True
        for wav in self._wavs.values():
            wav.close()
        self._jsonl.close()
        try:
            (self.folder / SESSION_FILE).unlink()
        except OSError:
            pass

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _write_line(self, obj: Mapping[str, Any]) -> None:
        line = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_json_default)
        try:
            self._jsonl.write(line + "\n")
            self._jsonl.flush()
        except OSError as exc:
            raise RecordingError(
                f"cannot write {self.folder / SESSION_FILE}: {_one_line(exc.strerror or exc)}"
            ) from None

    def _append_audio(self, wav: str, value: Any) -> dict[str, Any]:
        try:
            pcm = decode_b64(value)
        except AudioFormatError:
            return {"invalid_audio": True}
        offset = self._offsets[wav]
        try:
            self._wavs[wav].write(pcm)
        except AudioFileError as exc:
            raise RecordingError(_one_line(exc)) from None
        self._offsets[wav] = offset + len(pcm)
        return {"wav": wav, "offset": offset, "bytes": len(pcm)}

    def record(self, direction: Literal["up", "down"], event: Mapping[str, Any]) -> None:
        """Append one event: ``"up"`` was sent to the Realtime server, ``"down"`` received from it.

        The caller's event is never mutated. Audio goes to the WAVs and is replaced by a
        reference; invalid base64 audio is recorded as ``{"invalid_audio": true}``.
        """
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        if not isinstance(event, Mapping):
            raise TypeError(f"event must be a mapping, got {type(event).__name__}")
        if self._closed:
            raise RecordingError(f"cannot record to {self.folder}: the recorder is closed")
        now = self._clock() - self._t0
        t = max(self._last_t, round(now, 6)) if math.isfinite(now) else self._last_t
        self._last_t = t

        audio = _audio_field(direction, event)
        out: dict[Any, Any] = {}
        for key, value in event.items():
            if is_secret_field(key):
                continue
            if audio is not None and key == audio[0]:
                out[key] = self._append_audio(audio[1], value)
            else:
                out[redact_secrets(key) if isinstance(key, str) else key] = sanitize(value, key)
        self._write_line({"t": t, "dir": direction, "event": out})

    def close(self) -> None:
        """Flush and close ``session.jsonl`` and the WAVs (completing their headers). Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for wav in self._wavs.values():
            try:
                wav.close()
            except (OSError, RuntimeError) as exc:
                errors.append(_one_line(exc))
        try:
            self._jsonl.close()
        except OSError as exc:
            errors.append(_one_line(exc.strerror or exc))
        if errors:
            raise RecordingError(f"cannot finish the recording in {self.folder}: {errors[0]}")

    def __repr__(self) -> str:
        return f"<Recorder {str(self.folder)!r}{' closed' if self._closed else ''}>"


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """One line of ``session.jsonl``: when (seconds from the start), which way, and the event."""

    t: float
    direction: str
    event: dict


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _audio_ref(rec: RecordedEvent) -> tuple[str, Any] | None:
    """``(field, reference)`` for an event whose audio the recorder moved into a WAV.

    References are only looked for where the recorder puts them, so a ref-shaped dict that
    came from a server is left alone.
    """
    found = _audio_field(rec.direction, rec.event)
    if found is None or not isinstance(rec.event.get(found[0]), Mapping):
        return None
    value = rec.event[found[0]]
    if "invalid_audio" in value:
        return None
    return found[0], value


class RecordedSession:
    """A recorded session read back from its folder. Build it with :meth:`open`.

    ``events`` holds every event but the header, audio references left as they are;
    :meth:`audio` resolves a reference, :meth:`restored` puts an event's audio back as base64.
    No file is held open between calls.
    """

    folder: Path
    """The recording's folder."""
    metadata: dict
    """The header event: ``type``, ``version``, ``created`` and the recorder's metadata."""
    events: list[RecordedEvent]
    """Every recorded event in order (the header excluded)."""

    def __init__(
        self, folder: Path, metadata: dict, events: list[RecordedEvent], data_offsets: Mapping[str, int]
    ) -> None:
        self.folder = folder
        self.metadata = metadata
        self.events = events
        self._data_offsets = dict(data_offsets)

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> RecordedSession:
        """Read the recording in ``folder``; :class:`RecordingError` (one line) if it is not a valid one."""
        root = Path(folder)

        def fail(reason: str) -> RecordingError:
            return RecordingError(f"cannot open recording {root}: {reason}")

        try:
            if not root.exists():
                raise fail("no such folder")
            if not root.is_dir():
                raise fail("not a folder")
        except OSError as exc:
            raise fail(_one_line(exc.strerror or exc)) from None
        jsonl = root / SESSION_FILE
        if not jsonl.is_file():
            raise fail(f"no {SESSION_FILE} in it")

        metadata: dict | None = None
        events: list[RecordedEvent] = []
        line_numbers: list[int] = []
        try:
            with open(jsonl, encoding="utf-8") as fh:
                for number, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    where = f"{SESSION_FILE} line {number}"
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise fail(f"{where} is not valid JSON ({exc.msg})") from None
                    if metadata is None:
                        metadata = cls._check_header(obj, where, fail)
                        continue
                    events.append(cls._check_line(obj, where, fail))
                    line_numbers.append(number)
        except UnicodeDecodeError:
            raise fail(f"{SESSION_FILE} is not UTF-8 text") from None
        except OSError as exc:
            raise fail(f"cannot read {SESSION_FILE} ({_one_line(exc.strerror or exc)})") from None
        if metadata is None:
            raise fail(f"{SESSION_FILE} is empty (no header)")

        offsets: dict[str, int] = {}
        sizes: dict[str, int] = {}
        for name in (INPUT_WAV, OUTPUT_WAV):
            path = root / name
            if not path.is_file():
                raise fail(f"missing {name}")
            try:
                layout = read_wav_layout(path)
            except AudioFileError as exc:
                raise fail(_one_line(exc)) from None
            if layout is None or not layout.is_pcm16_mono or layout.sample_rate != SAMPLE_RATE:
                raise fail(f"{name} is not a PCM16 mono 24 kHz WAV")
            offsets[name] = layout.data_offset
            sizes[name] = layout.available_bytes
        for number, rec in zip(line_numbers, events):
            found = _audio_ref(rec)
            if found is None:
                continue
            ref = found[1]
            problem = cls._check_ref(ref)
            if problem is None and ref["offset"] + ref["bytes"] > sizes[ref["wav"]]:
                problem = f"audio beyond the end of {ref['wav']} (is it truncated?)"
            if problem is not None:
                raise fail(f"{SESSION_FILE} line {number}: {problem}")
        return cls(root, metadata, events, offsets)

    @staticmethod
    def _check_header(obj: Any, where: str, fail: Callable[[str], RecordingError]) -> dict:
        event = obj.get("event") if isinstance(obj, dict) else None
        if not (
            isinstance(obj, dict)
            and obj.get("dir") == "meta"
            and isinstance(event, dict)
            and event.get("type") == HEADER_TYPE
        ):
            raise fail(f"{where} is not a voicerelay recording header")
        version = event.get("version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise fail(f"unsupported recording version {version!r} (this voicerelay reads version {FORMAT_VERSION})")
        return event

    @staticmethod
    def _check_line(obj: Any, where: str, fail: Callable[[str], RecordingError]) -> RecordedEvent:
        if not isinstance(obj, dict):
            raise fail(f"{where} is not a JSON object")
        if not _is_number(obj.get("t")):
            raise fail(f"{where} has no valid time 't'")
        if obj.get("dir") not in ("up", "down"):
            raise fail(f"{where} has no valid direction 'dir' (up or down)")
        if not isinstance(obj.get("event"), dict):
            raise fail(f"{where} has no event object")
        return RecordedEvent(float(obj["t"]), obj["dir"], obj["event"])

    @staticmethod
    def _check_ref(ref: Mapping[str, Any]) -> str | None:
        if ref.keys() != _REF_KEYS:
            return "not an audio reference {wav, offset, bytes}"
        if ref.get("wav") not in (INPUT_WAV, OUTPUT_WAV):
            return f"audio reference to an unknown file {ref.get('wav')!r}"
        for key in ("offset", "bytes"):
            value = ref.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                return f"audio reference with an invalid {key!r}"
        return None

    def audio(self, ref: Mapping[str, Any]) -> bytes:
        """The PCM16 bytes a ``{"wav", "offset", "bytes"}`` reference points to."""
        problem = self._check_ref(ref) if isinstance(ref, Mapping) else "not an audio reference"
        if problem is not None:
            raise RecordingError(f"cannot read audio from recording {self.folder}: {problem}")
        name = ref["wav"]
        try:
            with open(self.folder / name, "rb") as fh:
                return self._read(fh, ref)
        except OSError as exc:
            raise RecordingError(
                f"cannot read audio from recording {self.folder}: {name}: {_one_line(exc.strerror or exc)}"
            ) from None

    def _read(self, fh: Any, ref: Mapping[str, Any]) -> bytes:
        fh.seek(self._data_offsets[ref["wav"]] + ref["offset"])
        data = fh.read(ref["bytes"])
        if len(data) != ref["bytes"]:
            raise RecordingError(
                f"cannot read audio from recording {self.folder}: audio beyond the end of {ref['wav']}"
            )
        return data

    def input_chunks(self) -> Iterator[tuple[float, bytes]]:
        """``(t, pcm16 bytes)`` for every recorded ``input_audio_buffer.append``, in order.

        What a replay re-sends, with the original timing. Appends recorded as invalid audio
        are skipped.
        """
        appends = [
            (rec.t, found[1])
            for rec in self.events
            if rec.direction == "up" and (found := _audio_ref(rec)) is not None
        ]
        if not appends:
            return
        try:
            with open(self.folder / INPUT_WAV, "rb") as fh:
                for t, ref in appends:
                    problem = self._check_ref(ref)
                    if problem is not None:
                        raise RecordingError(f"cannot read audio from recording {self.folder}: {problem}")
                    yield t, self._read(fh, ref)
        except OSError as exc:
            raise RecordingError(
                f"cannot read audio from recording {self.folder}: {INPUT_WAV}: {_one_line(exc.strerror or exc)}"
            ) from None

    def restored(self, rec: RecordedEvent) -> dict:
        """A deep copy of ``rec.event`` with its audio reference put back as base64.

        Elided fields (``{"elided_bytes": n}``) and ``{"invalid_audio": true}`` stay as recorded.
        """
        event = copy.deepcopy(rec.event)
        found = _audio_ref(rec)
        if found is not None:
            event[found[0]] = pcm16_to_b64(self.audio(found[1]))
        return event

    def transcripts(self) -> dict[str, list[str]]:
        """Final transcripts in order: ``{"user": [...], "assistant": [...]}``.

        User: ``conversation.item.input_audio_transcription.completed``; assistant:
        ``response.output_audio_transcript.done`` (GA) or ``response.audio_transcript.done`` (beta).
        """
        result: dict[str, list[str]] = {"user": [], "assistant": []}
        for rec in self.events:
            if rec.direction != "down":
                continue
            kind = rec.event.get("type")
            text = rec.event.get("transcript")
            if not isinstance(text, str):
                continue
            if kind == _USER_TRANSCRIPT:
                result["user"].append(text)
            elif kind in _ASSISTANT_TRANSCRIPTS:
                result["assistant"].append(text)
        return result

    def __repr__(self) -> str:
        return f"<RecordedSession {str(self.folder)!r} {len(self.events)} events>"
