"""What only the transport knows about a browser's connection: whether the browser is taking
what it is sent, and whether it sent a message too big to be read.

python-socketio hides its transport: an ``emit`` is queued for the connection and returns, and
a message over the size limit closes the connection with no trace of why. :class:`Wires` is ASGI
middleware between the server (uvicorn) and python-socketio's app that watches the ASGI messages
of each Engine.IO connection and keeps what it saw in a :class:`Wire`:

* **Taking what it is sent.** On a WebSocket, a ``websocket.send`` that does not return is a
  browser whose socket buffers are full: it stopped reading. Over long-polling, the time between
  one poll's answer and the next poll is when nothing can reach it. While either lasts the wire
  is *stalled*; the session counts what it queues meanwhile (:meth:`Wire.queued`) and ends
  itself when that passes its bound (``not_reading``), so a reader that stopped reading cannot
  grow the gateway's memory without limit.
* **Too big to read.** A message over the largest the transport reads closes the connection
  before the gateway sees it (uvicorn closes with WebSocket code 1009; engine.io drops a
  message over its own buffer). The wire records it, so the gateway can say why the connection
  ended.

A session finds its wire through its connection's environ (python-socketio's ``get_environ``):
the ASGI scope of the connection's first request carries it (:meth:`Wires.of`). A connection
that starts with long-polling and upgrades keeps its wire: the handshake's answer names the
Engine.IO session (its ``sid``), and later requests carry that ``sid`` in their query string.
Nothing here reads another library's private state: only the ASGI messages themselves.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

__all__ = ["CLOSE_TOO_BIG", "SCOPE_KEY", "Wire", "Wires"]

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]

#: Where a connection's :class:`Wire` is kept in the ASGI scope of each of its requests.
SCOPE_KEY = "voicerelay.wire"
#: The WebSocket close code of a message over the server's maximum size ("message too big").
CLOSE_TOO_BIG = 1009


class Wire:
    """One Engine.IO connection, as its transport sees it."""

    __slots__ = ("__weakref__", "stalled_bytes", "stalled_since", "too_big")

    def __init__(self) -> None:
        self.stalled_since: float | None = None  # monotonic time since when the browser took nothing
        self.stalled_bytes = 0  # queued for it since then (what the session told :meth:`queued`)
        self.too_big: int | None = None  # the size of a message it sent over the limit (0: size unknown)

    @property
    def stalled(self) -> bool:
        return self.stalled_since is not None

    def queued(self, nbytes: int) -> int:
        """The gateway queued ``nbytes`` for this browser. Returns how much has been queued since it
        last took anything: 0 while it takes what it is sent."""
        if self.stalled_since is None:
            return 0
        self.stalled_bytes += nbytes
        return self.stalled_bytes

    def took(self) -> None:
        """Something reached the browser: it is not stalled."""
        self.stalled_since = None
        self.stalled_bytes = 0

    def waits(self) -> None:
        """Nothing can reach the browser until it takes more (a blocked send, no poll pending)."""
        if self.stalled_since is None:
            self.stalled_since = time.monotonic()


class Wires:
    """The middleware; see the module docstring. ``max_message_bytes`` is the largest message
    the transport reads (engine.io's ``max_http_buffer_size``, uvicorn's ``ws_max_size``)."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        # Engine.IO sid -> wire, while a scope (python-socketio's environ of the connection, or a
        # request under way) holds the wire: no clean-up to forget
        self._by_eio_sid: weakref.WeakValueDictionary[str, Wire] = weakref.WeakValueDictionary()

    @staticmethod
    def of(environ: MutableMapping[str, Any] | None) -> Wire | None:
        """The wire of a Socket.IO connection, from its environ (``AsyncServer.get_environ(sid)``)."""
        scope = (environ or {}).get("asgi.scope")
        return scope.get(SCOPE_KEY) if isinstance(scope, MutableMapping) else None

    async def serve(self, app: ASGIApp, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        """Pass one Engine.IO request (HTTP or WebSocket) to ``app``, watching its messages."""
        eio_sid = _query_sid(scope)
        wire = self._by_eio_sid.get(eio_sid) if eio_sid is not None else None
        if wire is None:  # a new connection (or a sid engine.io will refuse: the wire is then moot)
            wire = Wire()
        scope[SCOPE_KEY] = wire
        if scope["type"] == "websocket":
            await app(scope, self._ws_receive(wire, receive), self._ws_send(wire, send))
        elif eio_sid is None:  # a long-polling handshake: its answer names the Engine.IO session
            await app(scope, receive, self._handshake_send(wire, send))
        elif scope.get("method") == "GET":  # a poll: while it is pending, what is queued reaches the browser
            wire.took()
            try:
                await app(scope, receive, send)
            finally:
                wire.waits()
        else:
            await app(scope, receive, send)

    def _ws_receive(self, wire: Wire, receive: Any) -> Any:
        limit = self.max_message_bytes

        async def watched() -> dict[str, Any]:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("text")
                if data is None:
                    data = message.get("bytes")
                if data is not None and len(data) > limit:  # engine.io drops the connection for it
                    wire.too_big = len(data)
            elif kind == "websocket.disconnect" and message.get("code") == CLOSE_TOO_BIG and wire.too_big is None:
                wire.too_big = 0  # the server refused it unread: its size is unknown here
            return message

        return watched

    @staticmethod
    def _ws_send(wire: Wire, send: Any) -> Any:
        async def watched(message: dict[str, Any]) -> None:
            if message["type"] != "websocket.send":
                await send(message)
                return
            wire.waits()  # cleared at once unless the server's send blocks: the browser stopped reading
            await send(message)
            wire.took()

        return watched

    def _handshake_send(self, wire: Wire, send: Any) -> Any:
        async def watched(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                sid = _open_packet_sid(message.get("body", b""))
                if sid is not None:
                    self._by_eio_sid[sid] = wire
                    wire.waits()  # until its first poll
            await send(message)

        return watched


def _query_sid(scope: MutableMapping[str, Any]) -> str | None:
    raw = scope.get("query_string") or b""
    if b"sid=" not in raw:
        return None
    values = parse_qs(raw.decode("latin-1")).get("sid")
    return values[0] if values else None


def _open_packet_sid(body: bytes) -> str | None:
    """The ``sid`` of an Engine.IO OPEN packet (``0{"sid": ...}``), the answer to a handshake."""
    if not body.startswith(b"0{"):
        return None
    try:
        sid = json.loads(body[1:].split(b"\x1e", 1)[0]).get("sid")
    except (ValueError, AttributeError):
        return None
    return sid if isinstance(sid, str) else None
