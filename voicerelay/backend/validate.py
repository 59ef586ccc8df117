"""Checks on client events, answered the way api.openai.com answers them. No I/O.

:func:`parse_frame` turns one WebSocket message into an event or an :class:`EventError`;
:func:`check_event` checks the envelope and field types of a parsed event. Every failure is
non-fatal: the server sends an ``error`` event (:func:`error_event`) and carries on.
"""

from __future__ import annotations

import json
from typing import Any

from ..protocol import wirejson
from ..protocol.events import CLIENT_EVENTS, Dialect, Event, new_id


class EventError(Exception):
    """A client event the server refuses. Becomes an ``error`` server event."""

    def __init__(self, code: str | None, message: str, param: str | None = None,
                 event_id: str | None = None, error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param
        self.event_id, self.error_type = event_id, error_type

    def to_event(self) -> Event:
        return error_event(self.code, self.message, self.param, self.event_id, self.error_type)


def error_event(code: str | None, message: str, param: str | None = None, event_id: str | None = None,
                error_type: str = "invalid_request_error") -> Event:
    return {
        "type": "error",
        "event_id": new_id("event"),
        "error": {"type": error_type, "code": code, "message": message, "param": param, "event_id": event_id},
    }


def parse_frame(message: str | bytes) -> Event:
    """One WebSocket message -> a JSON object with a string ``type``."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        raise EventError("invalid_event", "Binary frames are not supported. Send events as JSON text frames.")
    try:
        event = wirejson.loads(message)
    except ValueError as exc:
        raise EventError("invalid_json", f"The server could not parse the event as JSON: {exc}.") from None
    if not isinstance(event, dict):
        raise EventError("invalid_json", "Expected a JSON object, got " + type(event).__name__ + ".")
    return event


_STR, _INT, _OBJ, _LIST = (str,), (int,), (dict,), (list,)
#: event type -> {field: (required, accepted python types)}
_FIELDS: dict[str, dict[str, tuple[bool, tuple[type, ...]]]] = {
    "session.update": {"session": (True, _OBJ)},
    "transcription_session.update": {"session": (True, _OBJ)},
    "input_audio_buffer.append": {"audio": (True, _STR)},
    "input_audio_buffer.commit": {},
    "input_audio_buffer.clear": {},
    "output_audio_buffer.clear": {},
    "conversation.item.create": {"item": (True, _OBJ), "previous_item_id": (False, _STR)},
    "conversation.item.retrieve": {"item_id": (True, _STR)},
    "conversation.item.delete": {"item_id": (True, _STR)},
    "conversation.item.truncate": {"item_id": (True, _STR), "content_index": (True, _INT),
                                   "audio_end_ms": (True, _INT)},
    "response.create": {"response": (False, _OBJ)},
    "response.cancel": {"response_id": (False, _STR)},
}


def check_event(event: Event, dialect: Dialect) -> None:
    """Raise :class:`EventError` unless ``event`` is a known client event with well-typed fields."""
    event_id = event.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise EventError("invalid_value", "Invalid type for 'event_id': expected a string.", "event_id")
    etype = event.get("type")
    if etype is None:
        raise EventError("missing_required_parameter", "Missing required parameter: 'type'.", "type", event_id)
    known = CLIENT_EVENTS[dialect]
    if not isinstance(etype, str) or etype not in known:
        accepted = ", ".join(f"'{t}'" for t in sorted(known))
        raise EventError("invalid_value", f"Invalid value: {json.dumps(etype)}. Supported values are: {accepted}.",
                         "type", event_id)
    for field, (required, types) in _FIELDS.get(etype, {}).items():
        value = event.get(field)
        if value is None:
            if required:
                raise EventError("missing_required_parameter", f"Missing required parameter: '{field}'.", field,
                                 event_id)
            continue
        if not isinstance(value, types) or isinstance(value, bool):
            expected = {str: "a string", int: "an integer", dict: "an object", list: "an array"}[types[0]]
            raise EventError("invalid_value",
                             f"Invalid type for '{field}': expected {expected}, but got {_json_type(value)}.",
                             field, event_id)
    if etype == "conversation.item.truncate" and (event["audio_end_ms"] < 0 or event["content_index"] < 0):
        raise EventError("invalid_value", "Invalid 'audio_end_ms' or 'content_index': must be >= 0.",
                         "audio_end_ms", event_id)


def _json_type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), "null" if value is None else type(value).__name__)
