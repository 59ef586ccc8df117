"""Fixed pictures of the two screens, for screenshots and snapshot tests.

``voicerelay inspect``: two sessions as a gateway reports them, one mid-conversation (selected,
with its transcript and event log), one that has ended. ``voicerelay talk --tui``: a moment of a
session, three turns in, the assistant answering. Nothing here is measured: these are pictures of the screens.
"""

from __future__ import annotations

from typing import Any

URL = "http://127.0.0.1:8000"


def _state(session_id: str, client: str, state: str, duration: float, turns: int, latency: int | None,
           usd: float, errors: int = 0, lint: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {"session_id": session_id, "node": None, "chat_active": True, "ai_state": state, "client": client,
            "duration_s": duration, "errors": errors, "turns": turns, "last_latency_ms": latency,
            "queues": {"queued_events": 0, "queued_audio_ms": 40, "dropped_audio_ms": 0},
            "session_remaining_s": 3600.0 - duration,
            "cost": {"model": "gpt-realtime", "usd": usd, "estimate": True,
                     "note": "the embedded backend's usage figures are estimates (no model ran)"},
            "lint": {"count": len(lint), "findings": [{"code": code} for code in lint]}}


EVENTS: list[tuple[str, Any]] = [
    ("connect", None),
    ("sessions", {"sessions": [
        _state("vr_kitchen-tablet", "kitchen-tablet (127.0.0.1:52114)", "speaking", 74.0, 3, 96, 0.0215),
        _state("vr_front-desk", "front-desk (127.0.0.1:52160)", "listening", 12.0, 1, 104, 0.0061, errors=1,
               lint=["VR106"]),
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


# ------------------------------------------------------------------------------- talk --tui

TALK_BANNER = ("[bold green]talking[/] to the embedded backend (ws://127.0.0.1:38411/v1/realtime)\n"
               "  microphone 1 'default' at 48000 Hz → 24 kHz, speaker 1 'default' at 48000 Hz\n"
               "  server VAD, recording to recordings/desk")

TALK_LINES: list[tuple[str, str, bool, str]] = [  # (role, text, final, note)
    ("user", "hello there", True, ""),
    ("assistant", "Hello! I am the voicerelay test assistant. How can I help?", True, ""),
    ("user", "what can you do", True, ""),
    ("assistant", "I can greet you, tell the time, and check the weather.", True, "  (interrupted after 1.9 s)"),
    ("user", "what is the weather in paris", True, ""),
    ("assistant", "The result of get weather is", False, ""),
]

TALK_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("down", {"type": "input_audio_buffer.speech_started", "audio_start_ms": 11140, "item_id": "item_9c01"}),
    ("up", {"type": "response.cancel"}),
    ("up", {"type": "conversation.item.truncate", "item_id": "item_8b44", "content_index": 0,
            "audio_end_ms": 1900}),
    ("down", {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 12820, "item_id": "item_9c01"}),
    ("down", {"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_9c01",
              "transcript": "what is the weather in paris"}),
    ("down", {"type": "response.function_call_arguments.done", "name": "get_weather",
              "arguments": "{\"city\":\"paris\"}"}),
    ("down", {"type": "response.output_audio.delta", "delta": "A" * 6400}),
]


def talk_status() -> Any:
    from ..talk import TalkStatus

    return TalkStatus(state="speaking", push_to_talk=False, talking=True, muted=None, level_dbfs=-31.0,
                      upstream_frames=1, upstream_ms=20, dropped_ms=0, playback_ms=1340,
                      latencies_ms=(96.0, 104.0, 121.0), turns=3,
                      usage={"input_tokens": 412, "output_tokens": 268, "total_tokens": 680},
                      remaining_s=1712.0, recording="recordings/desk", recycles=0, lint=(0, None))


#: what the session has cost so far (the demo talks to the embedded backend: an estimate)
TALK_COST = {"model": "gpt-realtime", "usd": 0.0215, "estimate": True,
             "note": "the embedded backend's usage figures are estimates (no model ran)"}


def show_talk(view: Any) -> None:
    """Draw a fixed moment of a talk session through a :class:`~voicerelay.tui.talk_app.TuiView`."""
    view.banner(TALK_BANNER)
    for role, text, final, note in TALK_LINES:
        view.transcript(role, text, final, note)
    view.line("          [interrupted: 1.9 s of 3.6 s heard]", "dim")
    for direction, event in TALK_EVENTS:
        view.event(direction, event)
    view.show(talk_status(), TALK_COST)
