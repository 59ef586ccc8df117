"""The Socket.IO gateway for browsers (``voicerelay serve``): ragent's event contract over one
Relay per browser session. One job per module:

* ``server.py``: :class:`Gateway`, which wires the rest together (and the upstream it shares);
* ``namespace.py``: the default namespace, one ``on_<event>`` per browser event;
* ``session.py``: one browser's session (its Relay, limits, and the translation both ways);
* ``playback.py``: what the browser has played (its reported position, else an estimate);
* ``modes.py``: the agent wrapper and function calling (``agent.py`` keeps the old names);
* ``http.py``: ``/health``, ``/session-config``, the demo page (``static/``) and the lifespan;
* ``limits.py``: the transport's limits and the uvicorn options for them (``serve``'s);
* ``registry.py``: the sessions and clients of this node, what ``monitor`` and ``cluster`` read;
* ``monitor.py``: the read-only ``/monitor`` namespace; ``cluster.py``: several nodes on Redis;
* ``contract.py``: event names and payload checks (no I/O).

Importing this package imports no Socket.IO: :class:`Gateway` loads on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Gateway"]


def __getattr__(name: str) -> Any:
    if name == "Gateway":
        from .server import Gateway

        return Gateway
    raise AttributeError(name)
