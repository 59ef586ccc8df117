"""Textual screens onto running sessions (``voicerelay inspect``)."""
