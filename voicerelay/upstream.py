"""The upstream edge: a ``websockets`` client to a Realtime server, and backend selection.

Failures are the ``UpstreamError`` branch of :mod:`voicerelay.errors` (unavailable, rejected,
closed, timed out); websockets' and the OS's exceptions are translated into it here.

``--backend`` is ``embedded`` (the default without OPENAI_API_KEY: an in-process embedded
backend on an ephemeral loopback port, reached over a real WebSocket), ``openai`` (the default
with a key) or any ``ws://``/``wss://`` URL. The API key goes into the ``Authorization`` header
and nowhere else: :class:`UpstreamSpec` hides it from ``repr`` and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake, InvalidStatus, InvalidURI

from .backoff import backoff_delays  # the project's one retry policy (importable from here as before)
from .errors import (  # noqa: F401 - the upstream's errors, importable from here as before
    ConnectionLost,
    UpstreamClosed,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    UsageError,
)
from .protocol.events import Dialect

log = logging.getLogger(__name__)

OPENAI_URL = "wss://api.openai.com/v1/realtime"
CONNECT_TIMEOUT = 10.0




@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """Where and how to connect. ``api_key`` never appears in ``repr``."""

    url: str
    dialect: Dialect = Dialect.GA
    api_key: str | None = dataclasses.field(default=None, repr=False)
    label: str = ""

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if self.dialect is Dialect.BETA:
            headers["OpenAI-Beta"] = "realtime=v1"
        return headers

    def describe(self) -> str:
        return self.label or self.url

    async def connect(self) -> UpstreamConnection:
        """Open a connection (with retries): what a :class:`~voicerelay.relay.Relay` calls."""
        return await open_connection(self)


def with_model(url: str, model: str) -> str:
    """``url`` with ``?model=`` set, unless it already names one."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))  # an explicit URL is taken as given
    query.setdefault("model", model)
    return urlunsplit(parts._replace(query=urlencode(query)))


def choose_backend(backend: str | None, env: dict[str, str] | None = None) -> str:
    """``embedded``, ``openai`` or a URL: the default depends on OPENAI_API_KEY."""
    env = os.environ if env is None else env
    if backend in (None, ""):
        return "openai" if env.get("OPENAI_API_KEY") else "embedded"
    if backend in ("embedded", "openai") or backend.startswith(("ws://", "wss://")):
        return backend
    raise ValueError(f"--backend must be embedded, openai or a ws:// or wss:// URL, not {backend!r}")


def remote_spec(choice: str, model: str, dialect: Dialect, env: dict[str, str]) -> UpstreamSpec:
    """The spec for ``openai`` or a URL (``choice`` as returned by :func:`choose_backend`)."""
    key = env.get("OPENAI_API_KEY")
    if choice == "openai":
        if not key:
            raise UsageError("--backend openai needs an API key: set OPENAI_API_KEY in the environment")
        return UpstreamSpec(with_model(OPENAI_URL, model), dialect, key, "api.openai.com")
    url = with_realtime_path(choice)
    return UpstreamSpec(with_model(url, model), dialect, key, url.split("?")[0])


REALTIME_PATH = "/v1/realtime"


def with_realtime_path(url: str) -> str:
    """``url`` with the Realtime path when it names none (``ws://host:8765`` is the server's root,
    where a Realtime server answers 404)."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path=REALTIME_PATH))
    return url


def embedded_spec(url: str, model: str, dialect: Dialect) -> UpstreamSpec:
    """The spec for an embedded backend listening at ``url``."""
    return UpstreamSpec(with_model(url, model), dialect, None, f"embedded backend ({url})")


@dataclasses.dataclass(slots=True)
class Upstream:
    """The resolved ``--backend`` of a run: where to connect, and the embedded backend started
    for it (``server``), if any, which :meth:`close` stops. Made by :func:`start_upstream`."""

    spec: UpstreamSpec
    server: Any = None  # a voicerelay.backend.server.BackendServer

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.close()


async def start_upstream(backend: str | None, model: str, dialect: Dialect = Dialect.GA,
                         env: dict[str, str] | None = None, **embedded_options: object) -> Upstream:
    """Resolve ``--backend`` (the one place that starts an embedded backend, for every front door).

    ``embedded`` starts one on an ephemeral loopback port, reached over a real WebSocket like any
    other; ``embedded_options`` go to it (``stt_processes=0`` recognises speech in a thread: one
    session needs no worker processes, which cost a second of start-up).
    """
    env = dict(os.environ) if env is None else env
    choice = choose_backend(backend, env)
    if choice != "embedded":
        return Upstream(remote_spec(choice, model, dialect, env))
    from .backend.server import BackendServer

    server = BackendServer(host="127.0.0.1", port=0, **embedded_options)  # type: ignore[arg-type]
    await server.start()
    return Upstream(embedded_spec(server.url, model, dialect), server)


@contextlib.asynccontextmanager
async def upstream_for(backend: str | None, model: str, dialect: Dialect = Dialect.GA,
                       env: dict[str, str] | None = None, **embedded_options: object) -> AsyncIterator[UpstreamSpec]:
    """One session's upstream (``replay``, ``talk``): :func:`start_upstream` for the duration."""
    embedded_options.setdefault("stt_processes", 0)
    upstream = await start_upstream(backend, model, dialect, env, **embedded_options)
    try:
        yield upstream.spec
    finally:
        await upstream.close()


class UpstreamConnection:
    """One open connection to a Realtime server: text frames in and out, and websockets'
    ``ConnectionClosed`` translated into :class:`~voicerelay.errors.ConnectionLost` (the only
    exception the relay needs to know). Everything else is websockets' own connection."""

    __slots__ = ("_ws",)

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    async def send(self, message: str | bytes) -> None:
        """One text frame: a ``str``, or JSON already encoded as UTF-8 (sent as it is)."""
        try:
            await self._ws.send(message, text=True)
        except ConnectionClosed as exc:
            raise self._lost(exc) from None

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next frame, as bytes (a text frame not decoded: the JSON parser reads UTF-8);
        :class:`TimeoutError` after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._ws.recv(decode=False), timeout)
        except ConnectionClosed as exc:
            raise self._lost(exc) from None

    async def frames(self) -> AsyncIterator[bytes]:
        """Every frame, as bytes (as :meth:`recv`), until the connection closes (normally: the
        iteration ends; else ConnectionLost)."""
        recv = self._ws.recv
        try:
            while True:
                yield await recv(decode=False)
        except ConnectionClosedOK:
            return
        except ConnectionClosed as exc:
            raise self._lost(exc) from None

    async def close(self, timeout: float = 2.0) -> None:
        """Close, waiting at most ``timeout`` seconds for the closing handshake."""
        with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
            await asyncio.wait_for(self._ws.close(), timeout)

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    @property
    def extensions(self) -> list[str]:
        """The WebSocket extensions negotiated (none: see :func:`open_connection`)."""
        return [extension.name for extension in self._ws.protocol.extensions]

    @staticmethod
    def _lost(exc: ConnectionClosed) -> ConnectionLost:
        code = exc.rcvd.code if exc.rcvd is not None else None
        return ConnectionLost(f"closed with code {code}" if code not in (None, 1006) else "connection dropped", code)


async def open_connection(spec: UpstreamSpec, retries: int = 3) -> UpstreamConnection:
    """Connect, retrying transient failures (refused, timeout, HTTP 5xx) with backoff."""
    delays = backoff_delays(retries)
    last: UpstreamError | None = None
    for attempt in range(retries + 1):
        try:
            return UpstreamConnection(await asyncio.wait_for(
                # no permessage-deflate: base64 audio barely compresses (1330 -> 850 bytes per 20 ms)
                # and deflating it was most of the relay's CPU per chunk (benchmarks/replay_speed.py)
                connect(spec.url, additional_headers=spec.headers(), max_size=None, open_timeout=CONNECT_TIMEOUT,
                        ping_interval=20, ping_timeout=20, compression=None),
                CONNECT_TIMEOUT + 1))
        except InvalidStatus as exc:
            status = exc.response.status_code
            hint = ""
            if status == 404 and not urlsplit(spec.url).path.endswith(REALTIME_PATH):
                hint = f" (Realtime servers listen at {REALTIME_PATH}: is the URL's path right?)"
            last = UpstreamRejected(f"{spec.describe()} rejected the connection: HTTP {status}{hint}", status)
            if status < 500:
                raise last from None
        except InvalidURI as exc:
            raise UpstreamRejected(f"not a WebSocket URL: {exc.uri}") from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            last = UpstreamUnavailable(f"cannot reach {spec.describe()}: {reason}")
        if attempt < retries:
            log.info("%s; retrying in %.1f s", last, delays[attempt])
            await asyncio.sleep(delays[attempt])
    assert last is not None
    raise last
