"""One embedded-backend Realtime session: the state and behaviour behind one WebSocket.

The server (``server.py``) parses frames, checks them (``validate.py``) and hands events to
:meth:`BackendSession.handle`, one at a time, in order. Everything this class says goes out
through the ``send`` coroutine it was given, as GA events; the server translates them for beta
peers. Slow work (speech recognition, synthesis) runs in threads, and each response streams
from a task of its own, so a session never blocks the event loop or another session.

Turn flow (section 8 of the protocol reference): audio is appended to the input buffer and,
with server VAD, judged as it arrives; the end of speech commits the buffer into a user item,
its transcription starts in a thread, and a response is created that waits for that transcript,
asks the responder what to say, synthesises it and streams it as audio deltas (paced at
``pace`` times real time, so cancel and barge-in have something to interrupt).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ..protocol.audio import BYTES_PER_MS, AudioFormatError, decode_b64
from ..protocol.events import Dialect, Event, beta_session_to_ga, new_id, parse_say_instructions
from . import responder
from .engines import Engines
from .validate import EventError
from .vad import VoiceActivityDetector

log = logging.getLogger(__name__)

Send = Callable[[Event], Awaitable[None]]

CHUNK_MS = 100  # audio per output delta
STT_TAIL_MS = 150  # audio after the end of speech that the recogniser still hears
MIN_COMMIT_MS = 100
DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
    "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
}
_PCM = {"type": "audio/pcm", "rate": 24000}
_GA_SESSION_KEYS = frozenset({
    "type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice", "max_output_tokens",
    "truncation", "tracing", "prompt", "include", "id", "object", "expires_at", "parallel_tool_calls",
    "reasoning",
})
_BETA_SESSION_KEYS = frozenset({
    "modalities", "instructions", "voice", "input_audio_format", "output_audio_format",
    "input_audio_transcription", "turn_detection", "input_audio_noise_reduction", "tools", "tool_choice",
    "temperature", "max_response_output_tokens", "speed", "model", "tracing", "id", "object", "expires_at",
    "client_secret",
})
_AUDIO_SIDE_KEYS = {"input": {"format", "transcription", "turn_detection", "noise_reduction"},
                    "output": {"format", "voice", "speed"}}


def default_session(model: str, expires_at: int) -> dict[str, Any]:
    """The full GA session object announced by ``session.created``."""
    return {
        "type": "realtime", "object": "realtime.session", "id": new_id("sess"), "model": model,
        "output_modalities": ["audio"], "instructions": "You are the voicerelay embedded test assistant.",
        "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None, "truncation": "auto",
        "prompt": None, "expires_at": expires_at, "include": None,
        "audio": {
            "input": {"format": dict(_PCM), "transcription": None, "noise_reduction": None,
                      "turn_detection": dict(DEFAULT_TURN_DETECTION)},
            "output": {"format": dict(_PCM), "voice": "alloy", "speed": 1.0},
        },
    }


@dataclasses.dataclass(slots=True)
class _Response:
    id: str
    in_band: bool
    cancel_reason: str | None = None
    task: asyncio.Task[None] | None = None


class BackendSession:
    def __init__(self, send: Send, engines: Engines, *, dialect: Dialect = Dialect.GA, model: str = "gpt-realtime",
                 pace: float = 10.0, max_session_seconds: float = 3600.0) -> None:
        self._send = send
        self.engines = engines
        self.dialect = dialect
        self.pace = pace
        self.session = default_session(model, int(time.time() + max_session_seconds))
        self.conversation_id = new_id("conv")
        self.items: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self._user_audio: dict[str, bytes] = {}
        self._assistant_ms: dict[str, int] = {}
        self._transcripts: dict[str, asyncio.Future[str]] = {}
        self._buffer = bytearray()
        self._buffer_start_ms = 0  # session audio ms at self._buffer[0]
        self._audio_ms = 0.0  # session audio received so far
        self._pending_item: str | None = None
        self._vad: VoiceActivityDetector | None = None
        self._active: _Response | None = None
        self._responses: dict[str, _Response] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._configure_vad()

    # ---------------------------------------------------------------------------- plumbing

    async def send(self, event: Event) -> None:
        event.setdefault("event_id", new_id("event"))
        await self._send(event)

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def start(self) -> None:
        await self.send({"type": "session.created", "session": copy.deepcopy(self.session)})

    async def close(self) -> None:
        """Stop every task of this session (the socket is gone)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, event: Event) -> None:
        """Act on one checked client event; a refusal is sent as an ``error`` event."""
        handler = getattr(self, "_on_" + event["type"].replace(".", "_"), None)
        try:
            if handler is None:
                raise EventError("invalid_value", f"The embedded backend does not support '{event['type']}'.", "type")
            await handler(event)
        except EventError as exc:
            exc.event_id = exc.event_id or event.get("event_id")
            await self.send(exc.to_event())

    # ---------------------------------------------------------------------------- session

    async def _on_session_update(self, event: Event) -> None:
        raw = event["session"]
        if self.dialect is Dialect.BETA:
            _reject_unknown(raw, _BETA_SESSION_KEYS)
            update = beta_session_to_ga(raw)
        else:
            if "type" not in raw:
                raise EventError("missing_required_parameter", "Missing required parameter: 'session.type'.",
                                 "session.type")
            _reject_unknown(raw, _GA_SESSION_KEYS)
            update = raw
        if update.get("type") != "realtime":
            raise EventError("invalid_value", "The embedded backend supports only session.type 'realtime'.",
                             "session.type")
        merged = _merge_session(self.session, update)
        old_td = self.session["audio"]["input"]["turn_detection"]
        self.session = merged
        if merged["audio"]["input"]["turn_detection"] != old_td:
            self._configure_vad()
        await self.send({"type": "session.updated", "session": copy.deepcopy(self.session)})

    def _configure_vad(self) -> None:
        td = self.session["audio"]["input"]["turn_detection"]
        if td is None:
            self._vad = None
            return
        self._vad = VoiceActivityDetector(float(td.get("threshold", 0.5)), int(td.get("prefix_padding_ms", 300)),
                                          int(td.get("silence_duration_ms", 500)))
        # the detector's clock starts now: keep session ms and detector ms aligned
        self._vad_offset_ms = self._audio_ms

    @property
    def tools(self) -> list[dict[str, Any]]:
        return self.session.get("tools") or []

    # ---------------------------------------------------------------------------- input audio

    async def _on_input_audio_buffer_append(self, event: Event) -> None:
        try:
            raw = decode_b64(event["audio"])
        except AudioFormatError as exc:
            raise EventError(exc.code, str(exc), "audio") from None
        self._buffer += raw
        self._audio_ms += len(raw) / BYTES_PER_MS
        if self._vad is None:
            return
        for vad_event in self._vad.feed(np.frombuffer(raw, dtype="<i2")):
            ms = int(vad_event.ms + self._vad_offset_ms)
            if vad_event.kind == "speech_started":
                await self._speech_started(ms)
            else:
                await self._speech_stopped(ms)
        if not self._vad.speaking:
            self._trim_buffer()

    def _trim_buffer(self) -> None:
        """Outside speech, keep only what prefix padding could reach back to (bounded memory)."""
        td = self.session["audio"]["input"]["turn_detection"] or {}
        keep = (int(td.get("prefix_padding_ms", 300)) + 500) * BYTES_PER_MS
        excess = len(self._buffer) - keep
        if excess > 48_000:  # trim in 1 s steps, not on every append
            del self._buffer[:excess]
            self._buffer_start_ms += excess // BYTES_PER_MS

    async def _speech_started(self, audio_start_ms: int) -> None:
        self._pending_item = new_id("item")
        await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": audio_start_ms,
                         "item_id": self._pending_item})
        td = self.session["audio"]["input"]["turn_detection"] or {}
        if td.get("interrupt_response", True) and self._active is not None:
            self._active.cancel_reason = "turn_detected"
        # drop what lies before the prefix padding: it is not part of this turn
        start = max(0, (audio_start_ms - self._buffer_start_ms) * BYTES_PER_MS)
        del self._buffer[:start]
        self._buffer_start_ms += start // BYTES_PER_MS

    async def _speech_stopped(self, audio_end_ms: int) -> None:
        item_id = self._pending_item or new_id("item")
        self._pending_item = None
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": audio_end_ms,
                         "item_id": item_id})
        await self._commit(item_id, speech_end_ms=audio_end_ms)
        td = self.session["audio"]["input"]["turn_detection"] or {}
        if self._active is not None and self._active.cancel_reason is not None:
            self._active = None  # a cancelled response still winding down does not block the new turn
        if td.get("create_response", True) and self._active is None:
            await self._start_response({}, in_band=True)

    async def _on_input_audio_buffer_commit(self, event: Event) -> None:
        buffered_ms = len(self._buffer) / BYTES_PER_MS
        if buffered_ms < MIN_COMMIT_MS:
            raise EventError("input_audio_buffer_commit_empty",
                             f"Error committing input audio buffer: buffer too small. Expected at least "
                             f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms of audio.")
        item_id = self._pending_item or new_id("item")
        self._pending_item = None
        if self._vad is not None and self._vad.force_stop() is not None:
            self._configure_vad()  # a fresh detector for the next turn
        await self._commit(item_id)

    async def _on_input_audio_buffer_clear(self, event: Event) -> None:
        self._buffer_start_ms += len(self._buffer) // BYTES_PER_MS
        self._buffer.clear()
        self._pending_item = None
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _commit(self, item_id: str, speech_end_ms: int | None = None) -> None:
        audio = bytes(self._buffer)
        # the recogniser hears the speech, not the silence that ended the turn (it is most of the cost)
        heard = audio
        if speech_end_ms is not None:
            heard = audio[: max(0, speech_end_ms + STT_TAIL_MS - self._buffer_start_ms) * BYTES_PER_MS] or audio
        self._buffer_start_ms += len(self._buffer) // BYTES_PER_MS
        self._buffer.clear()
        previous = self.order[-1] if self.order else None
        item = {"id": item_id, "type": "message", "object": "realtime.item", "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        self._add_item(item)
        self._user_audio[item_id] = audio
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._transcripts[item_id] = future
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        await self._announce_item(item, previous)
        self._spawn(self._transcribe(item_id, heard, future), f"transcribe {item_id}")

    async def _transcribe(self, item_id: str, audio: bytes, future: asyncio.Future[str]) -> None:
        extra = [f"{t.get('name', '')} {t.get('description', '')}" for t in self.tools]
        try:
            text = await asyncio.to_thread(self.engines.transcribe, np.frombuffer(audio, dtype="<i2"), extra)
        except Exception as exc:  # a recogniser failure is this turn's problem, reported like OpenAI does
            log.exception("transcription of %s failed", item_id)
            future.set_result("")
            if self.session["audio"]["input"]["transcription"] is not None:
                await self.send({"type": "conversation.item.input_audio_transcription.failed", "item_id": item_id,
                                 "content_index": 0, "error": {"type": "server_error", "code": "transcription_failed",
                                                               "message": str(exc), "param": None}})
            return
        item = self.items.get(item_id)
        if item is not None:
            item["content"][0]["transcript"] = text
        future.set_result(text)
        if self.session["audio"]["input"]["transcription"] is None:
            return
        audio = self._user_audio.get(item_id, audio)  # usage counts the whole committed item
        for delta in self.engines.stream_words(text):
            await self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                             "content_index": 0, "delta": delta})
        await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                         "content_index": 0, "transcript": text,
                         "usage": {"type": "duration", "seconds": round(len(audio) / BYTES_PER_MS / 1000, 3)}})

    # ---------------------------------------------------------------------------- items

    def _add_item(self, item: dict[str, Any], previous_item_id: str | None = None) -> None:
        self.items[item["id"]] = item
        if previous_item_id is None:
            self.order.append(item["id"])
        elif previous_item_id == "root":
            self.order.insert(0, item["id"])
        else:
            self.order.insert(self.order.index(previous_item_id) + 1, item["id"])

    async def _announce_item(self, item: dict[str, Any], previous: str | None) -> None:
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": copy.deepcopy(item)})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": copy.deepcopy(item)})

    async def _on_conversation_item_create(self, event: Event) -> None:
        item = dict(event["item"])
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self.items:
            raise EventError("invalid_value", f"Item with id '{previous}' not found.", "previous_item_id")
        _check_item(item)
        item.setdefault("id", new_id("item"))
        if item["id"] in self.items:
            raise EventError("invalid_value", f"Item with id '{item['id']}' already exists.", "item.id")
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        if item["type"] == "message" and item["role"] == "assistant":
            item["content"] = [{**p, "type": {"text": "output_text", "audio": "output_audio"}.get(p["type"], p["type"])}
                               for p in item["content"]]
        prev = previous if previous is not None else (self.order[-1] if self.order else None)
        self._add_item(item, previous)
        await self._announce_item(item, prev)

    async def _on_conversation_item_delete(self, event: Event) -> None:
        item_id = event["item_id"]
        if item_id not in self.items:
            raise EventError("invalid_value", f"Item with id '{item_id}' not found.", "item_id")
        del self.items[item_id]
        self.order.remove(item_id)
        self._user_audio.pop(item_id, None)
        await self.send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _on_conversation_item_retrieve(self, event: Event) -> None:
        item_id = event["item_id"]
        if item_id not in self.items:
            raise EventError("invalid_value", f"Item with id '{item_id}' not found.", "item_id")
        item = copy.deepcopy(self.items[item_id])
        if item_id in self._user_audio:
            item["content"][0]["audio"] = base64.b64encode(self._user_audio[item_id]).decode()
        await self.send({"type": "conversation.item.retrieved", "item": item})

    async def _on_conversation_item_truncate(self, event: Event) -> None:
        item_id, end_ms = event["item_id"], event["audio_end_ms"]
        item = self.items.get(item_id)
        if item is None or item_id not in self._assistant_ms:
            raise EventError("invalid_value", f"Invalid 'item_id': no assistant audio item with id '{item_id}'.",
                             "item_id")
        if event["content_index"] != 0:
            raise EventError("invalid_value", "Invalid 'content_index': the item has one content part (0).",
                             "content_index")
        have_ms = self._assistant_ms[item_id]
        if end_ms > have_ms:
            raise EventError("invalid_value",
                             f"Audio content of {have_ms}ms is already shorter than {end_ms}ms", "audio_end_ms")
        self._assistant_ms[item_id] = end_ms
        for part in item["content"]:
            if part.get("type") == "output_audio":
                part["transcript"] = ""  # like OpenAI: the unheard transcript is gone
        await self.send({"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0,
                         "audio_end_ms": end_ms})

    async def _on_output_audio_buffer_clear(self, event: Event) -> None:
        raise EventError("invalid_value", "output_audio_buffer.clear is for WebRTC/SIP sessions only.", "type")

    async def _on_transcription_session_update(self, event: Event) -> None:
        raise EventError("invalid_value", "The embedded backend does not support transcription sessions.", "type")

    # ---------------------------------------------------------------------------- responses

    async def _on_response_create(self, event: Event) -> None:
        params = event.get("response") or {}
        in_band = params.get("conversation", "auto") != "none"
        if in_band and self._active is not None:
            raise EventError("conversation_already_has_active_response",
                             f"Conversation already has an active response in progress: {self._active.id}. Wait "
                             "until the response is finished before creating a new one.")
        await self._start_response(params, in_band)

    async def _on_response_cancel(self, event: Event) -> None:
        wanted = event.get("response_id")
        run = self._responses.get(wanted) if wanted else self._active
        if run is None or run.cancel_reason is not None:
            raise EventError("response_cancel_not_active", "Cancellation failed: no active response found")
        run.cancel_reason = "client_cancelled"

    async def _start_response(self, params: dict[str, Any], in_band: bool) -> None:
        run = _Response(new_id("resp"), in_band)
        self._responses[run.id] = run
        if in_band:
            self._active = run
        settings = self._response_settings(params)
        await self.send({"type": "response.created", "response": self._response_object(run, settings, "in_progress")})
        run.task = self._spawn(self._run_response(run, params, settings), f"response {run.id}")

    def _response_settings(self, params: dict[str, Any]) -> dict[str, Any]:
        if "modalities" in params and "output_modalities" not in params:  # beta shape
            params = {**params, "output_modalities": ["audio"] if "audio" in params["modalities"] else ["text"]}
        out = self.session["audio"]["output"]
        voice = ((params.get("audio") or {}).get("output") or {}).get("voice") or params.get("voice") or out["voice"]
        return {
            "output_modalities": params.get("output_modalities") or self.session["output_modalities"],
            "voice": voice,
            "max_output_tokens": params.get("max_output_tokens", self.session["max_output_tokens"]),
            "metadata": params.get("metadata"),
            "instructions": params.get("instructions", self.session["instructions"]),
            "tools": params.get("tools", self.tools),
        }

    def _response_object(self, run: _Response, settings: dict[str, Any], status: str,
                         output: list[dict[str, Any]] | None = None, details: dict[str, Any] | None = None,
                         usage: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "id": run.id, "object": "realtime.response", "status": status, "status_details": details,
            "output": output or [], "conversation_id": self.conversation_id if run.in_band else None,
            "output_modalities": settings["output_modalities"], "max_output_tokens": settings["max_output_tokens"],
            "audio": {"output": {"format": dict(_PCM), "voice": settings["voice"]}},
            "usage": usage, "metadata": settings["metadata"],
        }

    async def _decide(self, run: _Response, params: dict[str, Any], settings: dict[str, Any]) -> responder.Reply:
        say = parse_say_instructions(settings["instructions"])
        if say is not None:
            return responder.Reply(text=say)
        items = params.get("input") if not run.in_band else [self.items[i] for i in self.order]
        for item in reversed(items or []):
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call_output":
                name = next((i.get("name", "") for i in self.items.values()
                             if i.get("type") == "function_call" and i.get("call_id") == item.get("call_id")), "")
                return responder.Reply(text=responder.answer_tool_output(name, str(item.get("output", ""))))
            if item.get("type") == "message" and item.get("role") == "user":
                return responder.respond(await self._user_text(item), settings["tools"])
        return responder.Reply(text="How can I help?")

    async def _user_text(self, item: dict[str, Any]) -> str:
        texts = []
        for part in item.get("content") or []:
            if part.get("type") == "input_text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "input_audio":
                future = self._transcripts.get(item.get("id", ""))
                if future is not None:
                    texts.append(await asyncio.shield(future))
                elif part.get("transcript"):
                    texts.append(part["transcript"])
        return " ".join(t for t in texts if t)

    async def _run_response(self, run: _Response, params: dict[str, Any], settings: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            reply = await self._decide(run, params, settings)
            if reply.call is not None:
                output, status, details = await self._stream_call(run, reply.call)
                out_words, out_ms = len(reply.call.arguments_json) // 4, 0
            else:
                output, status, details, out_words, out_ms = await self._stream_message(run, reply.text, settings)
        except Exception as exc:
            log.exception("response %s failed", run.id)
            output, status, out_words, out_ms = [], "failed", 0, 0
            details = {"type": "failed", "error": {"type": "server_error", "code": "embedded_backend_error",
                                                   "message": str(exc)}}
        finally:
            if self._active is run:
                self._active = None
        usage = self._usage(out_words, out_ms)
        log.debug("response %s %s in %.0f ms", run.id, status, (time.perf_counter() - started) * 1000)
        self._responses.pop(run.id, None)
        await self.send({"type": "response.done",
                         "response": self._response_object(run, settings, status, output, details, usage)})

    def _usage(self, out_words: int, out_ms: int) -> dict[str, Any]:
        """Token usage in OpenAI's shape. There is no model here, so these are estimates at
        OpenAI's published rates: 10 audio tokens a second in, 20 out, about a token a word."""
        audio_in = int(sum(len(a) for a in self._user_audio.values()) / BYTES_PER_MS / 100)
        text_in = sum(len(responder.words(str(i.get("content", "")))) for i in self.items.values()) // 2
        audio_out, text_out = out_ms // 50, out_words
        return {"total_tokens": audio_in + text_in + audio_out + text_out, "input_tokens": audio_in + text_in,
                "output_tokens": audio_out + text_out,
                "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in, "cached_tokens": 0},
                "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}

    def _done_status(self, run: _Response, truncated: bool) -> tuple[str, dict[str, Any] | None]:
        if run.cancel_reason:
            return "cancelled", {"type": "cancelled", "reason": run.cancel_reason}
        if truncated:
            return "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        return "completed", None

    async def _stream_call(self, run: _Response, call: responder.FunctionCall
                           ) -> tuple[list[dict[str, Any]], str, dict[str, Any] | None]:
        item = {"id": new_id("item"), "type": "function_call", "object": "realtime.item", "status": "in_progress",
                "call_id": new_id("call"), "name": call.name, "arguments": ""}
        common = {"response_id": run.id, "item_id": item["id"], "output_index": 0}
        await self.send({"type": "response.output_item.added", "response_id": run.id, "output_index": 0,
                         "item": dict(item)})
        previous = self.order[-1] if self.order else None
        if run.in_band:
            self._add_item(item)
            await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": dict(item)})
        arguments = call.arguments_json
        for i in range(0, len(arguments), 16):
            await self.send({"type": "response.function_call_arguments.delta", **common, "call_id": item["call_id"],
                             "delta": arguments[i:i + 16]})
        item.update(arguments=arguments, status="completed")
        await self.send({"type": "response.function_call_arguments.done", **common, "call_id": item["call_id"],
                         "name": call.name, "arguments": arguments})
        if run.in_band:
            await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": dict(item)})
        await self.send({"type": "response.output_item.done", "response_id": run.id, "output_index": 0,
                         "item": dict(item)})
        status, details = self._done_status(run, False)
        return [dict(item)], status, details

    async def _stream_message(self, run: _Response, text: str, settings: dict[str, Any]
                              ) -> tuple[list[dict[str, Any]], str, dict[str, Any] | None, int, int]:
        limit = settings["max_output_tokens"]
        said = text.split()
        truncated = isinstance(limit, int) and len(said) > limit
        if truncated:
            text = " ".join(said[:limit])
        audio_mode = "audio" in settings["output_modalities"]
        item: dict[str, Any] = {"id": new_id("item"), "type": "message", "object": "realtime.item",
                                "status": "in_progress", "role": "assistant", "content": []}
        common = {"response_id": run.id, "item_id": item["id"], "output_index": 0, "content_index": 0}
        await self.send({"type": "response.output_item.added", "response_id": run.id, "output_index": 0,
                         "item": copy.deepcopy(item)})
        previous = self.order[-1] if self.order else None
        if run.in_band:
            self._add_item(item)
            self._assistant_ms[item["id"]] = 0
            await self.send({"type": "conversation.item.added", "previous_item_id": previous,
                             "item": copy.deepcopy(item)})
        part_type = "audio" if audio_mode else "text"
        await self.send({"type": "response.content_part.added", **common,
                         "part": {"type": part_type, "transcript": ""} if audio_mode else {"type": "text", "text": ""}})
        words = self.engines.stream_words(text)
        sent_words: list[str] = []
        sent_ms = 0
        if audio_mode:
            pcm = await asyncio.to_thread(self.engines.synthesize, text, settings["voice"])
            raw = pcm.astype("<i2").tobytes()
            step = CHUNK_MS * BYTES_PER_MS
            chunks = max(1, -(-len(raw) // step))
            for n in range(chunks):
                if run.cancel_reason:
                    break
                chunk = raw[n * step:(n + 1) * step]
                await self.send({"type": "response.output_audio.delta", **common,
                                 "delta": base64.b64encode(chunk).decode()})
                sent_ms += len(chunk) // BYTES_PER_MS
                if run.in_band:
                    self._assistant_ms[item["id"]] = sent_ms
                upto = round((n + 1) * len(words) / chunks)
                for word in words[len(sent_words):upto]:
                    sent_words.append(word)
                    await self.send({"type": "response.output_audio_transcript.delta", **common, "delta": word})
                if self.pace > 0:
                    await asyncio.sleep(CHUNK_MS / 1000 / self.pace)
            transcript = "".join(sent_words)
            await self.send({"type": "response.output_audio.done", **common})
            await self.send({"type": "response.output_audio_transcript.done", **common, "transcript": transcript})
            part = {"type": "audio", "transcript": transcript}
            content = [{"type": "output_audio", "transcript": transcript}]
        else:
            for word in words:
                if run.cancel_reason:
                    break
                sent_words.append(word)
                await self.send({"type": "response.output_text.delta", **common, "delta": word})
            transcript = "".join(sent_words)
            await self.send({"type": "response.output_text.done", **common, "text": transcript})
            part = {"type": "text", "text": transcript}
            content = [{"type": "output_text", "text": transcript}]
        await self.send({"type": "response.content_part.done", **common, "part": part})
        status, details = self._done_status(run, truncated)
        item.update(content=content, status="incomplete" if status != "completed" else "completed")
        if run.in_band:
            await self.send({"type": "conversation.item.done", "previous_item_id": previous,
                             "item": copy.deepcopy(item)})
        await self.send({"type": "response.output_item.done", "response_id": run.id, "output_index": 0,
                         "item": copy.deepcopy(item)})
        return [copy.deepcopy(item)], status, details, len(sent_words), sent_ms


# -------------------------------------------------------------------------------- helpers


def _reject_unknown(session: dict[str, Any], allowed: frozenset[str]) -> None:
    for key in session:
        if key not in allowed:
            raise EventError("unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}")


def _merge_session(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Apply a GA session update to the effective session, checking every value first.

    Any invalid field rejects the whole update, as OpenAI does.
    """
    merged = copy.deepcopy(current)
    for key, value in update.items():
        if key in ("id", "object", "expires_at", "type"):
            continue
        if key == "audio":
            if not isinstance(value, dict):
                raise EventError("invalid_value", "Invalid type for 'session.audio': expected an object.",
                                 "session.audio")
            for side, cfg in value.items():
                if side not in _AUDIO_SIDE_KEYS or not isinstance(cfg, dict):
                    raise EventError("unknown_parameter", f"Unknown parameter: 'session.audio.{side}'.",
                                     f"session.audio.{side}")
                for sub, sub_value in cfg.items():
                    if sub not in _AUDIO_SIDE_KEYS[side]:
                        raise EventError("unknown_parameter", f"Unknown parameter: 'session.audio.{side}.{sub}'.",
                                         f"session.audio.{side}.{sub}")
                    _check_audio_value(side, sub, sub_value)
                    merged["audio"][side][sub] = _with_td_defaults(sub_value) if sub == "turn_detection" else sub_value
            continue
        _check_session_value(key, value)
        merged[key] = value
    return merged


def _with_td_defaults(td: dict[str, Any] | None) -> dict[str, Any] | None:
    if td is None:
        return None
    return {**DEFAULT_TURN_DETECTION, **td}


def _check_audio_value(side: str, key: str, value: Any) -> None:
    param = f"session.audio.{side}.{key}"
    if key == "format":
        if not isinstance(value, dict) or value.get("type") not in ("audio/pcm", "audio/pcmu", "audio/pcma"):
            raise EventError("invalid_value", f"Invalid '{param}': expected audio/pcm, audio/pcmu or audio/pcma.",
                             param)
        if value["type"] != "audio/pcm":
            raise EventError("invalid_value", "The embedded backend supports only audio/pcm at 24000 Hz.", param)
        rate = value.get("rate", 24000)
        if rate != 24000:
            raise EventError("integer_below_min_value" if isinstance(rate, int) and rate < 24000 else "invalid_value",
                             f"Invalid '{param}.rate': only 24000 is supported.", param + ".rate")
    elif key == "turn_detection":
        if value is None:
            return
        if not isinstance(value, dict) or value.get("type") not in ("server_vad", "semantic_vad"):
            raise EventError("invalid_value", f"Invalid '{param}.type': expected 'server_vad' or 'semantic_vad'.",
                             param + ".type")
        threshold = value.get("threshold", 0.5)
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
            raise EventError("invalid_value", f"Invalid '{param}.threshold': expected a number from 0 to 1.",
                             param + ".threshold")
        for ms_key in ("prefix_padding_ms", "silence_duration_ms"):
            ms = value.get(ms_key, 0)
            if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
                raise EventError("invalid_value", f"Invalid '{param}.{ms_key}': expected a non-negative integer.",
                                 f"{param}.{ms_key}")
    elif key == "voice":
        if not isinstance(value, (str, dict)):
            raise EventError("invalid_value", f"Invalid type for '{param}': expected a string.", param)
    elif key == "speed":
        if not isinstance(value, (int, float)) or not 0.25 <= value <= 1.5:
            raise EventError("invalid_value", f"Invalid '{param}': expected a number from 0.25 to 1.5.", param)
    elif key == "transcription" and value is not None and not isinstance(value, dict):
        raise EventError("invalid_value", f"Invalid type for '{param}': expected an object or null.", param)


def _check_session_value(key: str, value: Any) -> None:
    param = f"session.{key}"
    if key == "instructions" and not isinstance(value, str):
        raise EventError("invalid_value", f"Invalid type for '{param}': expected a string.", param)
    if key == "output_modalities" and (not isinstance(value, list) or value not in (["audio"], ["text"])):
        raise EventError("invalid_value", f"Invalid '{param}': expected [\"audio\"] or [\"text\"].", param)
    if key == "tools":
        if not isinstance(value, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                                  for t in value):
            raise EventError("invalid_value", f"Invalid '{param}': expected a list of function tools with names.",
                             param)
    if key == "max_output_tokens" and value != "inf" and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096):
        raise EventError("invalid_value", f"Invalid '{param}': expected an integer from 1 to 4096 or 'inf'.", param)


def _check_item(item: dict[str, Any]) -> None:
    kind = item.get("type")
    if kind == "message":
        if item.get("role") not in ("user", "assistant", "system"):
            raise EventError("invalid_value", "Invalid 'item.role': expected 'user', 'assistant' or 'system'.",
                             "item.role")
        content = item.get("content")
        if not isinstance(content, list) or not all(isinstance(p, dict) and isinstance(p.get("type"), str)
                                                    for p in content):
            raise EventError("invalid_value", "Invalid 'item.content': expected a list of content parts.",
                             "item.content")
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str) or not isinstance(item.get("output"), str):
            raise EventError("invalid_value", "A function_call_output item needs a string 'call_id' and 'output'.",
                             "item")
    elif kind == "function_call":
        if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
            raise EventError("invalid_value", "A function_call item needs string 'call_id', 'name' and 'arguments'.",
                             "item")
    else:
        raise EventError("invalid_value", f"Invalid 'item.type': {kind!r}. Expected 'message', 'function_call' or "
                         "'function_call_output'.", "item.type")
