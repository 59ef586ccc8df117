"""The gateway's two modes, as in ragent (never both at once), checked at start-up and run per session:

* **agent wrapper**: ``on_transcript(session_id, transcript, chat_payload, event_emitter, TTS)``
  runs for each final user transcript (upstream auto-responses are off). It may be sync or
  async, may ``await TTS(text)`` to speak and ``event_emitter.emit(name, data)`` to reach the
  browser; a dict it returns updates the session's context (``chat_payload``).
* **function calling**: ``tools`` (Realtime function schemas) and ``function_map``
  (name -> sync or async callable). Sync functions run in a thread; every call has a timeout.

:class:`AgentWrapper` and :func:`call_function` are what a session runs; they reach the session
only through :class:`ModeSession`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..errors import GatewayConfigError
from ..protocol.session import ToolCall
from ..relay import Relay

__all__ = ["AgentWrapper", "EventEmitter", "GatewayConfigError", "ModeSession", "call_function", "call_maybe_async",
           "check_modes", "load_object", "run_tool"]

log = logging.getLogger(__name__)


def load_object(spec: str) -> Any:
    """``pkg.module:attr`` -> the object (a clear error when it does not resolve)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise GatewayConfigError(f"{spec!r}: expected module:attribute, e.g. mypkg.agent:on_transcript")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GatewayConfigError(f"{spec!r}: cannot import {module_name}: {exc}") from None
    try:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise GatewayConfigError(f"{spec!r}: {module_name} has no attribute {attr}") from None
    return obj


def check_modes(on_transcript: Callable[..., Any] | None, tools: Any, function_map: Any) -> None:
    if on_transcript is not None and (tools or function_map):
        raise GatewayConfigError("agent-wrapper mode (on_transcript) and function-calling mode (tools + "
                                 "function_map) cannot be used together")
    if on_transcript is not None and not callable(on_transcript):
        raise GatewayConfigError("on_transcript must be callable")
    if bool(tools) != bool(function_map):
        raise GatewayConfigError("function-calling mode needs both tools and function_map")
    if function_map:
        if not isinstance(function_map, Mapping):
            raise GatewayConfigError("function_map must map tool names to callables")
        names = {t.get("name") for t in tools}
        missing = sorted(n for n in names if n not in function_map)
        if missing:
            raise GatewayConfigError(f"function_map has no function for tool(s): {', '.join(missing)}")
        bad = sorted(k for k, v in function_map.items() if not callable(v))
        if bad:
            raise GatewayConfigError(f"function_map values must be callable: {', '.join(bad)}")


async def call_maybe_async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Await an async callable; run a sync one in a thread (it must not block the event loop)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


async def run_tool(function_map: Mapping[str, Callable[..., Any]], name: str, arguments: str,
                   timeout: float) -> tuple[str, str | None]:
    """Run one function call. Returns ``(output for upstream, error message or None)``."""
    fn = function_map.get(name)
    if fn is None:
        message = f"unknown function {name!r}"
        return json.dumps({"error": message}), message
    try:
        args = json.loads(arguments) if arguments else {}
        if not isinstance(args, dict):
            raise ValueError("arguments are not a JSON object")
    except ValueError as exc:
        message = f"{name}: bad arguments {arguments!r}: {exc}"
        return json.dumps({"error": message}), message
    try:
        result = await asyncio.wait_for(call_maybe_async(fn, **args), timeout)
    except TimeoutError:
        message = f"{name} timed out after {timeout:g} s"
        return json.dumps({"error": message}), message
    except Exception as exc:  # the function's failure goes back to the model and the browser
        message = f"{name} failed: {type(exc).__name__}: {exc}"
        return json.dumps({"error": message}), message
    if isinstance(result, str):
        return result, None
    try:
        return json.dumps(result), None
    except (TypeError, ValueError):
        return json.dumps({"result": str(result)}), None


# ------------------------------------------------------------------------------- per session


class ModeSession(Protocol):
    """What a mode needs of the session it runs in."""

    id: str
    chat_payload: dict[str, Any]
    relay: Relay | None

    async def emit(self, name: str, data: Any = None) -> None: ...

    async def error(self, code: str, message: str) -> None: ...


class EventEmitter:
    """What an ``on_transcript`` callback gets to reach its browser: ``emit(name, data)``."""

    def __init__(self, session: ModeSession) -> None:
        self._session = session

    async def emit(self, name: str, data: Any = None) -> None:
        await self._session.emit(name, data)


class AgentWrapper:
    """Agent-wrapper mode in one session: ``on_transcript`` for each final user transcript, and
    its ``TTS(text)`` (:meth:`say`), which speaks through the upstream and returns once said."""

    def __init__(self, on_transcript: Callable[..., Any], session: ModeSession, timeout: float) -> None:
        self.on_transcript = on_transcript
        self.session = session
        self.timeout = timeout
        self._waiters: list[asyncio.Future[str]] = []
        self._answering = 0  # TTS() calls still to be heard: their text answers the user

    async def heard_user(self, transcript: str) -> None:
        """Run ``on_transcript``; its failure is reported to the browser and the session goes on."""
        session = self.session
        try:
            result = await call_maybe_async(self.on_transcript, session.id, transcript, session.chat_payload,
                                            EventEmitter(session), self.say)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the agent's bug is reported, and the session goes on
            log.warning("session %s: on_transcript failed: %r", session.id, exc)
            await session.error("agent_error", f"on_transcript failed: {type(exc).__name__}: {exc}")
            return
        if isinstance(result, Mapping):
            session.chat_payload.update(result)

    async def say(self, text: str) -> str:
        """``TTS(text)``: speak through the upstream; wait (at most the tool timeout) until it is said."""
        assert self.session.relay is not None
        self._answering += 1
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            self.session.relay.say(text)
            return await asyncio.wait_for(waiter, self.timeout)
        finally:
            self._waiters.remove(waiter)

    def said(self, text: str, out_of_band: bool) -> bool:
        """The assistant finished saying ``text``: wake the oldest ``TTS()`` waiting. Returns whether
        it answers the user (a reply, or the agent's TTS; not a program's ``say``)."""
        answers = not out_of_band
        if out_of_band and self._answering:
            self._answering -= 1
            answers = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(text)
                break
        return answers

    def cancel(self) -> None:
        """The session ended: nobody waits for speech any more."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()


async def call_function(function_map: Mapping[str, Callable[..., Any]], timeout: float, session: ModeSession,
                        call: ToolCall) -> None:
    """Function-calling mode: run ``call``, report a failure to the browser, return the output upstream."""
    output, problem = await run_tool(function_map, call.name, call.arguments, timeout)
    if problem is not None:
        await session.error("tool_error", problem)
    assert session.relay is not None
    session.relay.tool_result(call.call_id, output)
