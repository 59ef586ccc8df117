"""Who is connected to this gateway node and which sessions it holds: what ``monitor`` and
``cluster`` read, so that they depend on this small module rather than on the gateway.

Plain Python, no I/O. A session is anything with the :class:`Registered` shape (the gateway's
:class:`~voicerelay.gateway.session.GatewaySession`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar


class Registered(Protocol):
    """What the registry, the monitor and the cluster need of a session."""

    @property
    def id(self) -> str: ...  # the session id browsers and followers see (``vr_<sid>``)

    @property
    def sid(self) -> str: ...  # the Socket.IO connection of the browser that owns it

    def state(self) -> dict[str, Any]: ...  # what monitors and other nodes see of it


S = TypeVar("S", bound=Registered)


class SessionRegistry(Generic[S]):
    """The sessions of this node by connection (``sid``) and by session id, and the connected
    clients (``sid`` -> a label for logs and monitors: ``client_id (address)``)."""

    def __init__(self) -> None:
        self.clients: dict[str, str] = {}
        self._by_sid: dict[str, S] = {}
        self._by_id: dict[str, S] = {}

    # ----------------------------------------------------------------------------- connections

    def connected(self, sid: str, label: str) -> None:
        self.clients[sid] = label

    def disconnected(self, sid: str) -> None:
        self.clients.pop(sid, None)

    def client(self, sid: str) -> str:
        return self.clients.get(sid, "")

    # ----------------------------------------------------------------------------- sessions

    def add(self, session: S) -> None:
        if session.sid in self._by_sid:
            raise KeyError(f"connection {session.sid} has a session already")
        self._by_sid[session.sid] = session
        self._by_id[session.id] = session

    def remove(self, session: S) -> None:
        if self._by_sid.get(session.sid) is session:
            del self._by_sid[session.sid]
        if self._by_id.get(session.id) is session:
            del self._by_id[session.id]

    def by_sid(self, sid: str) -> S | None:
        """The session of connection ``sid``, or None."""
        return self._by_sid.get(sid)

    def by_id(self, session_id: str) -> S | None:
        """The session ``session_id`` if it lives on this node, or None."""
        return self._by_id.get(session_id)

    def sessions(self) -> list[S]:
        """A snapshot (safe to iterate while sessions come and go)."""
        return list(self._by_sid.values())

    def __len__(self) -> int:
        return len(self._by_sid)

    def __contains__(self, sid: object) -> bool:
        return sid in self._by_sid

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._by_sid))

    def as_dict(self) -> dict[str, S]:
        """``{sid: session}`` (a copy)."""
        return dict(self._by_sid)
