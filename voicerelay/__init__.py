"""voicerelay: a voice relay and debugger for speech-to-speech AI on the OpenAI Realtime protocol.

The public names load lazily, so ``import voicerelay`` (and ``voicerelay --help``) stays fast::

    from voicerelay import Gateway, GatewayClient, RealtimeConfig, VoiceRelayError

The rest of the package, one job per module, is drawn in ``docs/architecture.md``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["BackendServer", "Gateway", "GatewayClient", "RealtimeConfig", "VoiceRelayError", "__version__"]

_LAZY = {
    "RealtimeConfig": "voicerelay.protocol.config",
    "BackendServer": "voicerelay.backend.server",
    "Gateway": "voicerelay.gateway.server",
    "GatewayClient": "voicerelay.client",
    "VoiceRelayError": "voicerelay.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'voicerelay' has no attribute {name!r}")
