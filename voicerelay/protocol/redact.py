"""Redaction, in one place: what may leave a session for a log line, a recording or a screen.

- :func:`redact_secrets` takes API keys (``sk-...``) and bearer tokens out of any text (the
  command line's log filter runs every record through it, whichever library wrote it);
- :func:`scrub` makes an event fit for a recording: header-like fields dropped at any depth,
  secrets redacted, base64 audio and other big base64 replaced by its size;
- :func:`elide` makes an event fit for a log line or an event view: long audio replaced by its
  length, nothing else changed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

Event = dict[str, Any]

_KEY_RE = re.compile(r"sk-[A-Za-z0-9_\-]{8,}")
_KEY_REDACTED = "sk-…redacted"
_BEARER_RE = re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/=\-]{8,}", re.IGNORECASE)
#: Field names (lower case, "-" read as "_") dropped wherever they appear in an event.
_SECRET_FIELDS = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "headers",
        "api_key",
        "apikey",
        "x_api_key",
        "openai_api_key",
        "cookie",
        "set_cookie",
        "client_secret",
    }
)
#: Strings at least this long that are strict base64 (or base64 data URLs) are elided.
_ELIDE_MIN_CHARS = 1024
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def redact_secrets(text: str) -> str:
    """``text`` without API keys or bearer tokens (each replaced by ``…redacted``)."""
    return _scrub_text(text)

def is_secret_field(key: object) -> bool:
    return isinstance(key, str) and key.strip().lower().replace("-", "_") in _SECRET_FIELDS


def _scrub_text(text: str) -> str:
    if "sk-" in text:
        text = _KEY_RE.sub(_KEY_REDACTED, text)
    if len(text) >= 15:
        text = _BEARER_RE.sub(lambda m: f"{m.group(1)} …redacted", text)
    return text


def _base64_size(text: str) -> int | None:
    """Decoded size of strict base64 text, or ``None`` if it is not base64."""
    if len(text) % 4 or not _BASE64_RE.fullmatch(text):
        return None
    try:
        return len(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return None


def _elide_large(text: str) -> dict[str, int] | None:
    if len(text) < _ELIDE_MIN_CHARS:
        return None
    payload = text
    if text.startswith("data:"):
        head, sep, payload = text.partition(",")
        if not sep or not head.endswith(";base64"):
            return None
    size = _base64_size(payload)
    return None if size is None else {"elided_bytes": size}


def sanitize(value: Any, key: object = None) -> Any:
    """A sanitised deep copy: secret fields dropped, keys redacted, big base64 elided."""
    if isinstance(value, Mapping):
        return {
            (_scrub_text(k) if isinstance(k, str) else k): sanitize(v, k)
            for k, v in value.items()
            if not is_secret_field(k)
        }
    if isinstance(value, (list, tuple)):
        return [sanitize(item) for item in value]
    if isinstance(value, str):
        if key == "audio":  # base64 audio wherever the protocol carries it (items, content parts)
            size = _base64_size(value)
            return {"elided_bytes": size} if size is not None else {"invalid_audio": True}
        elided = _elide_large(value)
        return elided if elided is not None else _scrub_text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"elided_bytes": len(memoryview(value).cast("B"))}
    return value


def scrub(event: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` fit for a log or a recording: no header-like fields, no API keys, no big base64.

    Header-like fields (``authorization``, ``headers``, ``api_key``, ``client_secret``...) are
    dropped at any depth; substrings that look like OpenAI keys (``sk-...``) become
    ``"sk-…redacted"`` and bearer tokens ``"Bearer …redacted"``; strings under an ``audio`` key
    and any other long base64 become ``{"elided_bytes": n}``. The argument is never mutated.
    """
    return sanitize(event)


def elide(event: Event, limit: int = 64) -> Event:
    """A copy of ``event`` safe to log: long base64 audio payloads are replaced by their length."""
    audio_keys = {"audio"}
    if str(event.get("type", "")).endswith("audio.delta"):
        audio_keys.add("delta")

    def _walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: _walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [_walk(v) for v in value]
        if isinstance(value, str) and key in audio_keys and len(value) > limit:
            return f"<{len(value)} chars of base64>"
        return value

    return _walk(event)
