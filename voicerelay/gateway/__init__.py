"""The Socket.IO gateway for browsers (``voicerelay serve``): ragent's event contract over one
Relay per browser session."""

from __future__ import annotations

from typing import Any

__all__ = ["Gateway"]


def __getattr__(name: str) -> Any:
    if name == "Gateway":
        from .server import Gateway

        return Gateway
    raise AttributeError(name)
