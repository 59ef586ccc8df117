"""Proxied sessions in ``voicerelay inspect``: the gateway's ``/monitor`` namespace, fed by the proxy.

:class:`ProxyMonitor` is an observer (:mod:`voicerelay.proxy.observe`): for each proxied session
it keeps a :class:`WatchedSession`, which reads the session's events with the pure
:class:`~voicerelay.protocol.watch.SessionWatch` (state, turns, latencies, transcripts, usage),
runs the live linter on them when the proxy lints (:mod:`voicerelay.proxy.lint`), and shows
itself to monitors the way a gateway session does: the same
:class:`~voicerelay.gateway.monitor.Monitor` (coalesced updates, at most ten a second, a monitor
that stops reading skipped), the same state keys plus ``lint``. Lint findings appear in the
session's transcript pane as ``lint`` lines.

:class:`MonitorServer` serves that namespace over HTTP (python-socketio on aiohttp) on its own
port, beside the proxy's WebSocket port, with a ``/health`` that ``inspect`` recognises. When the
proxy requires a token, monitors must give it too.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..cost import usage_state
from ..gateway.monitor import Monitor, SessionLog
from ..gateway.registry import SessionRegistry
from ..protocol.watch import SessionWatch
from .observe import Frame, SessionEnd, SessionInfo

if TYPE_CHECKING:
    import socket

    from aiohttp import web

    from ..protocol.lint import Finding
    from .lint import LiveLint, SessionLint

log = logging.getLogger(__name__)

#: How many findings a session's state lists (the newest; ``count`` has them all).
STATE_FINDINGS = 5


class WatchedSession:
    """One proxied session as monitors see it (the :class:`~voicerelay.gateway.registry.Registered` shape)."""

    def __init__(self, info: SessionInfo, monitor: Monitor, *, estimate: bool,
                 lint: SessionLint | None = None) -> None:
        self.info = info
        self.monitor = monitor
        self.estimate = estimate
        self.lint = lint
        self.watch = SessionWatch()
        self.log = SessionLog()
        self.opened_at = time.monotonic()

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def sid(self) -> str:
        # No Socket.IO connection owns a proxied session; the registry keys sessions by this, so
        # it is the session's own (one empty key for all let only the first session in)
        return f"proxy:{self.info.id}"

    # ----------------------------------------------------------------------------- observer

    def event(self, frame: Frame) -> None:
        event = frame.event
        if event is None:
            return
        if self.lint is not None:
            self._show(self.lint.event(frame))
        for line in self.watch.feed(frame.direction, frame.t, event):
            self.log.add_transcript(line.role, line.text)
        if self.monitor.watchers:  # (as the gateway: the raw log only while someone looks)
            self.log.add_event(frame.direction, event)
        self.monitor.touch(self)

    def closed(self, end: SessionEnd) -> None:
        if self.lint is not None:
            self._show(self.lint.closed(end))
        self.watch.close(end.by)
        status = "ended" if end.code in (1000, 1001) else f"closed {end.code} by {end.by}"
        self.monitor.closed(self, status)

    def _show(self, findings: list[Finding]) -> None:
        for finding in findings:
            self.log.add_transcript("lint", finding.short())

    # ----------------------------------------------------------------------------- monitors

    def state(self) -> dict[str, Any]:
        """What a monitor shows: the keys of a gateway session's state, and ``lint``."""
        watch = self.watch
        remaining = watch.remaining_s(time.time())
        return {
            "session_id": self.id, "node": "proxy", "client": self.info.client,
            "chat_active": watch.ended is None, "ai_state": watch.state,
            "duration_s": round(time.monotonic() - self.opened_at, 1), "errors": watch.errors,
            "turns": watch.turns, "last_latency_ms": None if watch.last_latency_ms is None else round(
                watch.last_latency_ms),
            "queues": {}, "session_remaining_s": None if remaining is None else round(remaining, 1),
            "cost": usage_state(watch.usage, watch.model, estimate=self.estimate),
            "lint": None if self.lint is None else self.lint.stream.summary(STATE_FINDINGS),
            "upstream": self.info.upstream, "dialect": self.info.dialect,
        }


class ProxyMonitor:
    """The observer to give a :class:`~voicerelay.proxy.server.ProxyServer` so that ``inspect``
    sees its sessions; ``lint``: the live linter, run by each session's view (give the proxy this
    observer *instead of* the linter). ``estimate``: the upstream's usage figures are estimates
    (the embedded backend)."""

    def __init__(self, monitor: Monitor, registry: SessionRegistry[WatchedSession], *, estimate: bool,
                 lint: LiveLint | None = None) -> None:
        self.monitor = monitor
        self.registry = registry
        self.estimate = estimate
        self.live_lint = lint

    def __call__(self, info: SessionInfo) -> _Registered:
        lint = self.live_lint(info) if self.live_lint is not None else None
        session = WatchedSession(info, self.monitor, estimate=self.estimate, lint=lint)
        self.registry.add(session)
        return _Registered(session, self.registry)

    def __repr__(self) -> str:
        return "ProxyMonitor()"


class _Registered:
    """A session's view, taken out of the registry when the session closes."""

    __slots__ = ("session", "registry")

    def __init__(self, session: WatchedSession, registry: SessionRegistry[WatchedSession]) -> None:
        self.session = session
        self.registry = registry

    def event(self, frame: Frame) -> None:
        self.session.event(frame)

    def closed(self, end: SessionEnd) -> None:
        try:
            self.session.closed(end)
        finally:
            self.registry.remove(self.session)


class MonitorServer:
    """``/monitor`` (Socket.IO) and ``/health`` over HTTP on ``sock``, for ``voicerelay inspect``.
    Use as ``async with MonitorServer(sock, token=...) as server:`` and give ``server.observer``
    to the proxy."""

    def __init__(self, sock: socket.socket, *, token: str | None, estimate: bool, lint: LiveLint | None = None,
                 allow_origins: tuple[str, ...] = ()) -> None:
        import socketio

        self.sock = sock
        self.sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=list(allow_origins) or None,
                                        logger=False, engineio_logger=False)
        self.registry: SessionRegistry[WatchedSession] = SessionRegistry()
        self.monitor = Monitor(self.sio, self.registry, token)
        self.observer = ProxyMonitor(self.monitor, self.registry, estimate=estimate, lint=lint)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def __aenter__(self) -> MonitorServer:
        from aiohttp import web

        app = web.Application()
        self.sio.attach(app, socketio_path="socket.io")
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock).start()
        log.info("monitor listening on %s", self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.monitor.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response({"status": "ok", "kind": "proxy", "sessions": len(self.registry)})
