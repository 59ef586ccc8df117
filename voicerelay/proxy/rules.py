"""The proxy's decisions, as plain functions of plain values (no I/O, no clock, no sockets).

- :func:`check_listen`: where the proxy may listen (loopback, or anywhere with a token).
- :func:`admit`: whether one handshake gets through (path, origin, token, capacity), and if not
  the HTTP status and one-line body it gets instead.
- :func:`upstream_url` and :func:`upstream_headers`: the upstream handshake made from the
  client's (same path and query; its headers but the hop-by-hop ones and its credential).
- :func:`parse_copy`: the event observers see, parsed from a copy of the forwarded text.

The client's credential is the ``Authorization`` header (``Bearer TOKEN``: what the ``openai``
SDK sends for its ``api_key``, so an app puts the proxy's token, or any placeholder, where its
key was). It never goes upstream unless the proxy has neither a key of its own nor a token (a
transparent proxy for an app that holds its own key).
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..protocol.wirejson import loads

PATH = "/v1/realtime"

#: Client headers that belong to the client's own hop (or its credential), never forwarded.
HOP_HEADERS = frozenset({
    "host", "connection", "upgrade", "keep-alive", "te", "trailer", "transfer-encoding", "content-length",
    "proxy-authorization", "proxy-connection", "sec-websocket-key", "sec-websocket-version",
    "sec-websocket-extensions", "sec-websocket-accept", "sec-websocket-protocol", "authorization", "cookie",
    "origin", "user-agent",  # (user-agent is passed on, but through the client library's own parameter)
})


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """A handshake the proxy answers itself: an HTTP status and a one-line body."""

    status: HTTPStatus
    message: str


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``; any other name or address is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, token: str | None) -> str | None:
    """Why the proxy may not listen on ``host`` as configured (``None``: it may)."""
    if token is not None and not token.strip():
        return "--token must not be empty"
    if not is_loopback(host) and not token:
        return (f"listening on {host} (not loopback) needs --token: anyone who reaches it could spend the "
                "upstream's key. Clients then send 'Authorization: Bearer TOKEN' (the openai SDK's api_key)")
    return None


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header, if there is one."""
    value = headers.get("authorization") or headers.get("Authorization") or ""
    scheme, _, credential = value.partition(" ")
    return credential.strip() if scheme.lower() == "bearer" and credential.strip() else None


def origin_allowed(origin: str | None, allow_origins: Iterable[str]) -> bool:
    """No ``Origin`` (an SDK, a server): allowed. A browser's origin: only when listed (or ``*``)."""
    if origin is None:
        return True
    allowed = {o.rstrip("/") for o in allow_origins}
    return "*" in allowed or origin.rstrip("/") in allowed


def admit(path: str, headers: Mapping[str, str], *, token: str | None, allow_origins: Iterable[str],
          sessions: int, max_sessions: int) -> Refusal | None:
    """The proxy's checks on a handshake, in order: path, origin, token, capacity.

    ``headers`` maps header names to values (a lookup that ignores case, as websockets' does,
    or lower-case names).
    """
    if urlsplit(path).path.rstrip("/") != PATH:
        return Refusal(HTTPStatus.NOT_FOUND, f"Not found. The Realtime endpoint is {PATH}")
    if not origin_allowed(headers.get("origin") or headers.get("Origin"), allow_origins):
        return Refusal(HTTPStatus.FORBIDDEN, "This origin may not use the proxy (see --allow-origin).")
    if token is not None:
        sent = bearer(headers)
        if sent is None or not hmac.compare_digest(sent.encode(), token.encode()):
            return Refusal(HTTPStatus.UNAUTHORIZED,
                           "Missing or wrong token: send 'Authorization: Bearer TOKEN' (the openai SDK's api_key).")
    if sessions >= max_sessions:
        return Refusal(HTTPStatus.SERVICE_UNAVAILABLE, f"The proxy has {max_sessions} sessions already; try later.")
    return None


def upstream_url(base: str, client_path: str) -> str:
    """The upstream URL for a client's request path: ``base``'s scheme, host and path, the client's
    query as it sent it, then any parameter of ``base`` the client did not name."""
    client_query = urlsplit(client_path).query
    parts = urlsplit(base)
    named = {key for key, _ in parse_qsl(client_query, keep_blank_values=True)}
    extra = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in named]
    query = "&".join(q for q in (client_query, urlencode(extra)) if q)
    return urlunsplit(parts._replace(query=query))


def upstream_headers(client_headers: Iterable[tuple[str, str]], *, key: str | None,
                     token: str | None) -> list[tuple[str, str]]:
    """The client's headers for the upstream: hop-by-hop ones and its credential left out, the
    proxy's key added (``OpenAI-Beta``, ``OpenAI-Organization``... pass as they came)."""
    pairs = list(client_headers)
    out = [(name, value) for name, value in pairs if name.lower() not in HOP_HEADERS]
    if key:
        out.append(("Authorization", f"Bearer {key}"))
    elif token is None:
        out += [(name, value) for name, value in pairs if name.lower() == "authorization"]
    return out


def user_agent(client_headers: Iterable[tuple[str, str]]) -> str | None:
    """The client's ``User-Agent`` (passed on, so the upstream sees the app's library)."""
    return next((value for name, value in client_headers if name.lower() == "user-agent"), None)


def parse_copy(data: str | bytes) -> dict[str, Any] | None:
    """The event in a forwarded message, for observers: a dict, or ``None`` when the message is not
    a JSON object (the upstream answers such garbage; the proxy only watches)."""
    try:
        event = loads(data)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def dialect_label(headers: Mapping[str, str]) -> str:
    """``beta`` when the client asked for ``OpenAI-Beta: realtime=v1``, else ``ga``."""
    beta = headers.get("openai-beta") or headers.get("OpenAI-Beta") or ""
    return "beta" if "realtime=v1" in beta.replace(" ", "").lower() else "ga"
