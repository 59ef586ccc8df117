"""Live lint for proxied sessions: the protocol linter's rules (:mod:`voicerelay.protocol.lint`)
over every session as it runs. Each finding is one log line as soon as it is known, named by the
session; the session's findings are kept (``LiveLint.findings``) for whoever shows them.

It is an observer (:mod:`voicerelay.proxy.observe`): it sees each message after it was
forwarded and never changes one. Appended input audio is decoded for the sample-rate rule
(about a microsecond per 20 ms frame; one spectrum per second of audio, fewer once the stream
was judged full band): about 11 µs per append and 5 µs per other event in all.
"""

from __future__ import annotations

import base64
import binascii
import collections
import logging
from collections.abc import Callable, Iterable

from ..protocol.lint import Finding, Linter
from .observe import Frame, SessionEnd, SessionInfo

log = logging.getLogger(__name__)


#: The findings of this many ended sessions are kept in ``LiveLint.findings`` (a proxy runs for days).
KEEP_ENDED = 100


class LiveLint:
    """The observer to give a :class:`~voicerelay.proxy.server.ProxyServer`: one linter per session.
    ``findings`` maps the open sessions and the newest ``KEEP_ENDED`` ended ones to their findings."""

    def __init__(self, ignore: Iterable[str] = ()) -> None:
        self.ignore = tuple(ignore)
        Linter(self.ignore)  # an unknown code is refused here, before any session
        self.findings: dict[str, list[Finding]] = {}
        self._ended: collections.deque[str] = collections.deque()
        import numpy  # noqa: F401 - the sample-rate rule's; imported now, not in the middle of a session (~0.1 s)

    def __call__(self, info: SessionInfo) -> SessionLint:
        return SessionLint(info.id, Linter(self.ignore), self.findings.setdefault(info.id, []), self._forget)

    def _forget(self, session: str) -> None:
        self._ended.append(session)
        while len(self._ended) > KEEP_ENDED:
            self.findings.pop(self._ended.popleft(), None)

    def __repr__(self) -> str:
        return "LiveLint()"


class SessionLint:
    """One session's linter, fed with its frames; times are seconds since its first message."""

    def __init__(self, session: str, linter: Linter, findings: list[Finding],
                 on_closed: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.linter = linter
        self.findings = findings
        self._on_closed = on_closed
        self._t0: float | None = None

    def event(self, frame: Frame) -> None:
        event = frame.event
        if event is None:
            return
        if self._t0 is None:
            self._t0 = frame.t
        pcm = None
        if frame.direction == "up" and event.get("type") == "input_audio_buffer.append":
            try:
                pcm = base64.b64decode(str(event.get("audio", "")), validate=True)
            except (binascii.Error, ValueError):
                pcm = None  # (the upstream answers bad audio; the linter counts what it can)
        self._report(self.linter.feed(frame.direction, frame.t - self._t0, event, pcm))

    def closed(self, end: SessionEnd) -> None:
        self._report(self.linter.finish(None if self._t0 is None else end.t - self._t0))
        if self._on_closed is not None:
            self._on_closed(self.session)

    def _report(self, findings: list[Finding]) -> None:
        for finding in findings:
            self.findings.append(finding)
            log.warning("session %s %.2fs %s %s (do instead: %s)", self.session, finding.t, finding.code,
                        finding.message, finding.instead)
