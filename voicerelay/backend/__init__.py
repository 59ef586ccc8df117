"""The embedded offline Realtime backend: VAD, speech-to-text, a responder and text-to-speech
behind the real wire protocol, so every command works without an API key."""
