"""What ``inspect`` knows about a gateway's sessions: plain Python, fed by monitor events.

The Textual app only draws this; tests can feed it directly.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from ..cost import format_usd

MAX_LINES = 500

#: The session table's columns, in the order :meth:`MonitorState.row` fills them. ``node`` is the
#: gateway node that holds the session (``serve --redis``); ``-`` on a single node. ``cost`` is
#: the session's so far (``~`` an estimate, ``unknown`` a model without prices), ``time left``
#: what remains before the upstream's session cap, ``lint`` the protocol findings so far and the
#: newest one's code (``-``: not linted). ``node`` is ``proxy`` for a ``voicerelay proxy`` session.
COLUMNS = ("session", "node", "client", "state", "duration", "time left", "cost", "queued audio", "dropped",
           "last latency", "errors", "lint", "turns")


@dataclasses.dataclass(slots=True)
class SessionView:
    state: dict[str, Any]
    ended: str | None = None  # the closing status once it ended
    transcripts: collections.deque[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=MAX_LINES))
    events: collections.deque[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=MAX_LINES))

    @property
    def id(self) -> str:
        return str(self.state.get("session_id", ""))


class MonitorState:
    def __init__(self) -> None:
        self.sessions: dict[str, SessionView] = {}
        self.connected = False
        self.resyncs = 0

    def apply(self, name: str, data: Any) -> str | None:
        """Apply one monitor event; returns the id of the session it changed (or ``None``)."""
        if not isinstance(data, dict):
            return None
        if name == "sessions":
            self.resyncs += 1
            fresh = {s["session_id"]: s for s in data.get("sessions", []) if isinstance(s, dict)}
            for session_id, view in self.sessions.items():
                if session_id not in fresh and view.ended is None:
                    view.ended = "gone"  # ended while we were not looking (e.g. the gateway restarted)
            for session_id, state in fresh.items():
                view = self.sessions.get(session_id)
                if view is None:
                    self.sessions[session_id] = SessionView(state)
                else:
                    view.state, view.ended = state, None
            return None
        session_id = data.get("session_id")
        if not isinstance(session_id, str):
            return None
        if name == "session_update":
            view = self.sessions.get(session_id)
            if view is None:
                self.sessions[session_id] = SessionView(data)
            else:
                view.state = data
        elif name == "session_closed":
            view = self.sessions.get(session_id)
            if view is not None:
                view.ended = str(data.get("status", "ended"))
        elif name == "session_detail":
            view = self.sessions.get(session_id)
            if view is None:
                return None
            view.transcripts.extend(data.get("transcripts", []))
            view.events.extend(data.get("events", []))
        else:
            return None
        return session_id

    def row(self, view: SessionView) -> tuple[str, ...]:
        s = view.state
        queues = s.get("queues") or {}
        latency = s.get("last_latency_ms")
        return (
            view.id, str(s.get("node") or "-"), str(s.get("client") or ""), _state_label(view),
            f"{s.get('duration_s', 0):.0f} s", time_left(s.get("session_remaining_s")), cost_cell(s.get("cost")),
            _ms(queues.get("queued_audio_ms")), _ms(queues.get("dropped_audio_ms")),
            "-" if latency is None else f"{latency} ms", str(s.get("errors", 0)), lint_cell(s.get("lint")),
            str(s.get("turns", 0)),
        )


def cost_cell(cost: Any) -> str:
    """``$0.0123``, ``~$0.0123`` (an estimate), ``unknown``, or ``-`` (a gateway that sends no cost)."""
    if not isinstance(cost, dict) or "usd" not in cost:
        return "-"
    usd = cost["usd"]
    if not isinstance(usd, (int, float)) or isinstance(usd, bool):
        return "unknown"
    return format_usd(float(usd), bool(cost.get("estimate")))


def _ms(value: Any) -> str:
    """``40 ms``, or ``-`` when the session has no such queue (a proxied one: the app queues)."""
    return f"{value} ms" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def lint_cell(lint: Any) -> str:
    """``0``, ``3 VR106`` (how many findings, the newest's code), or ``-`` (the session is not linted)."""
    if not isinstance(lint, dict) or not isinstance(lint.get("count"), int):
        return "-"
    findings = lint.get("findings")
    newest = findings[-1].get("code") if isinstance(findings, list) and findings and isinstance(findings[-1], dict) else None
    return f"{lint['count']} {newest}" if lint["count"] and isinstance(newest, str) else str(lint["count"])


def time_left(seconds: Any) -> str:
    """Minutes and seconds before the session cap, ``-`` when there is none."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    minutes, secs = divmod(max(0, int(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def _state_label(view: SessionView) -> str:
    if view.ended is None:
        return str(view.state.get("ai_state"))
    return "ended" if view.ended == "ended" else f"ended ({view.ended})"
