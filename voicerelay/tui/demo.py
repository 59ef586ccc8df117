"""Fixed monitor events for screenshots and snapshot tests of ``voicerelay inspect``.

Two sessions as a gateway reports them: one mid-conversation (selected, with its transcript and
event log), one that has ended. Nothing here is measured: it is a picture of the screen.
"""

from __future__ import annotations

from typing import Any

URL = "http://127.0.0.1:8000"


def _state(session_id: str, client: str, state: str, duration: float, turns: int, latency: int | None,
           errors: int = 0) -> dict[str, Any]:
    return {"session_id": session_id, "node": None, "chat_active": True, "ai_state": state, "client": client,
            "duration_s": duration, "errors": errors, "turns": turns, "last_latency_ms": latency,
            "queues": {"queued_events": 0, "queued_audio_ms": 40, "dropped_audio_ms": 0},
            "session_remaining_s": 3540.0}


EVENTS: list[tuple[str, Any]] = [
    ("connect", None),
    ("sessions", {"sessions": [
        _state("vr_kitchen-tablet", "kitchen-tablet (127.0.0.1:52114)", "speaking", 74.0, 3, 96),
        _state("vr_front-desk", "front-desk (127.0.0.1:52160)", "listening", 12.0, 1, 104, errors=1),
    ]}),
    ("session_detail", {"session_id": "vr_kitchen-tablet", "transcripts": [
        {"role": "user", "text": "hello there"},
        {"role": "assistant", "text": "Hello! I am the voicerelay test assistant. How can I help?"},
        {"role": "user", "text": "what is the weather in paris"},
        {"role": "assistant", "text": "The result of get weather is temp c 18, sky clear."},
    ], "events": [
        {"dir": "down", "event": {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 9820,
                                  "item_id": "item_7f2a"}},
        {"dir": "down", "event": {"type": "conversation.item.input_audio_transcription.completed",
                                  "item_id": "item_7f2a", "transcript": "what is the weather in paris"}},
        {"dir": "down", "event": {"type": "response.function_call_arguments.done", "name": "get_weather",
                                  "arguments": "{\"city\":\"paris\"}"}},
        {"dir": "up", "event": {"type": "conversation.item.create", "item": {
            "type": "function_call_output", "output": "{\"temp_c\": 18, \"sky\": \"clear\"}"}}},
        {"dir": "up", "event": {"type": "response.create"}},
        {"dir": "down", "event": {"type": "response.output_audio.delta", "delta": "<6400 chars of base64>"}},
    ]}),
    ("session_closed", {"session_id": "vr_front-desk", "status": "ended"}),
]
