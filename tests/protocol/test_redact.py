"""Redaction: what may leave a session for a log line, a recording or a screen (plain values, no I/O)."""

from __future__ import annotations

import base64
import logging

from voicerelay.cli import _redact_secrets
from voicerelay.protocol import redact


def test_elide_hides_audio_but_keeps_text() -> None:
    audio = "A" * 1000
    out = redact.elide({"type": "response.output_audio.delta", "delta": audio})
    assert out["delta"] == "<1000 chars of base64>"
    text = "word " * 40
    assert redact.elide({"type": "response.output_audio_transcript.delta", "delta": text})["delta"] == text
    nested = redact.elide({"type": "conversation.item.retrieved", "item": {"content": [{"audio": audio}]}})
    assert nested["item"]["content"][0]["audio"].startswith("<1000")



def test_keys_and_bearer_tokens_are_redacted_from_any_text() -> None:
    text = "Authorization: Bearer abcdefgh12345678 and key sk-proj-ABCDEFGH12345678_x in one line"
    out = redact.redact_secrets(text)
    assert "abcdefgh12345678" not in out and "ABCDEFGH12345678" not in out
    assert "Bearer …redacted" in out and "sk-…redacted" in out
    assert redact.redact_secrets("sk-short and a bearer hug") == "sk-short and a bearer hug"  # not secrets


def test_the_log_filter_uses_the_same_rule() -> None:
    record = logging.LogRecord("websockets", logging.DEBUG, __file__, 1, "> Authorization: Bearer %s", ("sk-" + "k" * 20,),
                               None)
    assert _redact_secrets(record) is True
    assert record.getMessage() == "> Authorization: Bearer sk-…redacted"  # the same words as a recording's


def test_scrub_drops_secret_fields_and_sizes_audio_without_touching_the_event() -> None:
    audio = base64.b64encode(bytes(4800)).decode()
    event = {"type": "session.update", "headers": {"Authorization": "Bearer x"}, "api_key": "sk-" + "a" * 20,
             "item": {"content": [{"audio": audio, "text": "my key is sk-" + "b" * 20}]}}
    out = redact.scrub(event)
    assert "headers" not in out and "api_key" not in out
    assert out["item"]["content"][0] == {"audio": {"elided_bytes": 4800}, "text": "my key is sk-…redacted"}
    assert event["item"]["content"][0]["audio"] == audio  # the argument is never mutated
