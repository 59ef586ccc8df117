"""The embedded backend's domain vocabulary.

pocketsphinx's general English model misreads synthetic speech badly (40-80 % word errors,
); a small language model built from the sentences we expect
recognises them without error. These are those sentences: what the responder answers, what
the shipped recordings say, and the words a session's tools add (see ``stt.py``).

Keep the recordings' sentences here in sync with ``recordings/make_recordings.py``: a test
checks that every recording's text is in this list.
"""

from __future__ import annotations

#: Sentences spoken by the WAVs in ``recordings/`` (file stem -> text).
RECORDING_SENTENCES: dict[str, str] = {
    "hello_there": "hello there",
    "what_is_your_name": "what is your name",
    "how_are_you": "how are you today",
    "weather_in_paris": "what is the weather in paris",
    "what_can_you_do": "what can you do",
}

#: Utterances the responder has rules for, plus common variants.
RESPONDER_SENTENCES: tuple[str, ...] = (
    "hello",
    "hi",
    "hello there",
    "good morning",
    "what is your name",
    "who are you",
    "how are you",
    "how are you today",
    "what can you do",
    "help",
    "thank you",
    "thanks",
    "goodbye",
    "bye",
    "stop",
    "what time is it",
    "what is the weather in paris",
    "what is the weather in london",
    "what is the weather in berlin",
    "turn on the lights",
    "turn off the lights",
    "tell me a joke",
    "yes",
    "no",
)


def domain_sentences() -> list[str]:
    """Every sentence of the static domain, without duplicates, in a stable order."""
    seen: dict[str, None] = {}
    for sentence in (*RECORDING_SENTENCES.values(), *RESPONDER_SENTENCES):
        seen.setdefault(sentence, None)
    return list(seen)
