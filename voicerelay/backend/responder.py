"""The embedded backend's deterministic "model": a few intents, an echo, and tool calls.

Plain functions, no I/O. The same utterance and tools always give the same reply, so tests and
recordings can expect exact answers. The README lists the intents; keep it in sync.

The session answers the newest item of a response's context, whatever its role:

* A user's utterance (:func:`respond`): one that matches one of the session's tools (a word of
  the tool's name, or two words of its description, see :func:`match_tool`) becomes a function
  call whose arguments are filled from the utterance (:func:`fill_arguments`); otherwise the
  first intent whose pattern matches answers; otherwise the reply echoes the utterance:
  ``You said: <utterance>.`` Nothing heard (silence, noise, an empty message) gets no reply at
  all: an empty :class:`Reply`.
* A system message (:func:`follow`), such as the context Pipecat appends before asking for a
  response, is an instruction for this reply: ``say "<text>"`` says the text, a tool or an
  intent it names answers as for a user, anything else is acknowledged (:data:`ACKNOWLEDGE`).
* A function's output: :func:`answer_tool_output`. Nothing, or the assistant's own last words:
  :data:`OFFER`.
* The silence that server VAD's ``idle_timeout_ms`` committed: :data:`STILL_THERE` when nothing
  was heard in it (words the detector did not take for speech are answered as a user's).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_WORD = re.compile(r"[a-z0-9]+")
_DELTA = re.compile(r"\s*\S+\s*")
_STOPWORDS = frozenset(
    "a an the is are am be what whats who how do does did can could would should will to of in on at for "
    "from with and or me my you your it its this that please get set give tell about some any current "
    "now today there here i we us our".split()
)
_PREPOSITIONS = ("in", "for", "at", "to", "of", "about", "called", "named", "near")
_NUMBERS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}

#: (pattern over the normalised utterance, reply). First match wins.
INTENTS: tuple[tuple[str, str], ...] = (
    (r"\b(hello|hi|hey|good morning|greet)\b", "Hello! I am the voicerelay test assistant. How can I help?"),
    (r"\b(what is your name|who are you|introduce yourself)\b", "My name is voicerelay. I am an offline test assistant."),
    (r"\bhow are you\b", "I am fine, thank you for asking."),
    (r"\b(what can you do|help)\b", "I can greet you, tell you my name, tell a joke, and repeat what you say."),
    (r"\bwhat time is it\b", "I have no clock, but I heard you ask for the time."),
    (r"\btell me a joke\b", "Why did the microphone blush? It saw the speaker."),
    (r"\b(thank you|thanks)\b", "You are welcome."),
    (r"\b(goodbye|bye)\b", "Goodbye!"),
)
OFFER = "How can I help?"  # the reply when there is nothing to answer, or the assistant spoke last
ACKNOWLEDGE = "Understood."  # the reply to a system instruction the rules do not cover
STILL_THERE = "Are you still there?"  # the reply to an idle timeout's silence (server VAD's idle_timeout_ms)
_SAY_QUOTED = re.compile(r"""\bsay\b[:,]?\s+(?:["“](?P<double>[^"”]+)["”]|'(?P<single>[^']+)'(?!\w))""",
                         re.IGNORECASE)


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionCall:
    name: str
    arguments: dict[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """A text to speak, a function call to emit, or neither: nothing to say."""

    text: str = ""
    call: FunctionCall | None = None


def words(text: str) -> list[str]:
    """Lower-case words; ``get_weather`` and ``getWeather`` give ``get weather``."""
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    return _WORD.findall(text.lower().replace("_", " "))


def stream_words(text: str) -> list[str]:
    """``text`` cut into transcript deltas: each word with the spaces after it.

    ``"".join(stream_words(text)) == text``; leading spaces, if any, go with the first chunk.
    """
    return _DELTA.findall(text) or ([text] if text else [])


def respond(utterance: str, tools: Sequence[Mapping[str, Any]] = ()) -> Reply:
    """The reply to a user turn; an empty reply when nothing was said (no speech heard)."""
    said = " ".join(words(utterance))
    if not said:
        return Reply()
    return _tool_or_intent(said, tools) or Reply(text=f"You said: {said}.")


def follow(instruction: str, tools: Sequence[Mapping[str, Any]] = ()) -> Reply:
    """The reply when the newest item is a system message: what it asks to be said or done."""
    quoted = _SAY_QUOTED.search(instruction)
    if quoted:
        return Reply(text=(quoted.group("double") or quoted.group("single")).strip())
    said = " ".join(words(instruction))
    if not said:
        return Reply()
    return _tool_or_intent(said, tools) or Reply(text=ACKNOWLEDGE)


def _tool_or_intent(said: str, tools: Sequence[Mapping[str, Any]]) -> Reply | None:
    tool = match_tool(said, tools)
    if tool is not None:
        return Reply(call=FunctionCall(tool["name"], fill_arguments(said, tool)))
    for pattern, reply in INTENTS:
        if re.search(pattern, said):
            return Reply(text=reply)
    return None


def match_tool(said: str, tools: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The tool an utterance asks for: a content word of its name, or two of its description."""
    heard = set(said.split()) - _STOPWORDS
    best, best_score = None, 0
    for tool in tools:
        name_words = set(words(str(tool.get("name", "")))) - _STOPWORDS
        desc_words = set(words(str(tool.get("description", "")))) - _STOPWORDS
        name_hits, desc_hits = len(heard & name_words), len(heard & desc_words)
        if name_hits == 0 and desc_hits < 2:
            continue
        score = 2 * name_hits + desc_hits
        if score > best_score:
            best, best_score = tool, score
    return best


def fill_arguments(said: str, tool: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments for ``tool`` taken from the utterance, by each property's JSON Schema type.

    Strings take an ``enum`` value that was said, else the words after the last preposition
    ("weather in paris" -> "paris"), else the whole utterance. Numbers take the first number
    said (digits or one..ten), else 1. Booleans are false when "off", "no" or "not" was said.
    Optional properties are filled only when the utterance supplies them.
    """
    params = tool.get("parameters") or {}
    props: Mapping[str, Any] = params.get("properties") or {}
    required = set(params.get("required") or props)
    tokens = said.split()
    args: dict[str, Any] = {}
    for name, schema in props.items():
        kind = (schema or {}).get("type", "string")
        value: Any = None
        if kind == "string":
            enum = [str(e) for e in (schema or {}).get("enum", [])]
            value = next((e for e in enum if e.lower() in said), None)
            if value is None and not enum:
                cut = max((i for i, t in enumerate(tokens) if t in _PREPOSITIONS), default=-1)
                if 0 <= cut < len(tokens) - 1:
                    value = " ".join(tokens[cut + 1 :])
                elif name in required:
                    value = said
            if value is None and enum and name in required:
                value = enum[0]
        elif kind in ("integer", "number"):
            value = next((int(t) if t.isdigit() else _NUMBERS[t] for t in tokens if t.isdigit() or t in _NUMBERS), None)
            if value is None and name in required:
                value = 1
        elif kind == "boolean":
            value = not any(t in ("off", "no", "not") for t in tokens)
        if value is not None:
            args[name] = value
    return args


def answer_tool_output(name: str, output: str) -> str:
    """What the assistant says after a function returned ``output`` (JSON or text)."""
    label = " ".join(words(name)) or "the function"
    try:
        data = json.loads(output)
    except (TypeError, ValueError):
        data = output
    if isinstance(data, Mapping):
        if "error" in data:
            return f"Sorry, {label} failed: {data['error']}."
        summary = ", ".join(f"{' '.join(words(str(k)))} {v}" for k, v in data.items())
    else:
        summary = str(data)
    summary = summary.strip()[:200]
    return f"The result of {label} is {summary}." if summary else f"{label} returned nothing."
