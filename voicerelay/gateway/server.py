"""``Gateway``: the Socket.IO edge for browsers, wired together. Each browser session drives its own Relay.

One python-socketio ``AsyncServer`` (ASGI) serves the ragent event contract (``contract.py``)
on the default namespace (``namespace.py``; one ``GatewaySession`` per browser, ``session.py``),
the ``/monitor`` namespace (``monitor.py``) and the HTTP routes (``http.py``). The gateway
itself decides nothing about the Realtime protocol: it turns browser events into Relay inputs
and Relay observations into browser events, and enforces the limits (token, origins, session
count and length, chunk size, audio rate).

Use it as ``voicerelay serve`` or in Python::

    gateway = Gateway(on_transcript=my_agent)          # or tools=..., function_map=...
    app = FastAPI(lifespan=gateway.lifespan)
    app.mount("/voice", gateway.asgi_app())
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import socketio

from ..errors import GatewayConfigError
from ..protocol import wirejson
from ..protocol.config import RealtimeConfig
from ..protocol.events import Dialect
from ..upstream import Upstream, UpstreamError, UpstreamSpec, choose_backend, start_upstream
from . import contract as c
from .cluster import Cluster
from .http import GC_YOUNG_THRESHOLD, INSTALL_HINT, STATIC, HttpRoutes, find_socketio_client
from .limits import MAX_MESSAGE_BYTES, PING_INTERVAL_S, PING_TIMEOUT_S, uvicorn_options
from .modes import check_modes
from .monitor import Monitor
from .namespace import GatewayNamespace
from .registry import SessionRegistry
from .session import MAX_BACKLOG_BYTES, EventEmitter, GatewaySession, SessionOptions
from .wire import Wires

__all__ = ["GC_YOUNG_THRESHOLD", "INSTALL_HINT", "MAX_MESSAGE_BYTES", "PING_INTERVAL_S", "PING_TIMEOUT_S",
           "STATIC", "EventEmitter", "Gateway", "GatewayConfigError", "GatewaySession", "find_socketio_client"]

log = logging.getLogger(__name__)

SHUTDOWN_ACK_TIMEOUT_S = 2.0
# (MAX_MESSAGE_BYTES, PING_INTERVAL_S and PING_TIMEOUT_S: see voicerelay.gateway.limits)


class Gateway:
    """The gateway; see the module docstring. Both modes at once is a :class:`GatewayConfigError`."""

    def __init__(self, *, backend: str | None = None, dialect: Dialect | str = Dialect.GA,
                 config: RealtimeConfig | None = None, config_overrides: Mapping[str, Any] | None = None,
                 on_transcript: Callable[..., Any] | None = None, tools: list[dict[str, Any]] | None = None,
                 function_map: Mapping[str, Callable[..., Any]] | None = None,
                 allow_origins: list[str] | str | None = None, token: str | None = None, max_sessions: int = 100,
                 max_chunk_b64: int = c.DEFAULT_MAX_CHUNK_B64, max_session_seconds: float = 3600.0,
                 max_message_bytes: int | None = None, max_backlog_bytes: int = MAX_BACKLOG_BYTES,
                 ping_interval: float = PING_INTERVAL_S, ping_timeout: float = PING_TIMEOUT_S,
                 record_dir: str | os.PathLike[str] | None = None, tool_timeout: float = 30.0,
                 embedded_options: Mapping[str, Any] | None = None,
                 node_modules: str | os.PathLike[str] | None = None, admin_token: str | None = None,
                 redis_url: str | None = None, node_id: str | None = None, lint: bool = True) -> None:
        check_modes(on_transcript, tools, function_map)
        try:  # the pure layer's ConfigError and choose_backend's ValueError: a gateway built wrong
            base = config or RealtimeConfig()
            base = RealtimeConfig.from_mapping(dict(config_overrides or {}), base)
            if tools:
                base = RealtimeConfig.from_mapping({"tools": list(tools)}, base)
            if on_transcript is not None:
                base = RealtimeConfig.from_mapping({"create_response": False}, base)
            self.backend = choose_backend(backend)
        except ValueError as exc:
            raise GatewayConfigError(str(exc)) from exc
        self.config = base
        self.dialect = Dialect(dialect)
        self.on_transcript = on_transcript
        self.function_map = function_map
        self.token = token
        self.max_sessions = max_sessions
        self.closing = False  # shut_down_sessions() began: no new connections
        self.max_chunk_b64 = max_chunk_b64
        # the gateway answers every chunk the transport reads: the transport reads the largest
        # chunk the gateway accepts and more
        self.max_message_bytes = max_message_bytes or max(MAX_MESSAGE_BYTES, 2 * max_chunk_b64)
        if self.max_message_bytes < max_chunk_b64 + 1024:
            raise GatewayConfigError(f"max_message_bytes ({self.max_message_bytes}) must exceed max_chunk_b64 "
                                     f"({max_chunk_b64}) by 1 KiB at least, or the transport, not the gateway, "
                                     "would refuse a chunk over the limit")
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.wires = Wires(self.max_message_bytes)
        self.max_session_seconds = max_session_seconds
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.tool_timeout = tool_timeout
        self.embedded_options = dict(embedded_options or {})
        self.registry: SessionRegistry[GatewaySession] = SessionRegistry()
        self._upstream: Upstream | None = None
        self._spec_lock = asyncio.Lock()
        if allow_origins == "*" or (isinstance(allow_origins, list) and "*" in allow_origins):
            log.warning("--allow-origin '*': any web page can open sessions on this gateway (and spend its key)")
            cors: Any = "*"
        else:
            cors = allow_origins  # None = same origin only (python-socketio's default)
        self.cluster: Cluster | None = None
        manager = None
        if redis_url is not None:
            if not redis_url.startswith(("redis://", "rediss://", "unix://")):
                raise GatewayConfigError(f"--redis takes a redis://, rediss:// or unix:// URL, not {redis_url!r}")
            self.cluster = Cluster(self.registry, redis_url, node_id, act=self.act_locally,
                                   gone=self._remote_session_gone, status=self._cluster_status)
            manager = self.cluster.socketio_manager()
        self.node_id = self.cluster.node_id if self.cluster else None
        self.session_options = SessionOptions(max_session_seconds=max_session_seconds, record_dir=self.record_dir,
                                              node_id=self.node_id, on_transcript=on_transcript,
                                              function_map=function_map, tool_timeout=tool_timeout, lint=lint,
                                              max_backlog_bytes=max_backlog_bytes)
        # python-socketio and python-engineio given their loggers: left to themselves, they add a
        # handler of their own to the root's and every line they log appears twice, in two formats.
        # No task per event: the namespace gives one to the events that may wait (see its docstring).
        self.sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=cors, client_manager=manager,
                                        async_handlers=False,
                                        max_http_buffer_size=self.max_message_bytes, ping_interval=ping_interval,
                                        ping_timeout=ping_timeout, json=wirejson,
                                        logger=_library_logger("socketio.server"),
                                        engineio_logger=_library_logger("engineio.server"))
        self.monitor = Monitor(self.sio, self.registry, admin_token, self.cluster)
        self.namespace = GatewayNamespace(self)
        self.sio.register_namespace(self.namespace)
        self._node_modules = node_modules
        self._socketio_js = find_socketio_client(node_modules)
        if self._socketio_js is None:
            log.warning("demo page: %s", INSTALL_HINT)

    @property
    def sessions(self) -> dict[str, GatewaySession]:
        """The sessions of this node by Socket.IO connection id (a snapshot)."""
        return self.registry.as_dict()

    @property
    def clients(self) -> dict[str, str]:
        """The connected Socket.IO clients of this node (``sid`` -> ``client_id (address)``)."""
        return dict(self.registry.clients)

    @property
    def socketio_js(self) -> Path | None:
        """The demo page's Socket.IO client: looked up again on each request while it is missing
        (``npm install`` while the gateway runs), kept once found."""
        if self._socketio_js is None:
            self._socketio_js = find_socketio_client(self._node_modules)
            if self._socketio_js is not None:
                log.info("demo page: found the browser Socket.IO client at %s", self._socketio_js)
        return self._socketio_js

    @property
    def backend_server(self) -> Any:
        """The embedded backend, once a session started it (else None)."""
        return self._upstream.server if self._upstream is not None else None

    def session_by_id(self, session_id: str) -> GatewaySession | None:
        return self.registry.by_id(session_id)

    def start_cluster(self) -> None:
        if self.cluster is not None:
            self.cluster.start()

    async def startup(self) -> None:
        """What the ASGI lifespan's start-up does: with ``redis_url``, check Redis (a dead Redis
        is one warning line and the node starts degraded; see :mod:`~voicerelay.gateway.cluster`)."""
        if self.cluster is not None:
            await self.cluster.check()

    async def act_locally(self, action: str, session_id: str, data: Any, reply_to: str) -> None:
        """Carry out an action on a session of this node, for ``reply_to`` (any node's client)."""
        await self.namespace.act_locally(action, session_id, data, reply_to)

    def _remote_session_gone(self, session_id: str, node: str, why: str) -> None:
        self.namespace.remote_session_gone(session_id, node, why)

    def _cluster_status(self, status: str) -> None:
        self.namespace.cluster_status(status)

    # ----------------------------------------------------------------------------- upstream

    async def upstream_spec(self) -> UpstreamSpec:
        """The upstream of every session; the embedded backend starts on first use."""
        async with self._spec_lock:
            if self._upstream is None:
                self._upstream = await start_upstream(self.backend, self.config.model, self.dialect,
                                                      **self.embedded_options)
            return self._upstream.spec

    async def upstream_reachable(self) -> bool:
        if self.backend == "embedded":
            return True
        try:
            spec = await self.upstream_spec()
        except UpstreamError:
            return False
        parts = urlsplit(spec.url)
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), 2.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):  # reset by the peer: it was reachable all the same
            await writer.wait_closed()
        return True

    # ----------------------------------------------------------------------------- lifecycle

    async def shut_down_sessions(self, timeout: float = SHUTDOWN_ACK_TIMEOUT_S) -> None:
        """The first step of a graceful stop, before the server closes the connections: refuse
        new connections and end every session. Each browser gets ``session_ended {status:
        "shutdown"}``; this waits, at most ``timeout`` seconds, until every browser acknowledged it
        (Socket.IO's ack, which python-socketio clients and the demo page send; a browser that
        does not acknowledge costs the timeout)."""
        self.closing = True
        await asyncio.gather(*(s.end("shutdown", ack_timeout=timeout) for s in self.registry.sessions()),
                             return_exceptions=True)

    async def close(self) -> None:
        """End every session and stop the embedded backend, if one was started."""
        for session in self.registry.sessions():
            await session.end("shutdown")
        await self.monitor.close()
        if self.cluster is not None:
            await self.cluster.close()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            await upstream.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> Any:
        """For a host app that mounts the gateway: ``FastAPI(lifespan=gateway.lifespan)``.

        Mounted apps get no lifespan events of their own, so the host must close the gateway.
        """
        await self.startup()
        try:
            yield
        finally:
            await self.close()

    # ----------------------------------------------------------------------------- HTTP

    def asgi_app(self, other_asgi_app: Any = None) -> Any:
        """The ASGI application: Socket.IO at ``/socket.io``, the HTTP routes, else ``other_asgi_app``."""
        http = HttpRoutes(self, other_asgi_app)
        inner = socketio.ASGIApp(self.sio, other_asgi_app=http, socketio_path="socket.io")
        wires = self.wires

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            # mounted under a prefix (Starlette/FastAPI mount): route on the path inside the mount
            root = scope.get("root_path", "")
            path = scope.get("path", "")
            if root and path.startswith(root):
                path = path[len(root):] or "/"
                scope = {**scope, "path": path}
            if (path == "/socket.io" or path.startswith("/socket.io/")) and scope["type"] in ("http", "websocket"):
                await wires.serve(inner, scope, receive, send)  # each connection's wire (see wire.py)
            else:
                await inner(scope, receive, send)

        return app

    def uvicorn_options(self) -> dict[str, Any]:
        """What uvicorn needs to serve :meth:`asgi_app` within the documented limits (``serve``
        uses it; pass it to your own ``uvicorn.run(app, **gateway.uvicorn_options())``): the
        largest message it reads, the same as engine.io's, and the WebSocket ping, the same as
        Socket.IO's heartbeat (see :mod:`~voicerelay.gateway.limits`)."""
        return uvicorn_options(self.max_message_bytes, self.ping_interval, self.ping_timeout)

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = {"status": "ok", "sessions": len(self.registry),
                                  "connections": len(self.registry.clients),
                                  "backend": self.backend if self.backend in ("embedded", "openai") else "custom"}
        if self.cluster is not None:
            # ok only once this node's sessions are registered and it listens: before the first
            # check ("starting") and until it is back in full after an outage, it is degraded
            health["cluster"] = {"node": self.cluster.node_id, "redis": self.cluster.status,
                                 "error": self.cluster.last_error, "remote_sessions": len(self.cluster.remote)}
            if self.cluster.status != "ok":
                health["status"] = "degraded"
        return health

    def session_config(self) -> dict[str, Any]:
        mode = "agent" if self.on_transcript else "functions" if self.function_map else "realtime"
        return {**self.config.public(), "dialect": self.dialect.value, "mode": mode,
                "backend": self.health()["backend"], "token_required": self.token is not None,
                "max_chunk_b64": self.max_chunk_b64, "max_message_bytes": self.max_message_bytes,
                "socketio_client": self.socketio_js is not None}


def _library_logger(name: str) -> logging.Logger:
    """``name``'s logger, quiet below ERROR unless logging was set up for it (as the library's default)."""
    logger = logging.getLogger(name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    return logger
