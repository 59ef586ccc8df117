"""``voicerelay lint``: recorded sessions through the protocol rules, printed like a code linter.

The rules are :mod:`voicerelay.protocol.lint` (pure, also usable live); this module reads each
recording (:class:`~voicerelay.recording.RecordedSession`, with the input audio for the
sample-rate rule), feeds its events to a :class:`~voicerelay.protocol.lint.Linter` in order and
formats what comes out: one line per finding (``RECORDING:12.34s VR101 explanation (do instead:
...)``) and one per truncate of the audit, or one JSON document.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .protocol.lint import Finding, Linter, TruncateAudit
from .recording import INPUT_WAV, RecordedSession

__all__ = ["LintResult", "format_json", "format_text", "lint_recording", "lint_recordings"]


@dataclass(frozen=True, slots=True)
class LintResult:
    """One recording's findings (in session time order) and its truncate audit."""

    path: str
    findings: list[Finding]
    truncates: list[TruncateAudit]
    duration: float


def _is_input_ref(direction: str, event: dict[str, Any]) -> bool:
    audio = event.get("audio")
    return (direction == "up" and event.get("type") == "input_audio_buffer.append" and isinstance(audio, dict)
            and audio.get("wav") == INPUT_WAV and "invalid_audio" not in audio)


def lint_recording(folder: str | Path, ignore: Iterable[str] = ()) -> LintResult:
    """Lint one recording; :class:`~voicerelay.errors.RecordingError` if it cannot be read."""
    session = RecordedSession.open(folder)
    linter = Linter(ignore)
    chunks = session.input_chunks() if "VR108" not in linter.ignore else None  # only VR108 reads audio
    t = 0.0
    for rec in session.events:
        pcm = next(chunks)[1] if chunks is not None and _is_input_ref(rec.direction, rec.event) else None
        linter.feed(rec.direction, rec.t, rec.event, pcm)
        t = rec.t
    linter.finish(t)
    findings = sorted(linter.findings, key=lambda f: f.t)
    return LintResult(str(folder), findings, list(linter.truncates), t)


def lint_recordings(folders: Sequence[str | Path], ignore: Iterable[str] = ()) -> list[LintResult]:
    """Lint every recording, in order (the first unreadable one raises)."""
    return [lint_recording(folder, ignore) for folder in folders]


def _played(audit: TruncateAudit) -> str:
    return "unknown" if audit.played_ms is None else f"{audit.played_ms} ms"


def format_text(results: Sequence[LintResult]) -> list[str]:
    """Linter lines: ``PATH:12.34s CODE message (do instead: ...)``, then the truncate audit."""
    lines = []
    for result in results:
        for f in result.findings:
            lines.append(f"{result.path}:{f.t:.2f}s {f.code} {f.message} (do instead: {f.instead})")
        for a in result.truncates:
            lines.append(f"{result.path}:{a.t:.2f}s truncate {a.item_id}: received {a.received_ms} ms, "
                         f"played {_played(a)}, sent {a.sent_ms} ms; {a.verdict}; server: {a.server}")
    return lines


def format_json(results: Sequence[LintResult]) -> str:
    """One JSON document: per recording its findings and truncate audit."""
    return json.dumps({"recordings": [
        {"path": r.path, "duration_s": round(r.duration, 3), "findings": [f.to_dict() for f in r.findings],
         "truncates": [a.to_dict() for a in r.truncates]} for r in results]}, indent=2)
