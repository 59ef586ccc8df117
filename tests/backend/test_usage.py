"""The embedded backend's token counts: OpenAI's billing rules (backend/usage.py) on known inputs,
and a whole session's usage worked out by hand, the same figures docs/cost.md shows."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openai.types.beta.realtime.realtime_response_usage import RealtimeResponseUsage as BetaUsage
from openai.types.realtime import RealtimeResponseUsage as GaUsage

from voicerelay.backend import usage
from voicerelay.backend.session import ServerSession
from voicerelay.cost import load_prices, usage_cost

from ..conftest import ROOT
from .test_session import Transcribe as TranscribeJob
from .test_session import append, finish, jobs, new_session, sent, update

DOCS = ROOT / "docs" / "cost.md"


def test_audio_is_10_tokens_a_second_in_and_20_out_text_about_4_characters_a_token() -> None:
    assert usage.user_audio_tokens(1000) == 10 and usage.user_audio_tokens(1001) == 11  # a started token counts
    assert usage.assistant_audio_tokens(1000) == 20 and usage.assistant_audio_tokens(60) == 2
    assert usage.user_audio_tokens(0) == usage.assistant_audio_tokens(0) == 0
    assert [usage.text_tokens(t) for t in ("", "hi", "four", "hello")] == [0, 1, 1, 2]
    assert usage.output_tokens("Hello! How can I help?", 1500) == (6, 30)


def test_each_kind_of_item_counts_its_own_tokens() -> None:
    def seg(item: dict[str, Any], **kw: float) -> tuple[int, int]:
        s = usage.item_segment(item, **kw)
        return s.text, s.audio

    o = usage.ITEM_OVERHEAD
    assert seg({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "tell me a joke"}]}) \
        == (o + 4, 0)
    # user audio is audio only: its transcript came from a separate recogniser
    user_audio = {"type": "message", "role": "user", "content": [{"type": "input_audio", "transcript": "hello there"}]}
    assert seg(user_audio, user_audio_ms=2300) == (o, 23)
    # assistant audio is its audio at 20 a second plus the transcript generated with it
    assistant = {"type": "message", "role": "assistant", "content": [{"type": "output_audio", "transcript": "Goodbye!"}]}
    assert seg(assistant, assistant_audio_ms=700) == (o + 2, 14)
    assert seg({"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Be brief."}]}) \
        == (o + 3, 0)
    assert seg({"type": "function_call", "name": "get_weather", "arguments": '{"city":"paris"}'}) == (o + 3 + 4, 0)
    assert seg({"type": "function_call_output", "call_id": "c", "output": '{"temp_c": 18}'}) == (o + 4, 0)
    tools = [{"type": "function", "name": "f", "description": "d", "parameters": {}}]
    assert usage.instructions_segment("Be brief.", []).text == 3 + o
    assert usage.instructions_segment("Be brief.", tools).text > 3 + o  # tool definitions are input too


def test_the_cache_holds_a_prefix_an_earlier_response_processed_in_128_token_steps() -> None:
    a, b, c, d = (usage.Segment(k, 50, 50) for k in "abcd")
    memory = usage.CacheMemory()
    assert memory.cached([a, b]) == (0, 0)  # nothing processed yet
    memory.processed([a, b, c])
    # 300 tokens shared: 256 cached, taken in the input's order (each item's text, then its audio)
    assert memory.cached([a, b, c, d]) == (150, 106)
    assert memory.cached([a, d]) == (0, 0)  # 100 shared: less than one step
    assert memory.cached([b, a]) == (0, 0)  # the same items in another order: no prefix
    # an item that changed (a reply truncated) is other tokens: the prefix ends before it
    reply = {"id": "item_1", "type": "message", "role": "assistant", "content": [{"type": "output_audio",
                                                                                 "transcript": ""}]}
    whole, cut = (usage.item_segment(reply, assistant_audio_ms=ms) for ms in (1000, 300))
    assert whole.key != cut.key and whole.key == usage.item_segment(reply, assistant_audio_ms=1000).key
    for n in range(usage.CACHE_MEMORY):  # it remembers a bounded number of responses
        memory.processed([usage.Segment(n, 1, 0)])
    assert memory.cached([a, b, c]) == (0, 0)


def test_the_usage_shape_is_the_sdks_in_both_dialects() -> None:
    inputs = [usage.Segment("i", 7, 0), usage.Segment("u", 2, 150)]
    figures = usage.usage(inputs, (7, 121), (15, 30))
    assert figures == {
        "total_tokens": 204, "input_tokens": 159, "output_tokens": 45,
        "input_token_details": {"text_tokens": 9, "audio_tokens": 150, "image_tokens": 0, "cached_tokens": 128,
                                "cached_tokens_details": {"text_tokens": 7, "audio_tokens": 121, "image_tokens": 0}},
        "output_token_details": {"text_tokens": 15, "audio_tokens": 30},
    }
    assert GaUsage.model_validate(figures).input_token_details.cached_tokens_details.audio_tokens == 121
    assert BetaUsage.model_validate(figures).input_token_details.cached_tokens == 128


# ---------------------------------------------------------------------------------- a whole session


def spoken_turn(session: ServerSession, audio_ms: int, heard: str, reply_ms: int) -> dict[str, Any]:
    """A committed user turn of ``audio_ms``, recognised as ``heard``, answered with ``reply_ms`` of
    speech; the ``usage`` of its response."""
    session.handle(append(audio_ms))
    (job,) = jobs(session.handle({"type": "input_audio_buffer.commit"}), TranscribeJob)
    session.handle({"type": "response.create"})
    return finish(session, session.transcribed(job.item_id, heard), reply_ms)["usage"]


def test_a_session_counts_as_openai_bills_worked_out_by_hand() -> None:
    session = new_session()
    update(session, {"instructions": "Be brief."})  # 9 characters: 3 tokens, + 2 around them
    first = spoken_turn(session, 15_000, "hello there", 1500)
    # input: instructions 3+2 text, the user's 15 s 150 audio (+2 text); nothing cached yet;
    # output: "Hello! I am the voicerelay test assistant. How can I help?" 58 characters = 15 text, 1.5 s = 30 audio
    assert counts(first) == (7, 150, 0, 0, 15, 30, 202)
    second = spoken_turn(session, 3000, "what is your name", 1000)
    # input: instructions 5, user 2+150, assistant 2+15 text and 30 audio, user 2+30 = 26 text, 210 audio;
    # the first response processed instructions + user + assistant (204 tokens): 128 of them cached, in order
    # (5 + 2 text, then 121 audio); output: "My name is voicerelay. I am an offline test assistant." 54 = 14, 20
    assert counts(second) == (26, 210, 7, 121, 14, 20, 270)
    prices = load_prices(env={}).find("gpt-realtime")
    assert prices is not None
    cost = usage_cost(second, prices, estimate=True)
    expected = ((26 - 7) * 4 + 7 * 0.4 + (210 - 121) * 32 + 121 * 0.4 + 14 * 16 + 20 * 64) / 1e6
    assert cost.usd == pytest.approx(expected) and cost.text() == "~$0.0045"


def test_a_truncated_reply_counts_only_what_the_conversation_keeps() -> None:
    session = new_session()
    spoken_turn(session, 2000, "tell me a joke", 1000)
    before = sent(session.handle({"type": "response.create", "response": {"output_modalities": ["text"]}}))[-1]
    reply_item = session.order[1]
    session.handle({"type": "conversation.item.truncate", "item_id": reply_item, "content_index": 0,
                    "audio_end_ms": 300})
    after = sent(session.handle({"type": "response.create", "response": {"output_modalities": ["text"]}}))[-1]
    b, a = before["response"]["usage"]["input_token_details"], after["response"]["usage"]["input_token_details"]
    joke = "Why did the microphone blush? It saw the speaker."
    assert b["audio_tokens"] - a["audio_tokens"] == 20 - 6  # 1 s of reply audio became 300 ms
    # its transcript is gone (OpenAI drops the unheard transcript); the text reply added in between stays
    assert b["text_tokens"] - a["text_tokens"] == usage.text_tokens(joke) - (
        usage.ITEM_OVERHEAD + usage.text_tokens("How can I help?"))


def test_an_out_of_band_say_reads_only_its_instructions() -> None:
    from voicerelay.protocol.events import say_exactly

    session = new_session()
    spoken_turn(session, 5000, "hello there", 1000)
    effects = session.handle(say_exactly("One moment."))
    done = finish(session, effects, 600)
    details = done["usage"]["input_token_details"]
    assert details["audio_tokens"] == 0 and details["cached_tokens"] == 0  # no conversation, other instructions
    assert done["usage"]["output_token_details"] == {"text_tokens": 3, "audio_tokens": 12}


def counts(u: dict[str, Any]) -> tuple[int, ...]:
    i, o = u["input_token_details"], u["output_token_details"]
    return (i["text_tokens"], i["audio_tokens"], i["cached_tokens_details"]["text_tokens"],
            i["cached_tokens_details"]["audio_tokens"], o["text_tokens"], o["audio_tokens"], u["total_tokens"])


def test_the_worked_example_in_the_docs_is_what_the_backend_counts() -> None:
    """docs/cost.md's table of the two responses above: change the rules or the page, and this fails."""
    page = DOCS.read_text()
    rows = re.findall(r"^\| response (\d) \|((?: *[0-9]+ *\|){7})$", page, re.MULTILINE)
    documented = {int(n): tuple(int(c) for c in cells.split("|") if c.strip()) for n, cells in rows}
    assert documented == {1: (7, 150, 0, 0, 15, 30, 202), 2: (26, 210, 7, 121, 14, 20, 270)}
    for rate in ("1 token per 100 ms", "1 token per 50 ms", "128"):
        assert rate in page
