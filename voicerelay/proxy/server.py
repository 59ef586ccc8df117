"""The proxy's asyncio side: a websockets server at ``/v1/realtime`` that forwards every message
to the upstream and back, as it came.

For each handshake :func:`~voicerelay.proxy.rules.admit` decides (path, origin, token,
capacity); then the proxy opens the upstream connection *before* answering the client, with the
client's path, query and headers (its credential swapped for the proxy's key), so a client the
upstream refuses gets the upstream's own HTTP status and body. Once both are open, two pumps
run, one per direction; each receives a message, sends it on unchanged (the same ``str`` or
``bytes``: nothing is parsed, re-encoded or reordered on the way), and only then shows it to the
session's observers (:mod:`voicerelay.proxy.observe`), parsed from a copy.

When either side closes, the other is closed with the same code and reason (a connection that
dropped without a close, 1006, is dropped in turn), after every message that arrived before
the close was forwarded; observers then hear ``closed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Close
from websockets.http11 import Request, Response

from ..errors import VoiceRelayError
from .observe import Direction, Frame, Observer, SessionEnd, SessionInfo, SessionObserver
from .rules import PATH, admit, dialect_label, parse_copy, upstream_headers, upstream_url, user_agent

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 10.0
#: Close codes that a close frame may carry (1005, 1006 and 1015 are only ever reported).
_NOT_ON_THE_WIRE = {1005, 1006, 1015}


class ProxySession:
    """One proxied session: its two connections, its observers, and how it ended."""

    __slots__ = ("id", "info", "client", "upstream", "observers", "end", "frames")

    def __init__(self, info: SessionInfo, client: ServerConnection, upstream: ClientConnection,
                 observers: list[SessionObserver]) -> None:
        self.id = info.id
        self.info = info
        self.client = client
        self.upstream = upstream
        self.observers = observers
        self.end: SessionEnd | None = None
        self.frames = {"up": 0, "down": 0}

    def observe(self, direction: Direction, t: float, data: str | bytes) -> None:
        frame = Frame(self.id, direction, t, data, parse_copy(data))
        for observer in list(self.observers):
            try:
                observer.event(frame)
            except VoiceRelayError as exc:  # (a recording that cannot be written: it said why)
                log.warning("session %s: %r detached: %s", self.id, observer, exc)
                self.observers.remove(observer)
            except Exception:  # noqa: BLE001 - an observer's bug must not end the session
                log.exception("session %s: observer %r failed; it is detached", self.id, observer)
                self.observers.remove(observer)

    def finish(self) -> None:
        assert self.end is not None
        for observer in self.observers:
            try:
                observer.closed(self.end)
            except VoiceRelayError as exc:
                log.warning("session %s: %r failed on close: %s", self.id, observer, exc)
            except Exception:  # noqa: BLE001 - as above
                log.exception("session %s: observer %r failed on close", self.id, observer)


class ProxyServer:
    """The proxy. Use as ``async with ProxyServer(upstream_base, port=0) as proxy:``.

    ``upstream_base`` is the upstream's Realtime URL (``wss://api.openai.com/v1/realtime``, an
    embedded backend's ``server.url``...); ``key`` the credential the proxy adds upstream;
    ``observers`` are called for every session (:mod:`voicerelay.proxy.observe`). ``sock``: a
    socket already listening (the command line binds first, so a busy port is one line).
    """

    def __init__(self, upstream_base: str, *, key: str | None = None, label: str = "", host: str = "127.0.0.1",
                 port: int = 0, token: str | None = None, allow_origins: Iterable[str] = (),
                 max_sessions: int = 100, observers: Sequence[Observer] = (), sock: Any = None,
                 open_timeout: float = OPEN_TIMEOUT) -> None:
        self.upstream_base = upstream_base
        self.label = label or upstream_base.split("?")[0]
        self.host, self.port = host, port
        self.token = token
        self.allow_origins = tuple(allow_origins)
        self.max_sessions = max_sessions
        self.observers = list(observers)
        self.open_timeout = open_timeout
        self.sessions: dict[str, ProxySession] = {}
        self._key = key
        self._sock = sock
        self._admitted = 0  # sessions, and handshakes on their way to becoming one
        self._pending: dict[ServerConnection, tuple[ClientConnection, tuple[tuple[str, str], ...]]] = {}
        self._numbers = itertools.count(1)
        self._server: Server | None = None

    def __repr__(self) -> str:
        return f"<ProxyServer {self.url} -> {self.label}>"

    @property
    def url(self) -> str:
        return f"ws://{self._url_host}:{self.port}{PATH}"

    @property
    def base_url(self) -> str:
        """What the ``openai`` SDK takes as ``websocket_base_url``."""
        return f"ws://{self._url_host}:{self.port}/v1"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    async def start(self) -> None:
        where: dict[str, Any] = {"sock": self._sock} if self._sock is not None else {"host": self.host, "port": self.port}
        self._server = await serve(self._handle, process_request=self._process_request,
                                   process_response=self._process_response, max_size=None, compression=None,
                                   **where)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("proxy listening on %s, forwarding to %s", self.url, self.label)

    async def close(self) -> None:
        """Stop listening and end every session (clients and upstreams get 1001, going away)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for upstream, _ in self._pending.values():
            await upstream.close()
        self._pending.clear()

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> ProxyServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ the handshake

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        refusal = admit(request.path, request.headers, token=self.token, allow_origins=self.allow_origins,
                        sessions=self._admitted, max_sessions=self.max_sessions)
        if refusal is not None:
            log.info("refused %s %s: %s", connection.remote_address, request.path.split("?")[0], refusal.message)
            return connection.respond(refusal.status, refusal.message + "\n")
        self._admitted += 1
        client_headers = list(request.headers.raw_items())
        url = upstream_url(self.upstream_base, request.path)
        headers = upstream_headers(client_headers, key=self._key, token=self.token)
        try:
            upstream = await connect(url, additional_headers=headers, user_agent_header=user_agent(client_headers),
                                     max_size=None, compression=None, open_timeout=self.open_timeout)
        except InvalidStatus as exc:  # the upstream's own answer, passed on as it is
            self._admitted -= 1
            answer = exc.response
            kept = Headers((k, v) for k, v in answer.headers.raw_items() if k.lower() in ("content-type",))
            kept["Content-Length"] = str(len(answer.body or b""))
            log.info("%s refused %s: HTTP %s", self.label, request.path.split("?")[0], answer.status_code)
            return Response(answer.status_code, answer.reason_phrase, kept, answer.body or b"")
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            self._admitted -= 1
            timed_out = isinstance(exc, TimeoutError)
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            log.warning("cannot reach %s: %s", self.label, reason)
            return connection.respond(HTTPStatus.GATEWAY_TIMEOUT if timed_out else HTTPStatus.BAD_GATEWAY,
                                      f"The proxy cannot reach its upstream ({self.label}): {reason}\n")
        shown = tuple((k, v) for k, v in headers if k.lower() != "authorization")
        self._pending[connection] = (upstream, shown)
        return None

    async def _process_response(self, connection: ServerConnection, request: Request,
                                response: Response) -> Response | None:
        if response.status_code != HTTPStatus.SWITCHING_PROTOCOLS and connection in self._pending:
            upstream, _ = self._pending.pop(connection)  # the client's handshake failed after all
            self._admitted -= 1
            await upstream.close()
        return None

    # ------------------------------------------------------------------ a session

    async def _handle(self, client: ServerConnection) -> None:
        upstream, sent_headers = self._pending.pop(client)
        request = client.request
        assert request is not None
        number = next(self._numbers)
        info = SessionInfo(id=f"{number:04d}-{uuid.uuid4().hex[:6]}", path=request.path, upstream=self.label,
                           dialect=dialect_label(request.headers), client=_address(client.remote_address),
                           headers=sent_headers)
        session = ProxySession(info, client, upstream, self._open_observers(info))
        self.sessions[session.id] = session
        log.info("session %s opened: %s %s (%s)", session.id, info.client, request.path, info.dialect)
        try:
            await asyncio.gather(self._pump(session, client, upstream, "up"),
                                 self._pump(session, upstream, client, "down"))
        finally:
            if session.end is None:  # (cancelled: the proxy is stopping)
                session.end = SessionEnd(session.id, "proxy", 1001, "proxy stopping", time.monotonic())
                with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
                    await upstream.close(1001)
            self._admitted -= 1
            del self.sessions[session.id]
            session.finish()
            log.info("session %s closed by %s: %s %s (%d up, %d down)", session.id, session.end.by,
                     session.end.code, session.end.reason, session.frames["up"], session.frames["down"])

    def _open_observers(self, info: SessionInfo) -> list[SessionObserver]:
        opened = []
        for observer in self.observers:
            try:
                watcher = observer(info)
            except Exception:  # noqa: BLE001 - a failed observer must not refuse the session
                log.exception("session %s: observer %r failed to open", info.id, observer)
                continue
            if watcher is not None:
                opened.append(watcher)
        return opened

    async def _pump(self, session: ProxySession, src: Any, dst: Any, direction: Direction) -> None:
        """Forward ``src`` → ``dst`` until ``src`` closes; then close ``dst`` the same way."""
        recv, send, count, clock = src.recv, dst.send, session.frames, time.monotonic
        observe = session.observe
        while True:
            try:
                data = await recv()
            except ConnectionClosed as exc:
                await self._ended(session, src, dst, direction, exc)
                return
            t = clock()
            try:
                await send(data)
            except ConnectionClosed:
                return  # dst closed: its own pump reports how
            count[direction] += 1
            if session.observers:
                observe(direction, t, data)

    async def _ended(self, session: ProxySession, src: Any, dst: Any, direction: Direction,
                     exc: ConnectionClosed) -> None:
        closing: Close | None = exc.rcvd
        if session.end is None:
            initiated_here = exc.sent is not None and exc.rcvd_then_sent is False
            by = "proxy" if initiated_here else ("client" if direction == "up" else "upstream")
            shown = exc.sent if initiated_here else closing
            session.end = SessionEnd(session.id, by, shown.code if shown else 1006, shown.reason if shown else "",
                                     time.monotonic())
        if closing is None or closing.code in _NOT_ON_THE_WIRE and closing.code != 1005:
            dst.transport.abort()  # dropped without a close: drop the other side too (it sees 1006)
        elif closing.code == 1005:
            await dst.close(code=None)  # type: ignore[arg-type] - a close frame without a code, as it came
        else:
            await dst.close(closing.code, closing.reason)


def _address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "")


async def run(*, backend: str | None, host: str, port: int, token: str | None, allow_origins: Sequence[str],
              max_sessions: int, record: str | None, sock: Any = None, ready: Any = None,
              lint: bool = True, monitor_sock: Any = None) -> None:
    """Run a proxy until cancelled (the ``voicerelay proxy`` command): resolve ``--backend`` (an
    embedded backend is started here), lint, record and serve ``inspect`` if asked, serve.
    ``monitor_sock``: a listening socket for ``/monitor`` (:mod:`voicerelay.proxy.monitor`)."""
    import os
    import signal
    from urllib.parse import urlsplit, urlunsplit

    from ..cost import upstream_estimates
    from ..upstream import choose_backend, start_upstream, with_realtime_path

    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # SIGTERM ends it like Ctrl-C
        loop.add_signal_handler(signal.SIGTERM, lambda: main.cancel() if main else None)
    env = dict(os.environ)
    choice = choose_backend(backend, env)
    upstream = await start_upstream(choice, "gpt-realtime", env=env)  # (the model: the client's ?model=)
    try:
        if choice.startswith(("ws://", "wss://")):
            base = with_realtime_path(choice)  # the URL as given, its own query kept
        else:
            base = urlunsplit(urlsplit(upstream.spec.url)._replace(query=""))
        async with contextlib.AsyncExitStack() as stack:
            observers: list[Observer] = []
            live_lint = None
            if lint:
                from .lint import LiveLint

                live_lint = LiveLint()
            if monitor_sock is not None:
                from .monitor import MonitorServer

                monitor = await stack.enter_async_context(MonitorServer(
                    monitor_sock, token=token, estimate=upstream_estimates(upstream.spec), lint=live_lint,
                    allow_origins=tuple(allow_origins)))
                observers.append(monitor.observer)  # (it runs the linter, when there is one)
            elif live_lint is not None:
                observers.append(live_lint)
            if record is not None:
                from .record import Recordings

                observers.append(Recordings(record, estimate=upstream_estimates(upstream.spec)))
            proxy = ProxyServer(base, key=upstream.spec.api_key, label=upstream.spec.describe(), host=host, port=port,
                                token=token, allow_origins=allow_origins, max_sessions=max_sessions,
                                observers=observers, sock=sock)
            async with proxy:
                from ..gctune import settle_for_serving

                settle_for_serving()  # the proxy owns the process (see voicerelay.gctune)
                if ready is not None:
                    ready(proxy)
                await proxy.serve_forever()
    finally:
        await upstream.close()
