"""``GatewayClient``: drive a running voicerelay gateway (``voicerelay serve``) from a program.

One asyncio client holds one Socket.IO connection (python-socketio's ``AsyncClient``, websocket
transport) and at most one session on it, mirrors the session's state, turns the gateway's
events into semantic events, and reconnects by itself::

    client = GatewayClient("http://127.0.0.1:8000", token="s3cret")
    client.on("ai_response", lambda e: print(e["response"]))
    async with client:                       # or: task = asyncio.create_task(client.start()) ... await client.stop()
        await client.start_session({"contextId": "ctx-1"})
        await client.send_text("what is your name")

Two modules, one job each:

- :mod:`~voicerelay.client.mirror`: ``StateMirror``, the pure state mirror: gateway events in,
  :class:`SessionState` changes and semantic events out (no I/O; what ``sessions``,
  ``ai_state`` and each event mean);
- :mod:`~voicerelay.client.connection`: ``GatewayClient``, the connection: Socket.IO and HTTP
  with retries, the action queue, acks, resync and resume (how it runs, reconnects, queues and
  fails).

The errors are :mod:`voicerelay.errors`' ``GatewayClientError`` branch, importable from here
(``UsageError`` is ``ClientUsageError`` there). ``GatewayClient`` loads on first use, so the
mirror and the errors import without python-socketio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import (
    AuthenticationError,
    GatewayClientError,
    GatewayTimeoutError,
    GatewayUnreachableError,
    NoSessionError,
    NotConnectedError,
    QueueFullError,
    SessionStartError,
)
from ..errors import ClientUsageError as UsageError

if TYPE_CHECKING:
    from .connection import CONTROL_ACTIONS, EVENTS, GatewayClient
    from .mirror import SessionState, StateMirror

__all__ = [
    "CONTROL_ACTIONS", "EVENTS", "AuthenticationError", "GatewayClient", "GatewayClientError", "GatewayTimeoutError",
    "GatewayUnreachableError", "NoSessionError", "NotConnectedError", "QueueFullError", "SessionStartError",
    "SessionState", "StateMirror", "UsageError",
]

_LAZY = {
    "GatewayClient": "connection",
    "EVENTS": "connection",
    "CONTROL_ACTIONS": "connection",
    "SessionState": "mirror",
    "StateMirror": "mirror",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'voicerelay.client' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
