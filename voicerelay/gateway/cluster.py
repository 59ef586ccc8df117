"""Multi-node ``serve`` on Redis: a session registry and a command channel per node.

Several gateway nodes share one Redis (``serve --redis redis://...``):

* Socket.IO's ``AsyncRedisManager`` lets any node emit to any client (python-socketio >= 5.14,
  whose Redis messages are JSON, not pickles);
* each node keeps ``voicerelay:node:<node_id>:sessions`` (session id -> state JSON) alive with a
  heartbeat; the key expires ``TTL_S`` after the node stops, so a dead node's sessions vanish;
* an action on a session that lives on another node (a ``session_id`` in ``text_input``,
  ``say``, ``interrupt``, ``end_session``, ``get_state``) is published on that node's
  ``voicerelay:node:<node_id>:commands`` channel; the owning node carries it out and from then
  on also sends that session's events to the requester.

Audio never goes through Redis: a session emits to its own browser on the local node only. So
when Redis is down, local sessions carry on; cross-node features report ``degraded`` (in
``/health`` and as ``error {code: "cluster_degraded"}``) and recover by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ClusterUnavailable
from .registry import SessionRegistry

__all__ = ["Cluster", "ClusterUnavailable"]

#: Carries out an action on a session of this node: ``act(action, session_id, data, reply_to)``.
Act = Callable[[str, str, Any, str], Awaitable[None]]

log = logging.getLogger(__name__)

PREFIX = "voicerelay:node:"
HEARTBEAT_S = 1.0
TTL_S = 5


class Cluster:
    """This node's part of the cluster: publishes ``registry``'s sessions, learns the others',
    sends actions to their nodes and carries out theirs with ``act``."""

    def __init__(self, registry: SessionRegistry[Any], url: str, node_id: str | None = None,
                 act: Act | None = None) -> None:
        import redis.asyncio as aioredis

        self.registry = registry
        self.act = act
        self.url = url
        self.node_id = node_id or secrets.token_hex(4)
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2,
                                             health_check_interval=5)
        self.remote: dict[str, dict[str, Any]] = {}  # session id -> state (with "node") on other nodes
        self.degraded = False
        self.last_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.remote_version = 0  # bumps when self.remote changes (the monitor republishes)

    @property
    def sessions_key(self) -> str:
        return f"{PREFIX}{self.node_id}:sessions"

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._heartbeat(), name="cluster heartbeat"),
                           asyncio.create_task(self._listen(), name="cluster commands")]

    async def close(self) -> None:
        from redis.exceptions import RedisError

        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # cancelled: they catch Redis' errors themselves
        self._tasks = []
        with contextlib.suppress(RedisError, OSError, TimeoutError):  # Redis is down: the key expires after TTL_S
            await asyncio.wait_for(self.redis.delete(self.sessions_key), 1)
        await self.redis.aclose()

    def _trouble(self, exc: BaseException) -> None:
        if not self.degraded:
            log.warning("cluster degraded: Redis at %s is unusable (%s); local sessions carry on", self.url, exc)
        self.degraded = True
        self.last_error = f"{type(exc).__name__}: {exc}"

    def _recovered(self) -> None:
        if self.degraded:
            log.warning("cluster recovered: Redis at %s is back", self.url)
        self.degraded = False
        self.last_error = None

    # ----------------------------------------------------------------------------- registry

    async def _heartbeat(self) -> None:
        from redis.exceptions import RedisError

        while True:
            try:
                states = {s.id: json.dumps({**s.state(), "node": self.node_id})
                          for s in self.registry.sessions()}
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self.sessions_key)
                    if states:
                        pipe.hset(self.sessions_key, mapping=states)
                    pipe.hset(f"{PREFIX}{self.node_id}:alive", mapping={"t": time.time()})
                    pipe.expire(self.sessions_key, TTL_S)
                    pipe.expire(f"{PREFIX}{self.node_id}:alive", TTL_S)
                    await pipe.execute()
                remote: dict[str, dict[str, Any]] = {}
                async for key in self.redis.scan_iter(match=f"{PREFIX}*:sessions", count=100):
                    name = key.decode()
                    if name == self.sessions_key:
                        continue
                    for session_id, raw in (await self.redis.hgetall(name)).items():
                        remote[session_id.decode()] = json.loads(raw)
                if remote != self.remote:
                    self.remote = remote
                    self.remote_version += 1
                self._recovered()
            except (RedisError, OSError) as exc:
                self._trouble(exc)
            await asyncio.sleep(HEARTBEAT_S)

    def node_of(self, session_id: str) -> str | None:
        state = self.remote.get(session_id)
        return state.get("node") if state else None

    # ----------------------------------------------------------------------------- commands

    async def send(self, session_id: str, action: str, data: Any, reply_to: str) -> None:
        """Ask the node that owns ``session_id`` to carry out ``action`` for ``reply_to``."""
        from redis.exceptions import RedisError

        node = self.node_of(session_id)
        if node is None:
            raise LookupError(session_id)
        if self.degraded:
            raise ClusterUnavailable(f"the cluster is degraded ({self.last_error}); cross-node actions are paused")
        message = json.dumps({"action": action, "session_id": session_id, "data": data, "reply_to": reply_to})
        try:
            await self.redis.publish(f"{PREFIX}{node}:commands", message)
        except (RedisError, OSError) as exc:
            self._trouble(exc)
            raise ClusterUnavailable(f"cannot reach Redis: {exc}") from None

    async def _listen(self) -> None:
        from redis.exceptions import RedisError

        channel = f"{PREFIX}{self.node_id}:commands"
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        await self._carry_out(message["data"])
            except (RedisError, OSError) as exc:
                self._trouble(exc)
                await asyncio.sleep(HEARTBEAT_S)
            finally:
                with contextlib.suppress(RedisError, OSError):  # the connection is already gone
                    await pubsub.aclose()

    async def _carry_out(self, raw: bytes) -> None:
        try:
            command = json.loads(raw)
            action, session_id, reply_to = command["action"], command["session_id"], command["reply_to"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed cluster command: %r", raw[:200])
            return
        if self.act is None:
            log.warning("ignoring a cluster command: this node carries out none")
            return
        await self.act(action, session_id, command.get("data"), reply_to)
