"""The browser contract on Socket.IO's default namespace: one thin ``on_<event>`` method per
event of :mod:`~voicerelay.gateway.contract` (python-socketio's class-based namespace).

Connections are checked in :meth:`GatewayNamespace.on_connect` (token, session count, shutting
down) and refused with ``ConnectionRefusedError``. Every browser event runs under one guard
(:meth:`GatewayNamespace.trigger_event`): a :class:`~voicerelay.errors.ContractError` becomes an
``error {code, message}`` for that browser alone and the session goes on (``rate_limited`` also
ends it and closes the connection); what the event queued for the browser is sent before the
next event is read. Unknown events are ignored.

A message too big for the transport to read closes the connection before any event is seen
(:mod:`~voicerelay.gateway.wire` records it): the session ends as ``message_too_big`` (what a
monitor sees) and the gateway logs one line; the browser sees its WebSocket closed with code
1009.

Actions that may target another session (``text_input``, ``say``, ``interrupt``,
``end_session``, ``get_state`` with a ``session_id``) are carried out here when the session
lives on this node (:meth:`GatewayNamespace.act_locally`), else sent to its node through the
cluster.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import socketio

from ..errors import ClusterUnavailable
from ..protocol.config import RealtimeConfig
from ..upstream import UpstreamError, UpstreamSpec
from . import contract as c
from .cluster import Cluster
from .monitor import Monitor
from .registry import SessionRegistry
from .session import GatewaySession, SessionOptions
from .wire import Wires

log = logging.getLogger(__name__)

#: Events that act on a session, maybe on another node (``{session_id}`` names it).
ROUTED = frozenset({c.TEXT_INPUT, c.SAY, c.INTERRUPT, c.END_SESSION, c.GET_STATE})
#: Browser events handled under the guard.
GUARDED = ROUTED | {c.START_SESSION, c.AUDIO_DATA, c.COMMIT_AUDIO, c.PLAYBACK_POSITION}


class NamespaceHost(Protocol):
    """What the namespace asks of the gateway."""

    registry: SessionRegistry[GatewaySession]
    monitor: Monitor
    cluster: Cluster | None
    config: RealtimeConfig
    session_options: SessionOptions
    token: str | None
    max_sessions: int
    max_chunk_b64: int
    max_message_bytes: int
    wires: Wires
    closing: bool

    async def upstream_spec(self) -> UpstreamSpec: ...

    def start_cluster(self) -> None: ...


class GatewayNamespace(socketio.AsyncNamespace):
    """The default namespace; see the module docstring."""

    def __init__(self, gateway: NamespaceHost) -> None:
        super().__init__("/")
        self.gateway = gateway
        self.registry = gateway.registry

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event not in GUARDED:
            if event not in ("connect", "disconnect"):
                log.debug("ignoring unknown event %r", event)
                return None
            return await super().trigger_event(event, *args)
        sid = args[0]
        try:
            await super().trigger_event(event, *args)
            session = self.registry.by_sid(sid)
            if session is not None:
                await session.flush()  # what the action queued for the browser
        except c.ContractError as exc:
            session = self.registry.by_sid(sid)
            if session is not None:
                session.refused()
            payload = exc.payload()
            target = args[1].get("session_id") if event in ROUTED and len(args) > 1 and isinstance(args[1], dict) \
                else None
            if isinstance(target, str):  # an action on a named (followed) session: its handlers hear of it
                payload["session_id"] = target
            await self.emit(c.ERROR, payload, to=sid)
            if exc.code == "rate_limited":
                if session is not None:
                    await session.end("rate_limited")
                await self.disconnect(sid)
        return None

    def _session(self, sid: str) -> GatewaySession:
        session = self.registry.by_sid(sid)
        if session is None:
            raise c.ContractError("no_session", "no session: send start_session first")
        return session

    # ----------------------------------------------------------------------------- connections

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        gateway = self.gateway
        gateway.start_cluster()
        if not c.token_ok(auth, gateway.token):
            raise socketio.exceptions.ConnectionRefusedError("unauthorized: a valid token is required")
        if len(self.registry.clients) >= gateway.max_sessions:
            raise socketio.exceptions.ConnectionRefusedError("too many sessions: try again later")
        if gateway.closing:
            raise socketio.exceptions.ConnectionRefusedError("the gateway is shutting down")
        address = environ.get("REMOTE_ADDR") or str((environ.get("asgi.scope") or {}).get("client"))
        client_id = auth.get("client_id") if isinstance(auth, dict) else None
        self.registry.connected(sid, f"{client_id} ({address})" if isinstance(client_id, str) and client_id
                                else address)

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        client = self.registry.client(sid)
        self.registry.disconnected(sid)
        wire = self.gateway.wires.of(self.server.get_environ(sid))
        status = "disconnected"
        if wire is not None and wire.too_big is not None:
            how = f"a message of {wire.too_big} bytes" if wire.too_big else "a message"
            closed = "the connection was closed" if wire.too_big else \
                "the server closed the connection unread (WebSocket code 1009, message too big)"
            log.warning("connection %s (%s) sent %s over the transport's limit of %d bytes: %s", sid, client, how,
                        self.gateway.max_message_bytes, closed)
            status = "message_too_big"
        session = self.registry.by_sid(sid)
        if session is not None:
            await session.end(status, notify=False)

    # ----------------------------------------------------------------------------- the browser's own session

    async def on_start_session(self, sid: str, data: Any = None) -> None:
        if sid in self.registry:
            raise c.ContractError("session_exists", "this connection already has a session")
        chat_payload = c.parse_start(data)
        gateway = self.gateway
        session = GatewaySession(self.server, self.registry, gateway.monitor, gateway.session_options, sid,
                                 chat_payload, self.registry.client(sid),
                                 wire=gateway.wires.of(self.server.get_environ(sid)))
        self.registry.add(session)
        try:
            spec = await gateway.upstream_spec()
        except UpstreamError as exc:
            await session.error("upstream_error", str(exc))
            await session.end("error")
            return
        await session.start(spec, gateway.config)

    async def on_audio_data(self, sid: str, data: Any = None) -> None:
        session = self._session(sid)
        await session.audio(*c.check_audio(data, self.gateway.max_chunk_b64))

    async def on_commit_audio(self, sid: str, data: Any = None) -> None:
        session = self._session(sid)
        assert session.relay is not None
        session.relay.commit()

    async def on_playback_position(self, sid: str, data: Any = None) -> None:
        session = self._session(sid)
        session.playback_position(*c.parse_playback_position(data))

    # ----------------------------------------------------------------------------- actions (any session)

    async def on_text_input(self, sid: str, data: Any = None) -> None:
        await self._route(sid, c.TEXT_INPUT, data)

    async def on_interrupt(self, sid: str, data: Any = None) -> None:
        await self._route(sid, c.INTERRUPT, data)

    async def on_say(self, sid: str, data: Any = None) -> None:
        await self._route(sid, c.SAY, data)

    async def on_get_state(self, sid: str, data: Any = None) -> None:
        await self._route(sid, c.GET_STATE, data)

    async def on_end_session(self, sid: str, data: Any = None) -> None:
        await self._route(sid, c.END_SESSION, data)

    async def _route(self, sid: str, action: str, data: Any) -> None:
        """An action on the caller's own session, or (with ``session_id``) on any session of the cluster."""
        target = data.get("session_id") if isinstance(data, dict) else None
        if target is None:
            if action == c.GET_STATE and sid not in self.registry:
                await self.emit(c.SESSION_STATE, {"session_id": None, "chat_active": False, "ai_state": None}, to=sid)
                return
            await self.act_locally(action, self._session(sid).id, data, sid)
            return
        if not isinstance(target, str):
            raise c.ContractError("invalid_payload", "session_id must be a string")
        if self.registry.by_id(target) is not None:
            await self.act_locally(action, target, data, sid)
            return
        cluster = self.gateway.cluster
        if cluster is not None:
            try:
                if await cluster.locate(target) is not None:  # asks Redis when the last heartbeat did not know
                    await cluster.send(target, action, data, sid)
                    return
            except ClusterUnavailable as exc:
                raise c.ContractError("cluster_degraded", str(exc)) from None
        raise c.ContractError("no_session", f"no session {target}")

    async def act_locally(self, action: str, session_id: str, data: Any, reply_to: str) -> None:
        """Carry out an action on a session of this node, for ``reply_to`` (any node's client)."""
        session = self.registry.by_id(session_id)
        try:
            if session is None or session.relay is None:
                raise c.ContractError("no_session", f"no session {session_id}")
            if reply_to != session.sid:
                session.followers.add(reply_to)
            if action == c.TEXT_INPUT:
                text, reply = c.parse_text(data)
                # in agent-wrapper mode the final user transcript this produces calls on_transcript
                session.relay.user_text(text, respond=reply and session.agent is None)
            elif action == c.SAY:
                session.relay.say(c.parse_say(data))
            elif action == c.INTERRUPT:
                session.relay.interrupt()
            elif action == c.END_SESSION:
                await session.end("ended")
                if reply_to != session.sid:
                    await self.emit(c.SESSION_ENDED, {"status": "ended", "session_id": session_id}, to=reply_to)
            elif action == c.GET_STATE:
                await self.emit(c.SESSION_STATE, session.state(), to=reply_to)
        except c.ContractError as exc:
            payload = exc.payload()
            if reply_to != (session.sid if session is not None else None):  # a follower's action
                payload["session_id"] = session_id
            await self.emit(c.ERROR, payload, to=reply_to)
