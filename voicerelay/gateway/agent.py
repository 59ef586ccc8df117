"""The gateway's two modes, as in ragent (never both at once):

* **agent wrapper**: ``on_transcript(session_id, transcript, chat_payload, event_emitter, TTS)``
  runs for each final user transcript (upstream auto-responses are off). It may be sync or
  async, may ``await TTS(text)`` to speak and ``event_emitter.emit(name, data)`` to reach the
  browser; a dict it returns updates the session's context (``chat_payload``).
* **function calling**: ``tools`` (Realtime function schemas) and ``function_map``
  (name -> sync or async callable). Sync functions run in a thread; every call has a timeout.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import GatewayConfigError




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
