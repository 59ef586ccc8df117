"""The raw-event log both screens show: one line per Realtime event, base64 audio elided, with
a filter by type and pause/resume (what arrives while paused is written on resume)."""

from __future__ import annotations

import collections
import json
from typing import Any

from textual.widgets import Input, RichLog

from ..protocol.redact import elide

#: Events that carry audio, 50 or more a second while someone speaks: shown on request only.
AUDIO_EVENT_TYPES = frozenset({
    "input_audio_buffer.append", "response.output_audio.delta", "response.audio.delta",
})
MAX_CHARS = 300
MAX_EVENTS = 2000


def event_line(direction: str, event: dict[str, Any]) -> str:
    """``→`` for what went upstream, ``←`` for what came back; compact JSON, at most 300 characters."""
    arrow = "→" if direction == "up" else "←"
    return f"{arrow} {json.dumps(elide(event), separators=(',', ':'), ensure_ascii=False)}"[:MAX_CHARS]


class EventLog(RichLog):
    """A :class:`RichLog` of events that keeps the last ``MAX_EVENTS`` (audio events aside), so a
    new filter or a resume redraws from them; its border title says what is shown."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(wrap=False, markup=False, max_lines=MAX_EVENTS, **kwargs)
        self.kept: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=MAX_EVENTS)
        self.paused = False
        self.type_filter = ""
        self.show_audio = False
        self.audio_events = 0
        self._held = 0  # kept events that arrived while paused

    def on_mount(self) -> None:
        self._title()

    def add(self, direction: str, event: dict[str, Any]) -> None:
        if str(event.get("type", "")) in AUDIO_EVENT_TYPES:
            self.audio_events += 1
            if self.show_audio and not self.paused:
                self._write(direction, event)
            return
        self.kept.append((direction, event))
        if self.paused:
            self._held = min(self._held + 1, MAX_EVENTS)
        else:
            self._write(direction, event)

    def reset(self) -> None:
        """Forget everything (another session was selected)."""
        self.kept.clear()
        self._held = 0
        self.clear()

    def set_filter(self, text: str) -> None:
        self.type_filter = text.strip()
        self._redraw()

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused and self._held:
            for direction, event in list(self.kept)[-self._held:]:
                self._write(direction, event)
        self._held = 0
        self._title()

    def toggle_audio(self) -> None:
        self.show_audio = not self.show_audio
        self._title()

    def _write(self, direction: str, event: dict[str, Any]) -> None:
        if not self.type_filter or self.type_filter in str(event.get("type", "")):
            self.write(event_line(direction, event))

    def _redraw(self) -> None:
        self.clear()
        self._held = 0
        for direction, event in self.kept:
            self._write(direction, event)
        self._title()

    def _title(self) -> None:
        parts = ["events"]
        if self.paused:
            parts.append("paused (p)")
        if self.type_filter:
            parts.append(f"type contains {self.type_filter!r}")
        parts.append("audio shown (a)" if self.show_audio else "audio hidden (a)")
        self.border_title = " · ".join(parts)


class EventLogKeys:
    """The event-log keys of both screens, for an app with one :class:`EventLog` and an
    :class:`~textual.widgets.Input` ``#filter`` (hidden until ``/``)."""

    query_one: Any  # (Textual's App provides it)

    def action_pause(self) -> None:
        self.query_one(EventLog).toggle_pause()

    def action_audio_events(self) -> None:
        self.query_one(EventLog).toggle_audio()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("visible")
        box.focus()

    def submit_filter(self, value: str) -> None:
        """The filter box was submitted: apply it and hide the box."""
        self.query_one(EventLog).set_filter(value)
        self.query_one("#filter", Input).remove_class("visible")
