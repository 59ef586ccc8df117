"""What the command line prints: never wrapped, one plain record per log line off a terminal."""

from __future__ import annotations

import io
import logging
import sys

from voicerelay.console import console, log_handler, transcript_line


def test_a_long_transcript_stays_one_line_in_a_narrow_pipe(monkeypatch: object) -> None:
    out = console()
    out.file = io.StringIO()
    text = "word " * 60
    out.print(transcript_line("assistant", text.strip(), "  (interrupted after 1.2 s)"))
    lines = out.file.getvalue().splitlines()
    assert len(lines) == 1 and lines[0] == f"assistant  {text.strip()}  (interrupted after 1.2 s)"


def test_log_records_off_a_terminal_are_plain_lines(monkeypatch: object) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)  # type: ignore[attr-defined]
    handler = log_handler()
    assert type(handler) is logging.StreamHandler
    record = logging.LogRecord("voicerelay.x", logging.WARNING, __file__, 1, "a %s message " + "x" * 200, ("long",),
                               None)
    handler.emit(record)
    [line] = stream.getvalue().splitlines()
    assert line.endswith("WARNING voicerelay.x: a long message " + "x" * 200)
