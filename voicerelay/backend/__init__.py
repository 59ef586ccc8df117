"""The embedded offline Realtime backend: VAD, speech-to-text, a responder and text-to-speech
behind the real wire protocol, so every command works without an API key.

``session.py`` holds one session's protocol state without I/O (``session_config.py`` its
settings, ``validate.py`` the checks on each event); ``server.py`` is the asyncio side that runs
it over websockets; ``vad.py``, ``stt.py``, ``tts.py`` and ``engines.py`` are the speech engines;
``responder.py`` decides what to say."""
