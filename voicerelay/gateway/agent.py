"""Old home of the gateway's modes: the names live in :mod:`voicerelay.gateway.modes` now."""

from __future__ import annotations

from ..errors import GatewayConfigError
from .modes import call_maybe_async, check_modes, load_object, run_tool

__all__ = ["GatewayConfigError", "call_maybe_async", "check_modes", "load_object", "run_tool"]
