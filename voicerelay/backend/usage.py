"""What a response of the embedded backend would cost on OpenAI, in tokens counted OpenAI's way. Pure.

No model runs here, so there are no real token counts; these are estimates made with the rules
OpenAI publishes for the Realtime API, so that the cost meter (``voicerelay/cost.py``) shows
plausible figures offline. ``docs/cost.md`` states the same rules for users.

* **Input** is everything the response reads, counted again for every response: the
  instructions and the tools, then each item of its context (the whole conversation, or the
  response's own ``input``). The output of a turn becomes input of the next.
* **Audio**: 1 token per 100 ms of user audio (:data:`USER_AUDIO_MS_PER_TOKEN`) and 1 per 50 ms of
  assistant audio (:data:`ASSISTANT_AUDIO_MS_PER_TOKEN`), in a response's output and in later
  input alike. A user audio item is audio only (its transcript comes from a separate recogniser
  and is not input); an assistant audio item is its audio plus its transcript's text, which the
  model generated with it. Truncated assistant audio counts up to the truncation.
* **Text**: about 4 characters a token (:data:`CHARS_PER_TOKEN`, OpenAI's rule of thumb for
  English; the real tokenizer's files would have to be downloaded), plus
  :data:`ITEM_OVERHEAD` special tokens around each item and around the instructions (OpenAI: "a
  user message with 10 text tokens of content may count as 12 tokens").
* **Cached** input: the start of a response's input that an earlier response already processed
  unchanged (its input followed by its output), in whole steps of :data:`CACHE_STEP` tokens, as
  OpenAI's prompt cache reports it. Cached tokens are a part of the input tokens, split into
  text and audio in the order the input holds them.

An input is a sequence of :class:`Segment`, one per item (the instructions and tools first);
:class:`CacheMemory` remembers what the last few responses processed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

USER_AUDIO_MS_PER_TOKEN = 100
ASSISTANT_AUDIO_MS_PER_TOKEN = 50
CHARS_PER_TOKEN = 4
ITEM_OVERHEAD = 2
CACHE_STEP = 128
CACHE_MEMORY = 4  # earlier responses whose processed tokens a new response may find cached


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """The tokens of one input item. Two segments with the same ``key`` are the same tokens."""

    key: Hashable
    text: int
    audio: int

    @property
    def tokens(self) -> int:
        return self.text + self.audio


def text_tokens(text: str) -> int:
    """Tokens of a text (no overhead): a token per 4 characters, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN)


def user_audio_tokens(ms: float) -> int:
    return -(-round(ms) // USER_AUDIO_MS_PER_TOKEN)


def assistant_audio_tokens(ms: float) -> int:
    return -(-round(ms) // ASSISTANT_AUDIO_MS_PER_TOKEN)


def instructions_segment(instructions: str, tools: Sequence[Mapping[str, Any]]) -> Segment:
    """The instructions and the tools' definitions: text the model reads before the conversation."""
    tools_json = json.dumps(list(tools), sort_keys=True, separators=(",", ":")) if tools else ""
    text = text_tokens(instructions) + text_tokens(tools_json) + ITEM_OVERHEAD
    return Segment(("instructions", hash((instructions, tools_json))), text, 0)


def item_segment(item: Mapping[str, Any], *, user_audio_ms: float = 0.0, assistant_audio_ms: float = 0.0) -> Segment:
    """One conversation item as input. ``user_audio_ms`` is a user item's audio, ``assistant_audio_ms``
    what an assistant item's audio holds (after any truncation); the item carries no audio bytes."""
    text, audio = ITEM_OVERHEAD, 0
    kind = item.get("type")
    if kind == "function_call":
        text += text_tokens(str(item.get("name", ""))) + text_tokens(str(item.get("arguments", "")))
    elif kind == "function_call_output":
        text += text_tokens(str(item.get("output", "")))
    parts = item.get("content") if kind == "message" else None
    for part in parts or []:
        if not isinstance(part, Mapping):
            continue
        ptype = part.get("type")
        if ptype in ("input_text", "output_text", "text"):
            text += text_tokens(str(part.get("text") or ""))
        elif ptype == "input_audio":
            audio += user_audio_tokens(user_audio_ms)
            user_audio_ms = 0.0  # an item's audio counts once, however many parts hold it
        elif ptype in ("output_audio", "audio"):
            text += text_tokens(str(part.get("transcript") or ""))
            audio += assistant_audio_tokens(assistant_audio_ms)
            assistant_audio_ms = 0.0
    return Segment((item.get("id"), text, audio), text, audio)


def output_tokens(text: str, audio_ms: float) -> tuple[int, int]:
    """``(text, audio)`` tokens a response generated: its transcript or text, and its audio."""
    return text_tokens(text), assistant_audio_tokens(audio_ms)


class CacheMemory:
    """What the last :data:`CACHE_MEMORY` responses processed (input then output), as segments."""

    def __init__(self) -> None:
        self._seen: collections.deque[tuple[Segment, ...]] = collections.deque(maxlen=CACHE_MEMORY)

    def processed(self, segments: Iterable[Segment]) -> None:
        """A response processed these segments, in order."""
        self._seen.append(tuple(segments))

    def cached(self, segments: Sequence[Segment]) -> tuple[int, int]:
        """``(text, audio)`` tokens at the start of ``segments`` found in the cache."""
        prefix: Sequence[Segment] = ()
        for earlier in self._seen:
            n = 0
            while n < min(len(earlier), len(segments)) and earlier[n].key == segments[n].key:
                n += 1
            if sum(s.tokens for s in segments[:n]) > sum(s.tokens for s in prefix):
                prefix = segments[:n]
        budget = sum(s.tokens for s in prefix) // CACHE_STEP * CACHE_STEP
        text = audio = 0
        for segment in prefix:
            take_text = min(segment.text, budget)
            take_audio = min(segment.audio, budget - take_text)
            text, audio, budget = text + take_text, audio + take_audio, budget - take_text - take_audio
        return text, audio


def usage(inputs: Sequence[Segment], cached: tuple[int, int], output: tuple[int, int]) -> dict[str, Any]:
    """The ``usage`` of a ``response.done``, in the SDK's ``RealtimeResponseUsage`` shape."""
    text_in = sum(s.text for s in inputs)
    audio_in = sum(s.audio for s in inputs)
    text_out, audio_out = output
    return {
        "total_tokens": text_in + audio_in + text_out + audio_out,
        "input_tokens": text_in + audio_in,
        "output_tokens": text_out + audio_out,
        "input_token_details": {
            "text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0, "cached_tokens": sum(cached),
            "cached_tokens_details": {"text_tokens": cached[0], "audio_tokens": cached[1], "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }
