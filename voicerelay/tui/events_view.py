"""One line per raw Realtime event, as both screens show them (base64 audio elided)."""

from __future__ import annotations

import json
from typing import Any

from ..protocol.events import elide

#: Events that carry audio, 50 or more a second while someone speaks: shown on request only.
AUDIO_EVENT_TYPES = frozenset({
    "input_audio_buffer.append", "response.output_audio.delta", "response.audio.delta",
})
MAX_CHARS = 300


def event_line(direction: str, event: dict[str, Any]) -> str:
    """``→`` for what went upstream, ``←`` for what came back; compact JSON, at most 300 characters."""
    arrow = "→" if direction == "up" else "←"
    return f"{arrow} {json.dumps(elide(event), separators=(',', ':'), ensure_ascii=False)}"[:MAX_CHARS]
