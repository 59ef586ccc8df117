"""The session registry, pure: what monitor and cluster read."""

from __future__ import annotations

from typing import Any

import pytest

from voicerelay.gateway.registry import SessionRegistry


class Session:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.id = f"vr_{sid}"

    def state(self) -> dict[str, Any]:
        return {"session_id": self.id}


def test_sessions_by_connection_and_by_id() -> None:
    registry: SessionRegistry[Session] = SessionRegistry()
    a, b = Session("a"), Session("b")
    registry.add(a)
    registry.add(b)
    assert registry.by_sid("a") is a and registry.by_id("vr_b") is b and "a" in registry and len(registry) == 2
    assert registry.sessions() == [a, b] and registry.as_dict() == {"a": a, "b": b} and list(registry) == ["a", "b"]
    with pytest.raises(KeyError):
        registry.add(Session("a"))  # one session per connection
    registry.remove(a)
    registry.remove(a)  # twice is harmless
    assert registry.by_sid("a") is None and registry.by_id("vr_a") is None and registry.sessions() == [b]
    registry.remove(Session("b"))  # another object with the same ids is not b
    assert registry.by_sid("b") is b


def test_connected_clients() -> None:
    registry: SessionRegistry[Session] = SessionRegistry()
    registry.connected("a", "kiosk-1 (127.0.0.1)")
    assert registry.client("a") == "kiosk-1 (127.0.0.1)" and registry.client("nobody") == ""
    registry.disconnected("a")
    registry.disconnected("a")
    assert registry.clients == {}
