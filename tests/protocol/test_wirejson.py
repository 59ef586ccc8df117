"""The audio path's JSON: orjson's speed, the standard library's leniency."""

from __future__ import annotations

import json

import pytest

from voicerelay.protocol import wirejson


def test_an_append_round_trips_compactly() -> None:
    event = {"type": "input_audio_buffer.append", "audio": "AAAA" * 640}
    text = wirejson.dumps(event)
    assert isinstance(text, str) and text == json.dumps(event, separators=(",", ":"))
    assert wirejson.loads(text) == event and wirejson.loads(text.encode()) == event


@pytest.mark.parametrize("value", [
    {"text": "caf\u00e9 \u2603"},  # non-ASCII: written as UTF-8, as ensure_ascii=False would
    {1: "an int key", "nested": [1.5, None, True]},  # json.dumps turns int keys into strings too
    {"big": 2**70},  # beyond orjson's 64 bits: the standard library writes it
    {"lone": "\ud800"},  # a lone surrogate: orjson refuses it, the standard library escapes it
])
def test_dumps_writes_what_json_dumps_writes(value: object) -> None:
    assert json.loads(wirejson.dumps(value)) == json.loads(json.dumps(value))


def test_loads_accepts_what_json_accepts_and_refuses_the_rest() -> None:
    assert wirejson.loads('{"big": 1180591620717411303424}') == {"big": 2**70}
    assert wirejson.loads('{"lone": "\\ud800"}') == {"lone": "\ud800"}
    for bad in ("{", "", "nope", '{"a": 1,}'):
        with pytest.raises(ValueError):
            wirejson.loads(bad)
