"""The gateway's HTTP side, a minimal ASGI app: ``GET /health``, ``GET /session-config``, the
demo page (``GET /`` and ``/static/*``) and the ASGI lifespan of a standalone gateway."""

from __future__ import annotations

import json
import mimetypes
import os
from pathlib import Path
from typing import Any, Protocol

from ..gctune import YOUNG_THRESHOLD, settle_for_serving

STATIC = Path(__file__).parent / "static"
SOCKETIO_JS = Path("socket.io-client") / "dist" / "socket.io.min.js"
GC_YOUNG_THRESHOLD = YOUNG_THRESHOLD  # a standalone gateway's first garbage-collector threshold (see HttpRoutes)
INSTALL_HINT = "the browser Socket.IO client is missing, so its Start button cannot work: run `npm install` " \
               "in the voicerelay checkout (or set VOICERELAY_NODE_MODULES to a node_modules folder holding " \
               "socket.io-client); no restart needed"


def find_socketio_client(node_modules: str | os.PathLike[str] | None = None) -> Path | None:
    """The browser Socket.IO client installed by ``npm install`` (never committed, never a CDN).

    Looks in ``node_modules`` when given, else in $VOICERELAY_NODE_MODULES when it is set, else in
    ./node_modules and the checkout's node_modules. Cheap (a few ``stat`` calls): a gateway asks
    again while the file is missing, so an ``npm install`` while it runs needs no restart.
    """
    if node_modules is None and os.environ.get("VOICERELAY_NODE_MODULES"):
        node_modules = os.environ["VOICERELAY_NODE_MODULES"]  # the user said where: look only there
    if node_modules is not None:
        candidates = [Path(node_modules)]
    else:
        candidates = [Path.cwd() / "node_modules", Path(__file__).resolve().parents[2] / "node_modules"]
    for base in candidates:
        if (base / SOCKETIO_JS).is_file():
            return base / SOCKETIO_JS
    return None


class HttpHost(Protocol):
    """What the routes ask of the gateway."""

    @property
    def socketio_js(self) -> Path | None: ...  # looked up again while missing

    def health(self) -> dict[str, Any]: ...

    async def startup(self) -> None: ...

    def session_config(self) -> dict[str, Any]: ...

    async def upstream_reachable(self) -> bool: ...

    async def close(self) -> None: ...


class HttpRoutes:
    """/health, /session-config, / and /static/*; anything else goes to ``fallback`` (a host app)."""

    def __init__(self, gateway: HttpHost, fallback: Any = None) -> None:
        self.gateway = gateway
        self.fallback = fallback

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            if self.fallback is not None:  # the wrapped app owns the lifespan
                await self.fallback(scope, receive, send)
            else:
                await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        if scope.get("method") not in ("GET", "HEAD"):
            await respond(send, 405, b"method not allowed\n", "text/plain")
            return
        if path == "/health":
            body = {**self.gateway.health(), "upstream_reachable": await self.gateway.upstream_reachable()}
            await respond(send, 200, json.dumps(body).encode(), "application/json")
        elif path == "/session-config":
            await respond(send, 200, json.dumps(self.gateway.session_config()).encode(), "application/json")
        elif path in ("/", "/index.html"):
            await respond(send, 200, (STATIC / "index.html").read_bytes(), "text/html; charset=utf-8")
        elif path == "/static/socket.io.min.js":
            js = self.gateway.socketio_js
            if js is None:
                hint = f"console.error({json.dumps('voicerelay: ' + INSTALL_HINT)});\n"
                await respond(send, 404, hint.encode(), "text/javascript")
            else:
                await respond(send, 200, js.read_bytes(), "text/javascript")
        elif path.startswith("/static/") and "/" not in path[len("/static/"):]:
            file = STATIC / path[len("/static/"):]
            if file.is_file():
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                await respond(send, 200, file.read_bytes(), kind)
            else:
                await respond(send, 404, b"not found\n", "text/plain")
        elif self.fallback is not None:
            await self.fallback(scope, receive, send)
        else:
            await respond(send, 404, b"not found\n", "text/plain")

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                settle_for_serving()  # the gateway owns the process (see voicerelay.gctune)
                await self.gateway.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def respond(send: Any, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
