"""The transport's limits, and the uvicorn options that serve a gateway within them. No I/O.

Apart from :mod:`~voicerelay.gateway.server` so that what runs a gateway's ASGI app (``serve``,
a host's ``uvicorn.run``, ``benchmarks/gateway_load.py`` for its bare relay too) can read them
without building a :class:`~voicerelay.gateway.server.Gateway` or importing Socket.IO.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_MESSAGE_BYTES", "PING_INTERVAL_S", "PING_TIMEOUT_S", "uvicorn_options"]

#: The largest message a connection may send (any event: its WebSocket message or long-polling
#: body), in bytes. engine.io's ``max_http_buffer_size`` and uvicorn's ``ws_max_size`` are both
#: this (see :func:`uvicorn_options`), so every message the transport reads reaches the
#: gateway, which answers an oversized ``audio_data`` with ``chunk_too_large``; a bigger one
#: cannot be read: uvicorn closes the connection with WebSocket code 1009 ("message too big").
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
#: The heartbeat, the same at both layers: Socket.IO's (engine.io pings, the browser's page answers)
#: and the WebSocket's (uvicorn pings, the browser's network stack answers). A browser that stops
#: answering is dropped at most PING_INTERVAL_S + PING_TIMEOUT_S after its last answer by the
#: WebSocket ping; Socket.IO's is checked by engine.io only when something is sent to the
#: connection and once every PING_TIMEOUT_S otherwise, so it adds at most PING_TIMEOUT_S when it
#: is the one that acts (a page that hangs while its network stack answers; a connection whose
#: buffers are full, which the WebSocket ping cannot close).
PING_INTERVAL_S = 10.0
PING_TIMEOUT_S = 10.0


def uvicorn_options(max_message_bytes: int = MAX_MESSAGE_BYTES, ping_interval: float = PING_INTERVAL_S,
                    ping_timeout: float = PING_TIMEOUT_S) -> dict[str, Any]:
    """The ``uvicorn.Config`` options for a gateway with these limits (``Gateway.uvicorn_options()``
    passes its own): the WebSocket implementation ``serve`` uses, the largest message it reads
    (the same as engine.io's) and the WebSocket ping (the same as Socket.IO's heartbeat)."""
    return {"ws": "websockets-sansio", "ws_max_size": max_message_bytes,
            "ws_ping_interval": ping_interval, "ws_ping_timeout": ping_timeout}
