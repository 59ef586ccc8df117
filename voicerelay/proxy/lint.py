"""Live lint for proxied sessions: the protocol linter's rules (:mod:`voicerelay.protocol.lint`)
over every session as it runs. Each finding is one log line as soon as it is known, named by the
session; the session's findings are kept (``LiveLint.findings``) for whoever shows them.

It is an observer (:mod:`voicerelay.proxy.observe`): it sees each message after it was
forwarded and never changes one. Appended input audio is decoded for the sample-rate rule
(about a microsecond per 20 ms frame; one spectrum per second of audio, fewer once the stream
was judged full band): about 11 µs per append and 5 µs per other event in all.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable

from ..protocol.lint import Finding, Linter, StreamLinter
from .observe import Frame, SessionEnd, SessionInfo

log = logging.getLogger(__name__)


#: The findings of this many ended sessions are kept in ``LiveLint.findings`` (a proxy runs for days).
KEEP_ENDED = 100


class LiveLint:
    """The observer to give a :class:`~voicerelay.proxy.server.ProxyServer`: one linter per session.
    ``findings`` maps the open sessions and the newest ``KEEP_ENDED`` ended ones to their findings
    (the newest 50 of each)."""

    def __init__(self, ignore: Iterable[str] = ()) -> None:
        self.ignore = tuple(ignore)
        Linter(self.ignore)  # an unknown code is refused here, before any session
        self.findings: dict[str, list[Finding]] = {}
        self._ended: collections.deque[str] = collections.deque()
        import numpy  # noqa: F401 - the sample-rate rule's; imported now, not in the middle of a session (~0.1 s)

    def __call__(self, info: SessionInfo) -> SessionLint:
        stream = StreamLinter(self.ignore)
        self.findings[info.id] = stream.findings
        return SessionLint(info.id, stream, self._forget)

    def _forget(self, session: str) -> None:
        self._ended.append(session)
        while len(self._ended) > KEEP_ENDED:
            self.findings.pop(self._ended.popleft(), None)

    def __repr__(self) -> str:
        return "LiveLint()"


class SessionLint:
    """One session's linter (:class:`~voicerelay.protocol.lint.StreamLinter`), fed with its frames;
    times are seconds since its first message. ``event`` and ``closed`` return the new findings."""

    def __init__(self, session: str, stream: StreamLinter, on_closed: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.stream = stream
        self._on_closed = on_closed

    @property
    def findings(self) -> list[Finding]:
        """The newest findings (``stream.count`` has how many there were in all)."""
        return self.stream.findings

    def event(self, frame: Frame) -> list[Finding]:
        if frame.event is None:
            return []
        return self._report(self.stream.feed(frame.direction, frame.t, frame.event))

    def closed(self, end: SessionEnd) -> list[Finding]:
        found = self._report(self.stream.finish(end.t))
        if self._on_closed is not None:
            self._on_closed(self.session)
        return found

    def _report(self, findings: list[Finding]) -> list[Finding]:
        for finding in findings:
            log.warning("session %s %s", self.session, finding.line())
        return findings
