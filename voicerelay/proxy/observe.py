"""What an observer of the proxy sees: every session's opening, every message both ways, its end.

An *observer* is a callable that the proxy calls once per session, when the upstream has
accepted it, with a :class:`SessionInfo`; it returns a :class:`SessionObserver` for that session
(or ``None`` to skip it). The proxy then calls ``event(frame)`` for every message, in the order
it was forwarded, **after** forwarding it (an observer never delays or changes a byte), and
``closed(end)`` once. Observers run on the proxy's event loop: they must be quick and must not
block (a recorder appends a line; a linter updates its state). One that raises is logged and
detached from that session; the session goes on.

``Frame.event`` is parsed once from a copy of the message and shared by the session's
observers: read it, never change it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal, Protocol

Direction = Literal["up", "down"]


@dataclasses.dataclass(frozen=True, slots=True)
class SessionInfo:
    """A proxied session as it opened. ``path`` is what the client asked for (path and query);
    ``upstream`` names the upstream (never a key); ``dialect`` is ``ga`` or ``beta``."""

    id: str
    path: str
    upstream: str
    dialect: str
    client: str = ""
    headers: tuple[tuple[str, str], ...] = ()  # what went upstream, the Authorization header left out


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One message forwarded: ``up`` client → upstream, ``down`` upstream → client.

    ``data`` is the message as forwarded (``str`` for a text frame, ``bytes`` for binary);
    ``event`` its JSON object, or ``None`` when it is not one; ``t`` the proxy's monotonic clock
    when it arrived, in seconds.
    """

    session: str
    direction: Direction
    t: float
    data: str | bytes
    event: dict[str, Any] | None


@dataclasses.dataclass(frozen=True, slots=True)
class SessionEnd:
    """How a session ended: which side closed it first (``client``, ``upstream`` or ``proxy``),
    the close code and reason it passed on (``1006``: the connection dropped without a close)."""

    session: str
    by: str
    code: int
    reason: str
    t: float


class SessionObserver(Protocol):
    def event(self, frame: Frame) -> None: ...

    def closed(self, end: SessionEnd) -> None: ...


Observer = Callable[[SessionInfo], "SessionObserver | None"]
