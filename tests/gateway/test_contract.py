"""The contract's payload checks, pure (no sockets)."""

from __future__ import annotations

import base64

import pytest

from voicerelay.gateway import contract as c


def test_audio_is_checked_without_being_decoded() -> None:
    chunk = base64.b64encode(b"\x01\x02" * 960).decode()
    audio, nbytes = c.check_audio({"audio": chunk})
    assert audio is chunk and nbytes == 1920  # the browser's string, forwarded as it is
    assert c.check_audio({"audio": ""}) == ("", 0)
    for bad, code in (({"audio": "AA=="}, "invalid_audio"), ({"audio": "%%%%"}, "invalid_audio"),
                      ({"audio": "AAAA" * 20}, "chunk_too_large"), ({"audio": None}, "invalid_payload")):
        with pytest.raises(c.ContractError) as info:
            c.check_audio(bad, max_chunk_b64=64)
        assert info.value.code == code


def test_playback_position_takes_an_item_and_a_non_negative_number() -> None:
    assert c.parse_playback_position({"item_id": "item_1", "played_ms": 250}) == ("item_1", 250.0)
    assert c.parse_playback_position({"item_id": "item_1", "played_ms": 12.5, "session_id": "vr_x"}) == \
        ("item_1", 12.5)
    for bad in (None, [], {}, {"item_id": 3, "played_ms": 1}, {"item_id": "", "played_ms": 1},
                {"item_id": "a", "played_ms": -0.5}, {"item_id": "a", "played_ms": float("nan")},
                {"item_id": "a", "played_ms": float("inf")}, {"item_id": "a", "played_ms": True},
                {"item_id": "a", "played_ms": "10"}):
        with pytest.raises(c.ContractError) as info:
            c.parse_playback_position(bad)
        assert info.value.code == "invalid_payload"
