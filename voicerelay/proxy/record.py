"""Recording proxied sessions: an observer that gives every session a folder of its own under one
directory, in voicerelay's recording format (:mod:`voicerelay.recording`), so that
``voicerelay replay`` and ``voicerelay lint`` read it like any other.

Both directions go in with their times; input and output audio go to the WAVs. A message that
is not a JSON object (garbage a client sent, which the upstream answers) is recorded as
``{"type": "voicerelay.unparsed", "text": ...}``, and the end of the session as
``{"type": "voicerelay.closed", "by": ..., "code": ..., "reason": ...}`` in the direction of
whoever closed it. Every line is flushed as it is written, so a recording is complete up to the
moment a session ends, however it ends. Headers are never recorded, so neither is a key.

After each ``response.done`` that carries a ``usage``, the recording gets its cost in dollars
(:mod:`voicerelay.cost`), in the direction it came from::

    {"type": "voicerelay.cost", "response_id": ..., "in_conversation": true|false,
     "model": ..., "usd": 0.0123, "session_usd": 0.0456, "estimate": false, "note": ...}

``usd`` is that response's, ``session_usd`` the session's so far (every response, out-of-band
ones too); ``null`` when the price table does not know the model (``note`` says why);
``estimate`` on the embedded backend.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cost import usage_state
from ..errors import RecordingError
from ..protocol.watch import SessionWatch
from ..recording import Recorder
from .observe import Frame, SessionEnd, SessionInfo

log = logging.getLogger(__name__)

#: The longest part of an unparsed message kept in a recording.
UNPARSED_CHARS = 2000


class SessionRecording:
    """The observer of one session: a :class:`~voicerelay.recording.Recorder` fed with its frames."""

    def __init__(self, recorder: Recorder, estimate: bool = False) -> None:
        self.recorder = recorder
        self.folder = recorder.folder
        self.estimate = estimate
        self._usage = SessionWatch()  # (for the model and the usage so far)

    def event(self, frame: Frame) -> None:
        event: Any = frame.event
        if event is None:
            data = frame.data if isinstance(frame.data, str) else frame.data.decode("utf-8", "backslashreplace")
            event = {"type": "voicerelay.unparsed", "binary": not isinstance(frame.data, str),
                     "text": data[:UNPARSED_CHARS], "chars": len(data)}
        try:
            self.recorder.record(frame.direction, event)
            if frame.event is not None and frame.direction == "down":
                self._cost(frame)
        except RecordingError as exc:
            self._fail(exc)

    def _cost(self, frame: Frame) -> None:
        event = frame.event
        assert event is not None
        watch = self._usage
        kind = event.get("type")
        if kind not in ("session.created", "session.updated", "response.created", "response.done"):
            return
        response = event.get("response")
        in_band = isinstance(response, dict) and watch.in_conversation(response.get("id"))
        watch.feed("down", frame.t, event)
        if kind != "response.done" or not isinstance(response, dict) or not isinstance(response.get("usage"), dict):
            return
        this = usage_state(response["usage"], watch.model, estimate=self.estimate)
        total = usage_state(watch.usage, watch.model, estimate=self.estimate)
        cost = {"type": "voicerelay.cost", "response_id": response.get("id"),
                "in_conversation": in_band, "model": watch.model, "usd": this["usd"],
                "session_usd": total["usd"], "estimate": self.estimate}
        if this.get("note"):
            cost["note"] = this["note"]
        self.recorder.record("down", cost)

    def closed(self, end: SessionEnd) -> None:
        if self.recorder.closed:
            return
        direction = "up" if end.by == "client" else "down"
        try:
            self.recorder.record(direction, {"type": "voicerelay.closed", "by": end.by, "code": end.code,
                                             "reason": end.reason})
            self.recorder.close()
        except RecordingError as exc:
            self._fail(exc)

    def _fail(self, exc: RecordingError) -> None:
        log.error("recording stopped: %s", exc)  # the session goes on: forwarding matters more
        try:
            self.recorder.close()
        except RecordingError:
            pass
        raise exc  # the proxy detaches an observer that raises


class Recordings:
    """An observer for :class:`~voicerelay.proxy.server.ProxyServer`: one recording per session in
    ``directory``, named ``<UTC date>-<time>-<session id>``."""

    def __init__(self, directory: str | os.PathLike[str], clock: Callable[[], float] = time.time, *,
                 estimate: bool = False) -> None:
        self.directory = Path(directory)
        self._clock = clock
        self.estimate = estimate  # the upstream's usage figures are estimates (the embedded backend)

    def __call__(self, info: SessionInfo) -> SessionRecording:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self._clock()))
        metadata = {"command": "proxy", "session": info.id, "path": info.path, "upstream": info.upstream,
                    "dialect": info.dialect, "client": info.client}
        recorder = Recorder(self.directory / f"{stamp}-{info.id}", metadata)
        log.info("session %s: recording into %s", info.id, recorder.folder)
        return SessionRecording(recorder, self.estimate)

    def __repr__(self) -> str:
        return f"<Recordings {str(self.directory)!r}>"
