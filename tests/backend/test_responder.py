from __future__ import annotations

import json

import pytest

from voicerelay.backend import responder
from voicerelay.backend.phrases import RECORDING_SENTENCES

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
LIGHTS = {"type": "function", "name": "set_lights", "description": "Switch the lights in a room on or off",
          "parameters": {"type": "object", "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]},
                                                          "on": {"type": "boolean"}},
                         "required": ["on"]}}
TABLE = {"type": "function", "name": "book_table", "description": "Book a restaurant table",
         "parameters": {"type": "object", "properties": {"people": {"type": "integer"}}, "required": ["people"]}}


@pytest.mark.parametrize(("said", "reply"), [
    ("hello there", "Hello! I am the voicerelay test assistant. How can I help?"),
    ("what is your name", "My name is voicerelay. I am an offline test assistant."),
    ("how are you today", "I am fine, thank you for asking."),
    ("what can you do", "I can greet you, tell you my name, tell a joke, and repeat what you say."),
    ("thanks", "You are welcome."),
    ("blue cheese", "You said: blue cheese."),
])
def test_intents_and_echo(said: str, reply: str) -> None:
    assert responder.respond(said) == responder.Reply(text=reply)


@pytest.mark.parametrize("said", ["", "   ", "?!"])
def test_nothing_heard_gets_no_reply(said: str) -> None:
    reply = responder.respond(said, [WEATHER])
    assert reply == responder.Reply() and not reply.text and reply.call is None


@pytest.mark.parametrize(("instruction", "reply"), [
    ('Say "Welcome back, Ada." and nothing else.', "Welcome back, Ada."),
    ("say: 'One moment please'", "One moment please"),
    ("Greet the user.", "Hello! I am the voicerelay test assistant. How can I help?"),
    ("Please introduce yourself to the user.", "My name is voicerelay. I am an offline test assistant."),
    ("The user's name is Ada; she prefers short answers.", responder.ACKNOWLEDGE),
])
def test_a_system_instruction_is_followed(instruction: str, reply: str) -> None:
    assert responder.follow(instruction) == responder.Reply(text=reply)


def test_a_system_instruction_can_call_a_tool_and_is_never_echoed() -> None:
    assert responder.follow("Check the weather in Paris.", [WEATHER]).call == \
        responder.FunctionCall("get_weather", {"city": "paris"})
    assert "You said" not in responder.follow("blue cheese").text


def test_every_recording_gets_a_deterministic_answer() -> None:
    for text in RECORDING_SENTENCES.values():
        first, second = responder.respond(text), responder.respond(text)
        assert first == second and (first.text or first.call)


@pytest.mark.parametrize(("said", "tools", "name", "args"), [
    ("what is the weather in paris", [WEATHER, LIGHTS], "get_weather", {"city": "paris"}),
    ("turn off the lights in the kitchen", [WEATHER, LIGHTS], "set_lights", {"room": "kitchen", "on": False}),
    ("please book a table for four", [TABLE], "book_table", {"people": 4}),
    ("book a table", [TABLE], "book_table", {"people": 1}),
])
def test_tool_matches_become_function_calls(said: str, tools: list, name: str, args: dict) -> None:
    reply = responder.respond(said, tools)
    assert reply.call == responder.FunctionCall(name, args)
    assert json.loads(reply.call.arguments_json) == args


def test_without_a_match_tools_are_not_called() -> None:
    assert responder.respond("hello there", [WEATHER]).call is None
    assert responder.respond("what is the weather in paris").call is None  # no tools in the session


def test_answers_to_tool_output() -> None:
    assert responder.answer_tool_output("get_weather", '{"temp_c": 18}') == "The result of get weather is temp c 18."
    assert responder.answer_tool_output("get_weather", '{"error": "boom"}') == "Sorry, get weather failed: boom."
    assert responder.answer_tool_output("f", "plain text") == "The result of f is plain text."


def test_words_split_identifiers() -> None:
    assert responder.words("getWeather_now 42!") == ["get", "weather", "now", "42"]
